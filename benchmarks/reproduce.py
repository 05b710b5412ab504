"""One row of the reproduction table per strategy: pre-train, search, test, and write the JSON.

    python benchmarks/reproduce.py --dataset omniglot --root ../shared/data --backbone conv4 \
        --method baseline++ --base-split background --val-split evaluation-val --novel-split test \
        --pretrain '{"epochs": 30, "batch_size": 64, "flip": false, "val_episodes": 50}' \
        --n-way 5 --shots 1 --search '{"population": 8, "generations": 5, "top_k": 4}' \
        --val-episodes 10 --passes 100 --test-episodes 600 \
        --work-dir runs/reproduce/omniglot-conv4 --out-dir benchmarks/results/reproduction

Steps, each resumable in ``--work-dir`` (run the same command again after an interruption):
pre-training (``pretrain/``, resumes from ``last.pt``; or ``--checkpoint`` to use an existing
one), then per shot the evolutionary search on validation episodes (``search/``, resumes after the
last finished generation) and the test of the searched scheme beside the fixed strategies
(:func:`ptx_utils.steps.transfer.transfer_strategies`) on identical test episodes (``test/``,
resumes after the last finished strategy). Each (shot, strategy) becomes one JSON in
``--out-dir`` named
``<dataset>_<backbone>_<method>_<n>way_<k>shot_<strategy>.json``: the numbers, the searched
scheme, times, device, commit and the exact command (see :data:`ROW_FIELDS`). Existing JSONs are
never replaced: the command refuses to start; remove them by hand to redo those rows.
``benchmarks/reproduction_table.py`` renders the README table from these files.

Domain shift: ``--shift S`` (synthetic only) searches and tests at level ``S`` of the dial, rows
labelled ``synthetic-shiftS``; ``--target NAME:VAL:TEST`` searches on another dataset's validation
classes and tests on its novel classes, converted to the backbone's input format, rows labelled
``<dataset>-to-<NAME>`` (e.g. a mini-ImageNet backbone with
``--target omniglot:evaluation-val:test``). Either way the backbone is pre-trained and its epoch
chosen on ``--dataset``'s own validation split, and each target searches in its own sub-folder.
The target's splits are loaded as notebook 04 loads its targets
(:func:`ptx_utils.steps.domain_shift.shift_targets`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ptx_utils.core.io import atomic_write_json, refuse_existing
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.evaluation import summary_table
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.steps import common, domain_shift, searching, transfer

#: The keys of every row JSON, in order.
ROW_FIELDS = (
    "dataset",
    "backbone",
    "method",
    "n_way",
    "k_shot",
    "strategy",
    "scheme",
    "n_trainable",
    "mean",
    "ci95",
    "n_episodes",
    "n_diverged",
    "searched_scheme",
    "search_fitness",
    "search_candidates",
    "search_seconds",
    "test_seconds",
    "pretrain",
    "protocol",
    "episodes_digest",
    "device",
    "commit",
    "command",
    "provenance",
)


def row_name(
    dataset: str, backbone: str, method: str, n_way: int, k_shot: int, strategy: str
) -> str:
    """The JSON file name of one row (``/`` and spaces in names become ``-``)."""
    parts = [dataset, backbone, method, f"{n_way}way", f"{k_shot}shot", strategy]
    return "_".join(p.replace(" ", "-").replace("/", "-") for p in parts) + ".json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_target(
    args: argparse.Namespace, target: tuple[str, str, str] | None, channels: int, image_size: int
) -> domain_shift.Target:
    """The classes the rows search (``val``) and test (``test``) on, in the backbone's format.

    ``--dataset``'s own validation and novel splits (at ``--shift`` on the synthetic dial), or
    the ``--target`` dataset's (``target`` = its :func:`~ptx_utils.steps.domain_shift.
    parse_cross_domain` form), loaded by :func:`~ptx_utils.steps.domain_shift.shift_targets`:
    at the backbone's ``image_size`` from the source pixels, then to its ``channels``.
    """
    name, val_split, test_split = (
        (args.dataset, args.val_split, args.novel_split) if target is None else target
    )
    # The synthetic dataset is one target per dial level; here the one level asked for.
    levels = [0.0 if args.shift is None else args.shift] if name == "synthetic" else []
    (loaded,) = domain_shift.shift_targets(
        name, levels, [], val_split, test_split, channels, image_size, data_root=args.root
    )
    return loaded


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", default=None, help="data root (default: $PTX_DATA_ROOT)")
    p.add_argument("--backbone", default="conv4")
    p.add_argument("--method", default="baseline++", help="pre-training method")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--base-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--novel-split", default="test")
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        help="synthetic only: search and test at this level of the domain-shift dial (the "
        "backbone is pre-trained and its epoch chosen at shift 0)",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="NAME:VAL_SPLIT:TEST_SPLIT",
        help="cross-domain: search on NAME's VAL_SPLIT and test on its TEST_SPLIT, converted to "
        "the backbone's channels and image size (e.g. omniglot:evaluation-val:test); the backbone "
        "is pre-trained and its epoch chosen on --dataset",
    )
    p.add_argument("--pretrain", default="{}", help="PretrainConfig overrides, JSON")
    p.add_argument("--checkpoint", default=None, help="use this best.pt instead of pre-training")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--search", default="{}", help="SearchConfig overrides, JSON")
    p.add_argument("--val-episodes", type=int, default=20)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--work-dir", required=True, help="checkpoints and searches (resumable)")
    p.add_argument("--out-dir", default="benchmarks/results/reproduction")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the command; return the row JSONs written."""
    args = parse_args(argv)
    command = "python benchmarks/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    work, out = Path(args.work_dir), Path(args.out_dir)
    if args.shift is not None and args.dataset != "synthetic":
        raise SystemExit("--shift is the synthetic dataset's dial; leave it out for other datasets")
    if args.shift is not None and args.target is not None:
        raise SystemExit("give --shift or --target, not both")
    try:
        target = None if args.target is None else domain_shift.parse_cross_domain(args.target)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    # The row's dataset label names the dial level or the target; each searches in its own folder.
    if args.shift is not None:
        label, search_root = f"{args.dataset}-shift{args.shift:g}", work / f"shift{args.shift:g}"
    elif target is not None:
        label, search_root = f"{args.dataset}-to-{target[0]}", work / f"to-{target[0]}"
    else:
        label, search_root = args.dataset, work
    names = ["searched", *transfer.fixed_strategies(1, 0.01)]
    row_paths = {
        (k, name): out / row_name(label, args.backbone, args.method, args.n_way, k, name)
        for k in args.shots
        for name in names
    }
    try:
        refuse_existing(
            row_paths.values(),
            "reproduction rows",
            "remove them by hand to redo those rows (nothing was run)",
        )
    except FileExistsError as error:
        raise SystemExit(str(error)) from None
    # Commit, versions and device as the run starts: the code that made the rows (the tree may
    # change while a long run goes on).
    started = provenance(seed=args.seed, device=args.device)
    load = {"root": args.root, "image_size": args.image_size}
    base = load_dataset(args.dataset, args.base_split, **load)
    size = base.images.shape[-1]
    base_val = load_dataset(args.dataset, args.val_split, root=args.root, image_size=size)
    loaded = load_target(args, target, base.channels, size)
    val, novel = loaded.val, loaded.test

    settings = {
        "method": args.method,
        "backbone": args.backbone,
        "seed": args.seed,
        "device": args.device,
        **json.loads(args.pretrain),
    }
    start = time.perf_counter()
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        pretrain_info: dict[str, Any] = {"checkpoint": str(checkpoint)}
    else:
        result = pretrain(PretrainConfig.from_dict(settings), base, base_val, work / "pretrain")
        checkpoint = result.best_checkpoint
        pretrain_info = {
            "config": settings,
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "seconds_this_call": round(time.perf_counter() - start, 1),
            "history": result.history,
        }
    pretrain_info["sha256"] = sha256(checkpoint)
    model, meta = load_backbone(checkpoint, backbone=args.backbone)
    cfg = common.finetune_config({"passes": args.passes}, meta["method"])
    search_settings = json.loads(args.search)
    runtime = Runtime(seed=args.seed, device=args.device)

    written = []
    for k_shot in args.shots:
        # The validation episodes the search scores on, and the test episodes of the rows.
        val_setting, test_setting = (
            EpisodeSetting(n_way=args.n_way, k_shot=k_shot, n_query=args.n_query, n_episodes=n)
            for n in (args.val_episodes, args.test_episodes)
        )
        found = searching.run_searches(
            model,
            val,
            val_setting,
            search_settings,
            cfg,
            search_root,
            methods=("evolution",),
            runtime=runtime,
        )["evolution"]
        strategies = transfer.transfer_strategies(found.best.scheme)
        start = time.perf_counter()
        evaluation = transfer.evaluate_shots(
            model,
            {k_shot: strategies},
            novel,
            test_setting,
            cfg,
            runtime=runtime,
            checkpoint_dir=search_root / "test",
        )
        test_seconds = time.perf_counter() - start
        shot_meta = evaluation.meta["evaluations"][str(k_shot)]
        protocol = {
            "splits": {"base": args.base_split, "val": args.val_split, "novel": args.novel_split},
            "image_size": size,
            "target_shift": args.shift,
            "target": None
            if target is None
            else dict(zip(("dataset", "val_split", "test_split"), target, strict=True)),
            "n_query": args.n_query,
            "val_episodes": args.val_episodes,
            "search": asdict(found.config),
            "finetune": evaluation.meta["finetune_config"],
            "seed": args.seed,
        }
        finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for r in summary_table(evaluation.rows).itertuples():
            record = {
                "dataset": label,
                "backbone": args.backbone,
                "method": args.method,
                "n_way": args.n_way,
                "k_shot": k_shot,
                "strategy": r.strategy,
                "scheme": r.scheme,
                "n_trainable": strategies[r.strategy].n_trainable_layers,
                "mean": float(r.mean),
                "ci95": float(r.ci95),
                "n_episodes": int(r.n_episodes),
                "n_diverged": int(r.n_diverged),
                "searched_scheme": str(found.best.scheme),
                "search_fitness": found.best.fitness,
                "search_candidates": len(found.candidates),
                "search_seconds": round(found.elapsed_seconds, 1),
                "test_seconds": round(test_seconds, 1),
                "pretrain": pretrain_info,
                "protocol": protocol,
                "episodes_digest": shot_meta.get("episodes_digest"),
                "device": None,
                "commit": None,
                "command": command,
                "provenance": {**started, "finished": finished},
            }
            record["device"] = record["provenance"]["device"]
            record["commit"] = record["provenance"]["git_commit"]
            path = row_paths[(k_shot, r.strategy)]
            written.append(atomic_write_json(path, record))
            print(f"{path.name}: {100 * r.mean:.2f} ± {100 * r.ci95:.2f} % ({r.scheme})")
    return written


if __name__ == "__main__":
    main()
