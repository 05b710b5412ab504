"""The one-call GPU suite: every CUDA-only check and GPU measurement, one JSON out (<= 9 minutes).

    python benchmarks/gpu_suite.py --root ../shared/data --out benchmarks/results/gpu_suite.json
    python benchmarks/gpu_suite.py --tiny --out /tmp/gpu_suite_tiny.json   # CPU, seconds (tests)

Sections, each written to the JSON as soon as it is done (so a run cut short keeps what it did):
``checks`` — batched vs sequential engine in fp32 (max |logit difference|, must be <= 1e-4),
bf16 vs fp32 on the same replicas, and the automatic chunk size; ``search`` — the Conv6
paper-protocol search (mini-ImageNet val, 5-way 5-shot, population 20 x 20 generations, 20
episodes, 100 passes; randomly initialised backbone: timing only) without and with racing, each
timed end to end, plus the naive loop (sequential engine) on ``--naive-replicas`` of the
evaluated (candidate, episode) pairs for the batched/naive ratio; ``pretrain`` — pre-training
images/s in fp32 and bf16. A section that would start after ``--budget-s`` is skipped and named.
``--tiny`` shrinks everything (synthetic 16x16, Conv4, 2 x 2 search) to run on a CPU.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptx_utils.core.device import precision_record, resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    bn_affine,
    finetune_batched,
    finetune_sequential,
    full_finetune,
    last_k,
    linear_probe,
)
from ptx_utils.finetuning.chunking import auto_chunk_size
from ptx_utils.models import create_backbone
from ptx_utils.pretraining import PretrainConfig
from ptx_utils.pretraining.loop import _Trainer
from ptx_utils.search import EpisodeFitness, SearchConfig, search

PAPER = dict(backbone="conv6", size=84, shot=5, episodes=20, population=20, generations=20,
             top_k=10, passes=100, naive=8, pretrain_images=2048)  # fmt: skip
TINY = dict(backbone="conv4", size=16, shot=1, episodes=2, population=2, generations=2,
            top_k=1, passes=1, naive=2, pretrain_images=64)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def checks(data: Any, p: dict[str, Any], device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_backbone(p["backbone"], in_channels=data.channels, image_size=p["size"])
    model = model.to(device).eval()
    n = len(model.layer_names())
    eb = sample_episodes(data, 5, p["shot"], 5, 2, seed=1).tensors(data)
    sx, sy, qx = (t.to(device) for t in (eb.support_images, eb.support_labels, eb.query_images))
    cfg = FinetuneConfig(passes=2, head="cosine")
    schemes = [linear_probe(n), last_k(n, 1), full_finetune(n, 0.003), bn_affine(n, 0.01),
               Scheme((0.0,) * (n - 2) + (0.01, 0.1))]  # fmt: skip
    replicas = [Replica(s, e, seed=3 * i + e) for i, s in enumerate(schemes) for e in range(2)]
    fp32 = finetune_batched(model, replicas, sx, sy, qx, 5, cfg, progress=False)
    worst = 0.0
    for i, r in enumerate(replicas):
        ref = finetune_sequential(model, r.strategy, sx[r.episode], sy[r.episode],
                                  qx[r.episode], 5, cfg, r.seed)  # fmt: skip
        worst = max(worst, float((ref.logits - fp32.logits[i]).abs().max()))
    bf16 = finetune_batched(model, replicas, sx, sy, qx, 5, cfg, progress=False, precision="bf16")
    chunk = auto_chunk_size(model, sx[0, :1], images=max(3 * cfg.batch_size, qx.shape[1]),
                            n_rep=10_000)  # fmt: skip
    auto = finetune_batched(model, replicas, sx, sy, qx, 5, cfg, progress=False, chunk_size=None)
    return {
        "batched_vs_sequential_fp32_max_abs": worst,
        "batched_vs_sequential_fp32_ok": worst <= 1e-4,
        "bf16_vs_fp32_max_abs": float((bf16.logits - fp32.logits).abs().max()),
        "bf16_vs_fp32_argmax_agreement": float(
            (bf16.logits.argmax(-1) == fp32.logits.argmax(-1)).float().mean()
        ),
        "bf16_diverged": int(bf16.diverged.sum()),
        "auto_chunk_size_for_10000_replicas": chunk,
        "auto_chunk_equals_fixed": bool(torch.allclose(auto.logits, fp32.logits, atol=1e-5)),
    }


def search_section(data: Any, p: dict[str, Any], device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_backbone(p["backbone"], in_channels=data.channels, image_size=p["size"])
    model = model.to(device).eval()
    episodes = sample_episodes(data, 5, p["shot"], 15, p["episodes"], seed=0)
    finetune = FinetuneConfig(passes=p["passes"], head="cosine")
    steps = p["passes"] * math.ceil(5 * p["shot"] / finetune.batch_size)
    runtime = Runtime(device=str(device), progress=False)
    out: dict[str, Any] = {"replica_steps_per_replica": steps}
    for label, racing in (("full", False), ("raced", True)):
        config = SearchConfig(population=p["population"], generations=p["generations"],
                              top_k=p["top_k"], racing=racing)  # fmt: skip
        _sync(device)
        tic = time.perf_counter()
        result = search(model, data, episodes, config, finetune, runtime=runtime)
        _sync(device)
        seconds = time.perf_counter() - tic
        replicas = int(result.history()["n_episodes"].sum())
        out[label] = {
            "seconds": round(seconds, 2),
            "candidates": len(result.candidates),
            "replicas": replicas,
            "replica_steps_per_s": round(replicas * steps / seconds, 1),
            "best_scheme": str(result.best.scheme),
            "best_fitness": result.best.fitness,
        }
        if label == "full":
            full = result
    naive = EpisodeFitness(model, data, episodes, finetune, runtime=runtime, engine="sequential")
    pairs = [(c, e) for c in range(len(full.candidates)) for e in range(len(episodes))]
    picks = np.linspace(0, len(pairs) - 1, min(p["naive"], len(pairs))).round().astype(int)
    tic = time.perf_counter()
    for i in picks:
        c, e = pairs[i]
        naive([full.candidates[c].scheme], episodes=[e])
    _sync(device)
    per_replica = (time.perf_counter() - tic) / len(picks)
    out["naive_seconds_per_replica"] = round(per_replica, 4)
    out["batched_over_naive"] = round(per_replica * len(pairs) / out["full"]["seconds"], 2)
    out["extrapolation"] = f"naive time per replica x {len(pairs)} replicas of the full search"
    return out


def pretrain_section(data: Any, p: dict[str, Any], device: torch.device) -> dict[str, Any]:
    rows = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        cfg = PretrainConfig(backbone=p["backbone"], batch_size=64, device=str(device),
                             epoch_images=p["pretrain_images"], precision=precision)  # fmt: skip
        trainer = _Trainer(cfg, data)
        trainer.backbone.train()
        _sync(device)
        tic = time.perf_counter()
        trainer.classification_epoch()
        _sync(device)
        rows.setdefault(precision, []).append(p["pretrain_images"] / (time.perf_counter() - tic))
    best = {k: max(v) for k, v in rows.items()}  # the second of each is past the warm-up
    return {"images_per_s": {k: round(v, 1) for k, v in best.items()},
            "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    p = TINY if args.tiny else PAPER
    device = resolve_device("cpu" if args.tiny else args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if args.tiny:
                raise FileNotFoundError("tiny mode uses synthetic data")
            data = load_dataset("mini-imagenet", "val", root=args.root)
        except Exception as exc:  # no mini-ImageNet here: synthetic at the same size
            data = load_dataset("synthetic", "val", image_size=p["size"], images_per_class=40)
            source = f"synthetic/val at {p['size']}x{p['size']} ({type(exc).__name__})"
        else:
            source = "mini-imagenet/val"
    record: dict[str, Any] = {
        "benchmark": "gpu suite" + (" (tiny, CPU)" if args.tiny else ""),
        "settings": p,
        "data": source,
        "precision_support": precision_record("auto", device),
        "skipped": [],
        "provenance": provenance(device=str(device)),
    }
    for name, section in (("checks", checks), ("search", search_section),
                          ("pretrain", pretrain_section)):  # fmt: skip
        if time.perf_counter() - start > args.budget_s:
            record["skipped"].append(name)
            continue
        tic = time.perf_counter()
        record[name] = {**section(data, p, device), "section_seconds": 0.0}
        record[name]["section_seconds"] = round(time.perf_counter() - tic, 1)
        record["total_seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
