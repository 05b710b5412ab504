"""The ``ptx`` command.

ptx run --preset {smoke,demo,paper} [--dataset NAME] [--backbone NAME] [--run-dir DIR]
        [-p KEY=VALUE ...]
ptx run --resume RUN_DIR [-p data_root=DIR] [-p device=...]
ptx lab RUN_DIR [--prepare-only] [-- JUPYTER_ARGS ...]
ptx data check NAME [--root DIR] [--image-size N] [-o KEY=VALUE ...]
ptx data list
ptx zoo list | ptx zoo show NAME
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ptx_utils.running.presets import PRESETS


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); the value is read as JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptx", description="ptx-kit: partial transfer kit")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks 01->05 with papermill into a run dir")
    run.add_argument("--preset", choices=sorted(PRESETS), help="parameter preset (default: demo)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its first unfinished notebook, same parameters",
    )
    run.add_argument("--dataset", help="dataset name (see `ptx data list`)")
    run.add_argument("--backbone", help="backbone name")
    run.add_argument("--run-dir", help="a new run dir (default: runs/<preset>-<dataset>-<time>)")
    run.add_argument("--runs-root", default="runs", help="parent of new run directories")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        type=parse_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="override a notebook parameter (value as JSON)",
    )

    lab = sub.add_parser("lab", help="explore a run in JupyterLab (notebooks pointed at it)")
    lab.add_argument("run_dir", metavar="RUN_DIR")
    lab.add_argument(
        "--prepare-only", action="store_true", help="write RUN_DIR/lab/ and print the command"
    )
    lab.add_argument("jupyter_args", nargs="*", help="passed to jupyter lab (after --)")

    data = sub.add_parser("data", help="datasets: list, check").add_subparsers(
        dest="data_command", required=True
    )
    data.add_parser("list", help="list the registered datasets")
    check = data.add_parser("check", help="validate a dataset on disk and summarise it")
    check.add_argument("name")
    check.add_argument("--root", help="data root (default: $PTX_DATA_ROOT)")
    check.add_argument("--image-size", type=int, help="side of the decoded images")
    check.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="SPLIT",
        help="check only this split (repeatable; default: every split)",
    )
    check.add_argument(
        "-o",
        "--option",
        action="append",
        type=parse_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. shift=0.5",
    )
    zoo = sub.add_parser("zoo", help="pre-trained backbones shipped with the kit").add_subparsers(
        dest="zoo_command", required=True
    )
    zoo.add_parser("list", help="list the zoo's entries (use one with -p pretrained=NAME)")
    show = zoo.add_parser("show", help="an entry's record: command, data, licence, numbers")
    show.add_argument("name")
    return parser


def _zoo(args: argparse.Namespace) -> int:
    import json

    from ptx_utils.models.zoo import list_pretrained, zoo_record

    if args.zoo_command == "show":
        try:
            print(json.dumps(zoo_record(args.name), indent=2, sort_keys=True))
        except KeyError as exc:
            print(f"ptx zoo show: {exc.args[0]}", file=sys.stderr)
            return 2
        return 0
    for name in list_pretrained():
        r = zoo_record(name)
        print(
            f"{name:<34}{r['backbone']['name']} {r['config']['method']} on {r['dataset']}, "
            f"{r['epochs_trained']} epochs (best {r['best_epoch']}, val {r['best_val']:.3f})"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    from ptx_utils.running.pipeline import PipelineError, resume_pipeline, run_pipeline

    overrides = dict(args.param)
    try:
        if args.resume is not None:
            given = [k for k in ("preset", "dataset", "backbone", "run_dir") if getattr(args, k)]
            if given:
                flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
                raise PipelineError(
                    f"--resume continues a run with its own parameters; leave out {flags}"
                )
            path = resume_pipeline(args.resume, overrides)
        else:
            for key in ("dataset", "backbone"):
                if getattr(args, key) is not None:
                    overrides[key] = getattr(args, key)
            path = run_pipeline(args.preset or "demo", overrides, args.run_dir, args.runs_root)
    except PipelineError as exc:
        print(f"ptx run: {exc}", file=sys.stderr)
        return 1
    print(f"run finished: {path}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from ptx_utils.running.lab import open_lab
    from ptx_utils.running.pipeline import PipelineError

    try:
        return open_lab(args.run_dir, args.prepare_only, args.jupyter_args)
    except PipelineError as exc:
        print(f"ptx lab: {exc}", file=sys.stderr)
        return 1


def _data(args: argparse.Namespace) -> int:
    from ptx_utils.data import DataError, check_dataset, format_report, get_dataset_spec
    from ptx_utils.data import list_datasets as names

    if args.data_command == "list":
        for name in names():
            spec = get_dataset_spec(name)
            print(f"{name:<15}{spec.description}\n{'':<15}splits: {', '.join(spec.splits)}")
        return 0
    try:
        report = check_dataset(
            args.name,
            root=args.root,
            image_size=args.image_size,
            splits=args.splits,
            **dict(args.option),
        )
    except DataError as exc:
        print(f"ptx data check: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptx`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "zoo":
        return _zoo(args)
    if args.command == "lab":
        return _lab(args)
    return _data(args)


if __name__ == "__main__":
    sys.exit(main())
