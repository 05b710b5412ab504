"""Pre-train a backbone on a base split; score it by nearest centroid on novel episodes.

    python benchmarks/bench_pretrain.py --dataset omniglot --root ../shared/data \
        --base-split background --val-split val --novel-split evaluation \
        --backbone conv4 --method baseline++ --epochs 30 --batch-size 64 --no-flip \
        --out benchmarks/results/pretrain_omniglot_conv4_baselinepp_cpu.json

Writes the pre-training run (checkpoints, curves) under ``--work`` (run again with the same
``--work``, it resumes, so a finished run is only re-evaluated) and a JSON with the command,
timings (epochs/s, images/s), the best validation epoch, and the 5-way 1- and 5-shot
nearest-centroid test accuracy (mean ± 95 % CI over ``--episodes`` episodes) of the best
checkpoint (Euclidean and cosine centroids), plus device, versions and date.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ptx_utils.core.device import resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.stats import mean_ci95
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.models.features import nearest_centroid_accuracy
from ptx_utils.pretraining import PretrainConfig, pretrain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="omniglot")
    p.add_argument("--root", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--base-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--novel-split", default="test")
    p.add_argument("--backbone", default="conv4")
    p.add_argument("--method", default="baseline++")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (characters)")
    p.add_argument("--device", default="auto")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/bench-pretrain")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    load = {"root": args.root, "image_size": args.image_size}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_dataset(args.dataset, args.base_split, **load)
        val = load_dataset(args.dataset, args.val_split, **load)
        novel = load_dataset(args.dataset, args.novel_split, **load)
    cfg = PretrainConfig(
        method=args.method,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        flip=not args.no_flip,
        device=args.device,
        seed=args.seed,
    )
    device = resolve_device(args.device)
    tic = time.perf_counter()
    result = pretrain(cfg, base, val, args.work)
    seconds = time.perf_counter() - tic
    model, meta = load_backbone(Path(args.work) / "best.pt")
    model.to(device)
    tests: dict[str, dict[str, object]] = {}
    for shot in args.shots:
        episodes = sample_episodes(novel, args.n_way, shot, 15, args.episodes, seed=args.seed)
        for metric in ("euclidean", "cosine"):
            acc = nearest_centroid_accuracy(model, novel, episodes, device, metric=metric)
            mean, ci = mean_ci95(acc)
            tests[f"{args.n_way}way_{shot}shot_{metric}"] = {
                "mean": round(mean, 4),
                "ci95": round(ci, 4),
                "n_episodes": len(acc),
                "episodes_digest": episodes.digest(),
            }
    epoch_seconds = [h["seconds"] for h in result.history]
    images_per_epoch = len(base)
    out = {
        "benchmark": "pretrain + nearest-centroid test",
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "dataset": {
            "name": args.dataset,
            "base": args.base_split,
            "val": args.val_split,
            "novel": args.novel_split,
            "image_size": base.image_size,
            "base_classes": base.num_classes,
            "base_images": len(base),
        },
        "config": meta["config"],
        "epochs_run": len(result.history),
        "train_seconds": round(sum(epoch_seconds), 1),
        "wall_seconds_this_invocation": round(seconds, 1),
        "epochs_per_s": round(len(epoch_seconds) / sum(epoch_seconds), 4),
        "train_images_per_s": round(images_per_epoch * len(epoch_seconds) / sum(epoch_seconds), 1),
        "best_epoch": result.best_epoch,
        "best_val_nearest_centroid_5way_5shot": round(result.best_val, 4),
        "test_nearest_centroid": tests,
        "val_curve": [round(h["val_acc"], 4) for h in result.history],
        "train_acc_curve": [round(h["train_acc"], 4) for h in result.history],
        "provenance": provenance(seed=args.seed, device=str(device)),
    }
    atomic_write_json(args.out, out)
    print(
        json.dumps(
            {
                k: out[k]
                for k in ("train_seconds", "epochs_per_s", "best_epoch", "test_nearest_centroid")
            },
            indent=2,
        )
    )
    print("mean val:", float(np.mean(out["val_curve"])))


if __name__ == "__main__":
    main()
