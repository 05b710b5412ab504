"""The five notebooks on real Omniglot (smoke budget, the zoo's backbone), checked and timed.

    python benchmarks/real_data_pipeline.py --root ../shared/data \
        --out benchmarks/results/real_data_pipeline_omniglot_cpu.json

``ptx run --preset smoke --dataset omniglot`` with Lake's background alphabets as base classes,
Vinyals' test characters as novel, the zoo entry ``conv4-baselinepp-omniglot`` instead of
pre-training, the synthetic test classes as a cross-domain target and one search method. It was
a test until the suite outgrew 5 minutes (docs/development.md#real-data-checks): every check
below failing exits 1. The run stays in ``--work`` (a finished one is checked again, not rerun).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning import Scheme
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.running.cli import main as ptx
from ptx_utils.running.pipeline import NOTEBOOKS
from ptx_utils.steps import transfer

ZOO = "conv4-baselinepp-omniglot"
OVERRIDES = (
    f"pretrained={ZOO}",
    "base_split=background",
    "val_split=evaluation-val",
    'cross_domain=["synthetic"]',
    "k_shots=[1]",
    'search_methods=["evolution"]',  # the random control runs in the synthetic smoke
)


PARAMS = [f"-p '{o}'" for o in OVERRIDES]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def check(run_dir: Path) -> tuple[dict[str, bool], dict[str, Any]]:
    """Every check of the finished run (name -> passed) and the numbers worth keeping."""
    checks: dict[str, bool] = {}
    errors = []
    for stem in NOTEBOOKS:
        nb = nbformat.read(run_dir / f"{stem}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        errors += [stem for o in outputs if o.output_type == "error"]
    checks["every notebook executed without an error"] = not errors
    seconds = json.loads((run_dir / "timings.json").read_text())["seconds"]
    checks["timings for every notebook"] = list(seconds) == list(NOTEBOOKS)
    params = json.loads((run_dir / "params.json").read_text())["params"]
    checks["data_root recorded absolute"] = Path(params["data_root"]).is_absolute()
    _, meta = load_backbone(run_dir / "pretrain" / "best.pt")
    checks["01 took the zoo entry"] = meta.get("zoo") == ZOO
    checks["01 shows the entry's 30 epochs"] = len(_csv(run_dir / "pretrain" / "curves.csv")) == 30
    checks["01 curves figure"] = (run_dir / "figures" / "01_pretrain_curves.png").is_file()
    expected = list(transfer.transfer_strategies(Scheme((0.0,) * 4), strategy_set="representative"))
    summary = _csv(run_dir / "results" / "transfer_summary.csv")
    checks["03 every strategy"] = [r["strategy"] for r in summary] == expected
    checks["03 accuracies in [0, 1], none diverged"] = all(
        0 <= float(r["mean"]) <= 1 and int(r["n_diverged"]) == 0 for r in summary
    )
    centroid = _csv(run_dir / "pretrain" / "nearest_centroid_test.csv")
    checks["nearest centroid >= 0.8 (chance 0.2)"] = float(centroid[0]["mean"]) >= 0.8
    shift = _csv(run_dir / "results" / "domain_shift_summary.csv")
    targets = list(dict.fromkeys(r["target"] for r in shift))
    checks["04 targets omniglot/test then synthetic/test"] = targets == [
        "omniglot/test",
        "synthetic/test",
    ]
    data = json.loads((run_dir / "data" / "summary.json").read_text())["datasets"]
    classes = (data["base"]["classes"], data["novel"]["classes"])
    checks["964 base, 423 novel characters"] = classes == (964, 423)
    numbers = {
        "seconds": seconds,
        "nearest_centroid_1shot": {k: centroid[0][k] for k in ("mean", "ci95", "n")},
        "transfer_summary": [{k: r[k] for k in ("strategy", "mean", "ci95")} for r in summary],
        "domain_shift_summary": [
            {k: r[k] for k in ("target", "strategy", "mean", "ci95")} for r in shift
        ],
    }
    return checks, numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.environ.get("PTX_DATA_ROOT"), help="the shared data")
    p.add_argument("--work", type=Path, default=Path("runs/real_data_pipeline"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not args.root:
        p.error("give --root (or set PTX_DATA_ROOT): the folder holding omniglot/")
    run_dir = args.work / "omniglot"
    start = time.perf_counter()
    if not (run_dir / "timings.json").is_file():
        argv = ["run", "--preset", "smoke", "--dataset", "omniglot", "--run-dir", str(run_dir)]
        argv += ["-p", f"data_root={Path(args.root).resolve()}"]
        for item in OVERRIDES:
            argv += ["-p", item]
        rc = ptx(argv)
    else:
        seconds = json.loads((run_dir / "timings.json").read_text())["seconds"]
        rc = 0 if list(seconds) == list(NOTEBOOKS) else ptx(["run", "--resume", str(run_dir)])
    wall = time.perf_counter() - start
    checks, numbers = check(run_dir) if rc == 0 else ({"ptx run exited 0": False}, {})
    record = {
        "benchmark": "real_data_pipeline",
        "command": " ".join(["ptx run --preset smoke --dataset omniglot", *PARAMS]),
        "wall_s_this_call": round(wall, 1),
        "checks": checks,
        "passed": all(checks.values()),
        **numbers,
        "provenance": provenance(seed=0),
    }
    atomic_write_json(args.out, record)
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
