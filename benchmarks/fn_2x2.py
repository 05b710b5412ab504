"""The survey's feature-normalisation 2 × 2: {BN, FN pre-training} × {head only, head + BN affine}.

    python benchmarks/fn_2x2.py --shift-levels 0 0.5 1 --test-episodes 100 \
        --work runs/fn-2x2 --out benchmarks/results/fn_2x2_synthetic_conv4_cpu.json

Two backbones pre-trained with identical settings and seed on the synthetic train split, one
with batch norm as usual and one with FN (``PretrainConfig(feature_norm=True)``: every BN affine
frozen at γ = 1, β = 0, statistics tracked); both records go into the JSON. Then, on each dial
level's test split (identical episodes and replica seeds for all four cells), the linear probe
(head only) and BN-affine (head + every BN's γ, β at ``--lr``), the paper's protocol
(``--passes``; ``--head linear`` for the FN paper's linear head), mean ± 95 % CI, and the paired
differences FN − BN per strategy. Pre-trainings and evaluations resume from ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ptx_utils.core.device import precision_record
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import paired_difference
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies, summary_table
from ptx_utils.finetuning import FinetuneConfig, bn_affine, linear_probe
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.steps.domain_shift import shift_targets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain", default='{"epochs": 6, "batch_size": 64, "val_episodes": 50}')
    p.add_argument("--shift-levels", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--test-episodes", type=int, default=100)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--head", default="cosine", help="the new head: cosine (Baseline++) or linear")
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/fn-2x2")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = Path(args.work)
    train, val = (load_dataset("synthetic", s) for s in ("train", "val"))
    backbones: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for label, fn in (("BN", False), ("FN", True)):
        cfg = PretrainConfig.from_dict(
            {"seed": args.seed, **json.loads(args.pretrain), "feature_norm": fn}
        )
        result = pretrain(cfg, train, val, work / f"pretrain-{label}")
        model, meta = load_backbone(result.best_checkpoint)
        backbones[label] = model.eval()
        records[label] = {
            "config": meta["config"],
            "best_epoch": result.best_epoch,
            "best_val_nearest_centroid": result.best_val,
            "history": result.history,
        }
    some = next(iter(backbones.values()))
    targets = shift_targets(
        "synthetic", args.shift_levels, [], "val", "test", some.in_channels, some.image_size
    )
    n_layers = len(some.layer_names())
    strategies = {
        "head only": linear_probe(n_layers),
        "head + BN affine": bn_affine(n_layers, args.lr),
    }
    runtime = Runtime(seed=args.seed, device="cpu", precision=args.precision, progress=False)
    protocol = FinetuneConfig(head=args.head, passes=args.passes)
    cells: list[dict[str, Any]] = []
    for target in targets:
        episodes = sample_episodes(target.test, 5, args.shot, 15, args.test_episodes, args.seed)
        acc = {}
        for label, model in backbones.items():
            slug = target.label.replace(" ", "")
            evaluation = evaluate_strategies(
                model, strategies, target.test, episodes, protocol, runtime,
                checkpoint_dir=work / f"test-{label}-{slug}",
            )  # fmt: skip
            for row in summary_table(evaluation.rows).to_dict("records"):
                cells.append(
                    {
                        "target": target.label,
                        "pretraining": label,
                        "strategy": row["strategy"],
                        "n": row["n"],
                        "n_diverged": row["n_diverged"],
                        "mean": row["mean"],
                        "ci95": row["ci95"],
                    }
                )
            rows = evaluation.rows
            for name in strategies:
                acc[(label, name)] = rows.loc[rows["strategy"] == name, "accuracy"].to_numpy()
        for name in strategies:
            diff = paired_difference(acc[("FN", name)], acc[("BN", name)], nan_policy="omit")
            cells.append({"target": target.label, "strategy": name, "fn_minus_bn": diff.to_dict()})
        print(json.dumps(cells[-6:], default=str), flush=True)
        atomic_write_json(
            Path(args.out),
            {
                "benchmark": "FN 2x2: {BN, FN pre-training} x {head only, head + BN affine}",
                "command": "python " + shlex.join(["benchmarks/fn_2x2.py", *sys.argv[1:]]),
                "dataset": "synthetic (dial levels " + ", ".join(map(str, args.shift_levels)) + ")",
                "protocol": {
                    "passes": args.passes,
                    "head": args.head,
                    "bn_affine_lr": args.lr,
                    "k_shot": args.shot,
                    "n_way": 5,
                    "n_query": 15,
                    "test_episodes": args.test_episodes,
                    "episodes_digest": episodes.digest(),
                },
                "pretraining": records,
                "precision": precision_record(args.precision, "cpu"),
                "provenance": provenance(seed=args.seed, device="cpu"),
                "cells": cells,
            },
        )


if __name__ == "__main__":
    main()
