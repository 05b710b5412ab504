"""fp32 vs bf16 (+ channels-last) side by side: pre-training images/s, fine-tuning replica-steps/s.

    python benchmarks/bench_precision.py --out benchmarks/results/precision_cpu.json

For each backbone (Conv4, Conv6, ResNet-12 at 84x84, 3 channels): pre-training (Baseline++,
batch 64, the loop's augmentation, Adam) timed over ``--pretrain-images`` images; fine-tuning
(5-way 1- and 5-shot, 15 queries, batch 4) of ``--replicas`` replicas per strategy (linear probe,
last-1, full fine-tune at 0.01) with the batched engine for ``--passes`` passes. Each measurement
alternates fp32 and bf16 ``--repeats`` times in one process (A B A B ...) and reports the median;
the ratio is bf16 / fp32 of the medians. Fine-tuning is also timed as the engine ran before
precision existed (fp32, every chunk under ``vmap``): ``bf16_over_fp32_vmap`` is the speed-up a user
gets. The JSON is rewritten after every row (device, precision support, versions, commit, date).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ptx_utils.core.device import precision_record, resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.data import FewShotDataset
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    finetune_batched,
    full_finetune,
    last_k,
    linear_probe,
)
from ptx_utils.models import create_backbone
from ptx_utils.pretraining import PretrainConfig
from ptx_utils.pretraining.loop import _Trainer

PRECISIONS = ("fp32", "bf16")
#: What each fine-tuning variant runs: (precision, vectorize).
VARIANTS = {"fp32_vmap": ("fp32", "vmap"), "fp32": ("fp32", "auto"), "bf16": ("bf16", "auto")}


def _random_split(n_classes: int, per_class: int, size: int, seed: int = 0) -> FewShotDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes * per_class, 3, size, size), generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    names = [f"c{i}" for i in range(n_classes)]
    return FewShotDataset(images.to(torch.uint8), labels, names, "random", "bench")


def _alternate(
    run: Callable[[str], float], repeats: int, variants: tuple[str, ...] = PRECISIONS
) -> dict[str, list[float]]:
    """Seconds of ``run(variant)``, the variants alternating, after one warm-up each."""
    for variant in variants:
        run(variant)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            times[variant].append(run(variant))
    return times


def _row(times: dict[str, list[float]], work: float, unit: str) -> dict[str, object]:
    rate = {v: work / statistics.median(t) for v, t in times.items()}
    out: dict[str, object] = {f"{v}_{unit}": round(r, 2) for v, r in rate.items()}
    out["bf16_over_fp32"] = round(rate["bf16"] / rate["fp32"], 2)
    if "fp32_vmap" in rate:
        out["bf16_over_fp32_vmap"] = round(rate["bf16"] / rate["fp32_vmap"], 2)
    out["seconds"] = {v: [round(x, 3) for x in t] for v, t in times.items()}
    return out


def bench_pretrain(name: str, images: int, repeats: int, device: str) -> dict[str, object]:
    train = _random_split(64, max(2, math.ceil(images / 64)), 84)

    def run(precision: str) -> float:
        cfg = PretrainConfig(
            backbone=name, batch_size=64, epoch_images=images, device=device, precision=precision
        )
        trainer = _Trainer(cfg, train)
        trainer.backbone.train()
        tic = time.perf_counter()
        trainer.classification_epoch()
        if trainer.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    return {
        "backbone": name,
        "images": images,
        **_row(_alternate(run, repeats), images, "images_per_s"),
    }


def bench_finetune(
    name: str, shot: int, replicas: int, passes: int, repeats: int, device: torch.device
) -> list[dict[str, object]]:
    torch.manual_seed(0)
    backbone = create_backbone(name, in_channels=3, image_size=84).to(device).eval()
    n = len(backbone.layer_names())
    data = _random_split(5, shot + 15, 84, seed=shot)
    per = shot + 15
    sx = torch.stack([data.images[c * per : c * per + shot] for c in range(5)], 1)
    sx = sx.reshape(5 * shot, 3, 84, 84)[None].to(device)
    sy = torch.arange(5).repeat(shot)[None].to(device)
    qx = torch.cat([data.images[c * per + shot : (c + 1) * per] for c in range(5)])[None]
    qx = qx.to(device)
    cfg = FinetuneConfig(passes=passes, head="cosine")
    steps = passes * math.ceil(5 * shot / cfg.batch_size)
    rows = []
    for label, strategy in (
        ("linear probe", linear_probe(n)),
        ("last-1", last_k(n, 1)),
        ("full fine-tune", full_finetune(n, 0.01)),
    ):
        reps = [Replica(strategy, 0, seed=i) for i in range(replicas)]

        def run(variant: str, reps: list[Replica] = reps) -> float:
            precision, vectorize = VARIANTS[variant]
            tic = time.perf_counter()
            finetune_batched(
                backbone, reps, sx, sy, qx, 5, cfg, progress=False, precision=precision,
                vectorize=vectorize,
            )  # fmt: skip
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - tic

        times = _alternate(run, repeats, tuple(VARIANTS))
        rows.append(
            {
                "backbone": name,
                "k_shot": shot,
                "strategy": label,
                "replicas": replicas,
                "steps_per_replica": steps,
                **_row(times, replicas * steps, "replica_steps_per_s"),
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "seconds"}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["conv4", "conv6", "resnet12"])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--pretrain-images", type=int, default=640)
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--heavy-passes", type=int, default=1, help="passes for the ResNets")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="the JSON (required unless --one)")
    p.add_argument("--one", choices=PRECISIONS, help="only pre-train the first backbone in this "
                   "precision, untimed: a whole-process workload for an outside timer")  # fmt: skip
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.one:
        train = _random_split(64, math.ceil(args.pretrain_images / 64), 84)
        cfg = PretrainConfig(backbone=args.backbones[0], batch_size=64, device=str(device),
                             epoch_images=args.pretrain_images, precision=args.one)  # fmt: skip
        _Trainer(cfg, train).classification_epoch()
        return
    if args.out is None:
        p.error("--out is required")
    record: dict[str, object] = {
        "benchmark": "precision: fp32 vs bf16 + channels-last",
        "image_size": 84,
        "pretrain": [],
        "finetune": [],
        "command": shlex.join(["python", *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        "precision_support": precision_record("auto", device),
        "provenance": provenance(device=str(device)),
    }
    for name in args.backbones:
        heavy = name.startswith("resnet")
        images = args.pretrain_images // (4 if heavy else 1)
        record["pretrain"].append(bench_pretrain(name, images, args.repeats, str(device)))
        print(json.dumps({k: v for k, v in record["pretrain"][-1].items() if k != "seconds"}))
        atomic_write_json(args.out, record)
        for shot in args.shots:
            record["finetune"] += bench_finetune(
                name, shot, args.replicas // (4 if heavy else 1),
                args.heavy_passes if heavy else args.passes, args.repeats, device,
            )  # fmt: skip
            atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
