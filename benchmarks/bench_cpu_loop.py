"""The batched engine's replicas on a CPU: ``vmap``, a loop channels-first, a loop channels-last.

    python benchmarks/bench_cpu_loop.py --out benchmarks/results/cpu_loop_conv4_cpu.json

Conv4 (random weights: speed does not depend on them) on random uint8 images at 84×84 RGB (the
mini-ImageNet size) and 28×28 grey (Omniglot's), 5-way 1- and 5-shot with 15 queries, the
protocol's SGD (cosine head, batch 4) for ``--passes`` passes, ``--episodes`` episodes a call of
:func:`~ptx_utils.finetuning.finetune_batched`: SpotTune's sampled and argmax pair (which train
once) and full fine-tuning at 0.01. Variants, alternating ``--repeats`` times in one process after
a warm-up each: ``vmap``; ``loop, channels-first`` (the loop as it ran before it laid replicas
out channels-last); ``auto`` (what the harness runs: the loop, channels-last, on maps of ≥ 40×40
pixels on a CPU, ``vmap`` below). Each row gives the medians, their ratios to ``auto``, and the
largest difference of each variant's query logits from the sequential reference (per replica,
channels-first). float32 only; the JSON is rewritten after every row (device, versions, commit,
date).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    finetune_batched,
    finetune_sequential,
    full_finetune,
    spottune,
)
from ptx_utils.finetuning import vectorize as layout
from ptx_utils.models import create_backbone

#: Variant -> (``vectorize``, channels-last in the loop).
VARIANTS = {"vmap": ("vmap", True), "loop, channels-first": ("loop", False), "auto": ("auto", True)}
#: (channels, image size) of the benchmarked inputs: mini-ImageNet's and Omniglot's.
SIZES = ((3, 84), (1, 28))


def bench(
    channels: int, size: int, shot: int, episodes: int, passes: int, repeats: int
) -> list[dict[str, object]]:
    """One row per strategy at (size, shot): seconds per call of each variant."""
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=channels, image_size=size).eval()
    gen = torch.Generator().manual_seed(shot)
    shape = (episodes, 5 * shot, channels, size, size)
    support = torch.randint(0, 256, shape, generator=gen).to(torch.uint8)
    labels = torch.arange(5).repeat(shot).expand(episodes, -1).contiguous()
    query = torch.randint(0, 256, (episodes, 75, channels, size, size), generator=gen)
    query = query.to(torch.uint8)
    cfg = FinetuneConfig(passes=passes, head="cosine")
    rows = []
    for label, group in (
        ("SpotTune (sampled + argmax)", [spottune(4), spottune(4, inference="argmax")]),
        ("full fine-tune", [full_finetune(4, 0.01)]),
    ):
        replicas = [Replica(s, e, seed=10 + e) for e in range(episodes) for s in group]

        def call(variant: str, replicas: list[Replica] = replicas) -> torch.Tensor:
            vectorize, layout.LOOP_CHANNELS_LAST = VARIANTS[variant]
            try:
                return finetune_batched(
                    backbone, replicas, support, labels, query, 5, cfg, progress=False,
                    vectorize=vectorize,
                ).logits  # fmt: skip
            finally:
                layout.LOOP_CHANNELS_LAST = True

        ref = torch.stack(
            [
                finetune_sequential(
                    backbone, r.strategy, support[r.episode], labels[r.episode],
                    query[r.episode], 5, cfg, seed=r.seed,
                ).logits
                for r in replicas
            ]
        )  # fmt: skip
        differences = {v: float((call(v) - ref).abs().max()) for v in VARIANTS}  # and warm-up
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for variant in VARIANTS:
                tic = time.perf_counter()
                call(variant)
                times[variant].append(time.perf_counter() - tic)
        median = {v: statistics.median(t) for v, t in times.items()}
        rows.append(
            {
                "strategy": label,
                "image": f"{channels}x{size}x{size}",
                "k_shot": shot,
                "episodes": episodes,
                "replicas": len(replicas),
                "passes": passes,
                "steps_per_replica": passes * -(-5 * shot // cfg.batch_size),
                "median_seconds": {v: round(s, 3) for v, s in median.items()},
                "over_auto": {v: round(s / median["auto"], 2) for v, s in median.items()},
                "max_abs_difference_from_sequential": differences,
                "seconds": {v: [round(x, 3) for x in t] for v, t in times.items()},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = {
        "command": shlex.join(["python", *sys.argv]),
        "precision": "fp32",
        "threads": torch.get_num_threads(),
        **provenance(seed=0, device="cpu"),
        "rows": [],
    }
    for channels, size in SIZES:
        for shot in args.shots:
            for row in bench(channels, size, shot, args.episodes, args.passes, args.repeats):
                out["rows"].append(row)
                print(row, flush=True)
            atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
