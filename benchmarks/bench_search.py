"""Search speed: a whole evolutionary search timed end to end, against the naive loop.

    # the paper protocol (for a GPU): Conv6, 84x84, 5-way 5-shot, population 20, 20 generations,
    # 20 validation episodes, 100 passes
    python benchmarks/bench_search.py --protocol paper --dataset mini-imagenet \
        --root ../shared/data --pretrain-epochs 5 --out benchmarks/results/search_gpu.json
    # the smoke preset's search on the synthetic default (CPU)
    python benchmarks/bench_search.py --protocol smoke \
        --out benchmarks/results/search_smoke_cpu.json

The search (:func:`ptx_utils.search.search`, one batched engine call per generation) is timed
end to end. Then the naive loop — one candidate x one episode at a time with the sequential
reference — runs the same fitness evaluations on the same device in the same process, but only on
``--naive-replicas`` (candidate, episode) pairs spread evenly over everything the search
evaluated; its time per replica is extrapolated linearly to all of them, and the JSON says so.
The naive accuracies are compared with the search's on those pairs. The backbone is the
``--checkpoint``, or pre-trained here for ``--pretrain-epochs`` on the base split, or (neither)
randomly initialised; the JSON records which.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptx_utils.core.device import resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.models import create_backbone
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.running.presets import get_preset
from ptx_utils.search import EpisodeFitness, SearchConfig, search

#: Settings per protocol; command-line options override them.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {
        "dataset": "synthetic",
        "backbone": "conv6",
        "image_size": 84,
        "k_shot": 5,
        "episodes": 20,
        "population": 20,
        "generations": 20,
        "top_k": 10,
        "passes": 100,
    },
}


def _smoke_protocol() -> dict[str, Any]:
    preset = get_preset("smoke")
    return {
        "dataset": preset["dataset"],
        "backbone": preset["backbone"],
        "image_size": preset["image_size"],
        "k_shot": preset["k_shots"][0],
        "episodes": preset["n_val_episodes"],
        "n_query": preset["n_query"],
        **preset["search"],
        "passes": preset["finetune"]["passes"],
    }


def _backbone(args: argparse.Namespace, device: torch.device, channels: int) -> tuple[Any, str]:
    if args.checkpoint:
        backbone, _ = load_backbone(args.checkpoint, backbone=args.backbone)
        return backbone.to(device), f"checkpoint {args.checkpoint}"
    if args.pretrain_epochs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = load_dataset(args.dataset, "train", root=args.root, image_size=args.image_size)
            val = load_dataset(args.dataset, "val", root=args.root, image_size=args.image_size)
        cfg = PretrainConfig(
            backbone=args.backbone,
            epochs=args.pretrain_epochs,
            batch_size=64,
            device=str(device),
        )
        tic = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="bench-search-pretrain-"))
        result = pretrain(cfg, base, val, work)
        seconds = time.perf_counter() - tic
        backbone, _ = load_backbone(result.best_checkpoint)
        return backbone.to(device), (
            f"pre-trained here: Baseline++ {args.pretrain_epochs} epochs on "
            f"{args.dataset}/train, batch 64 ({seconds:.0f} s)"
        )
    torch.manual_seed(0)
    model = create_backbone(args.backbone, in_channels=channels, image_size=args.image_size)
    return model.to(device).eval(), "random initialisation (timing only)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=["paper", "smoke"], default="paper")
    p.add_argument("--dataset")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="val", help="the split the validation episodes come from")
    p.add_argument("--backbone")
    p.add_argument("--image-size", type=int)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int)
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--episodes", type=int)
    p.add_argument("--population", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--top-k", type=int)
    p.add_argument("--passes", type=int)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--pretrain-epochs", type=int, default=0)
    p.add_argument("--naive-replicas", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    protocol = PROTOCOLS["paper"] if args.protocol == "paper" else _smoke_protocol()
    for key, value in protocol.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)

    device = resolve_device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(args.dataset, args.split, root=args.root, image_size=args.image_size)
    args.image_size = data.image_size
    backbone, weights = _backbone(args, device, data.channels)
    episodes = sample_episodes(data, args.n_way, args.k_shot, args.n_query, args.episodes, seed=0)
    finetune = FinetuneConfig(passes=args.passes, head="cosine")
    config = SearchConfig(
        population=args.population,
        generations=args.generations,
        top_k=args.top_k,
        seed=args.seed,
    )

    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    runtime = Runtime(device=str(device))
    result = search(backbone, data, episodes, config, finetune, runtime=runtime)
    if device.type == "cuda":
        torch.cuda.synchronize()
    search_seconds = time.perf_counter() - tic
    n_replicas = len(result.candidates) * len(episodes)

    # The naive loop on an even spread of the (candidate, episode) pairs the search evaluated.
    pairs = [(c, e) for c in range(len(result.candidates)) for e in range(len(episodes))]
    picks = np.linspace(0, len(pairs) - 1, min(args.naive_replicas, len(pairs))).round()
    chosen = [pairs[int(i)] for i in picks]
    naive = EpisodeFitness(
        backbone,
        data,
        episodes,
        finetune,
        runtime=Runtime(seed=args.seed, device=runtime.device),
        engine="sequential",
    )
    naive_seconds = 0.0
    agree = 0
    for c, e in chosen:
        candidate = result.candidates[c]
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        value = naive([candidate.scheme], episodes=[e])[0, 0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        naive_seconds += time.perf_counter() - tic
        agree += bool(np.isclose(value, candidate.accuracies[e], atol=1e-9, equal_nan=True))
    per_replica = naive_seconds / len(chosen)
    naive_total = per_replica * n_replicas

    record = {
        "benchmark": "search speed: batched search end to end vs the naive loop",
        "protocol": args.protocol,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "dataset": f"{args.dataset}/{args.split}",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "weights": weights,
        "setting": f"{args.n_way}-way {args.k_shot}-shot, {args.n_query} queries",
        "search": config.to_dict(),
        "validation_episodes": len(episodes),
        "finetune": finetune.__dict__,
        "candidates_evaluated": len(result.candidates),
        "replicas": n_replicas,
        "search_seconds": round(search_seconds, 2),
        "generation_seconds": [round(s, 2) for s in result.curve["seconds"]],
        "best_fitness": result.best.fitness,
        "best_scheme": str(result.best.scheme),
        "naive_measured": {
            "replicas": len(chosen),
            "seconds": round(naive_seconds, 2),
            "seconds_per_replica": round(per_replica, 4),
            "accuracy_equal_to_search": f"{agree}/{len(chosen)}",
        },
        "naive_seconds_extrapolated": round(naive_total, 1),
        "extrapolation": (
            f"linear: measured seconds per replica x {n_replicas} replicas (every candidate "
            "x every validation episode the search evaluated)"
        ),
        "batched_over_naive": round(naive_total / search_seconds, 2),
        "provenance": provenance(seed=args.seed, device=str(device)),
    }
    print(json.dumps(record, indent=1))
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
