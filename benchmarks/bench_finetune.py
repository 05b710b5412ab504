"""Fine-tuning throughput: replica-steps per second, batched engine vs sequential reference.

    python benchmarks/bench_finetune.py --out benchmarks/results/finetune_cpu.json

For each backbone (Conv4, Conv6 at 84x84) and shot (5-way 1- and 5-shot, 15 queries), the same
replicas (schemes x episodes of the synthetic novel split) are fine-tuned by both engines on the
same device in one run: the batched engine on all of them, the sequential reference on the first
``--sequential`` of them. A replica-step is one SGD step of one replica. Both use ``--passes``
passes (the protocol's 100 passes only scale both times alike). JSON with device, versions, date.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from ptx_utils.core.device import resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    finetune_sequential,
    full_finetune,
    last_k,
    linear_probe,
)
from ptx_utils.models import create_backbone


def _strategies(n_layers: int) -> list[Strategy]:
    mixed = Strategy(Scheme((0.0,) * (n_layers - 2) + (0.01, 0.1)))
    return [linear_probe(n_layers), last_k(n_layers, 1), mixed, full_finetune(n_layers, 0.01)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["conv4", "conv6"])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--sequential", type=int, default=4, help="replicas timed sequentially")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    device = resolve_device(args.device)
    novel = load_dataset("synthetic", "test", image_size=args.image_size, images_per_class=40)
    cfg = FinetuneConfig(passes=args.passes)
    rows = []
    for name in args.backbones:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            backbone = create_backbone(name, in_channels=3, image_size=args.image_size)
        backbone.to(device).eval()
        strategies = _strategies(len(backbone.layer_names()))
        for shot in args.shots:
            episodes = sample_episodes(novel, 5, shot, 15, args.episodes, seed=0)
            batch = episodes.tensors(novel)
            sx, sy, qx = (
                t.to(device)
                for t in (batch.support_images, batch.support_labels, batch.query_images)
            )
            replicas = [Replica(s, e, seed=e) for e in range(len(episodes)) for s in strategies]
            steps = args.passes * math.ceil(5 * shot / cfg.batch_size)
            tic = time.perf_counter()
            for r in replicas[: args.sequential]:
                finetune_sequential(
                    backbone,
                    r.strategy,
                    sx[r.episode],
                    sy[r.episode],
                    qx[r.episode],
                    5,
                    cfg,
                    r.seed,
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            seq_s = time.perf_counter() - tic
            tic = time.perf_counter()
            finetune_batched(backbone, replicas, sx, sy, qx, 5, cfg, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            bat_s = time.perf_counter() - tic
            seq_rate = args.sequential * steps / seq_s
            bat_rate = len(replicas) * steps / bat_s
            rows.append(
                {
                    "backbone": name,
                    "image_size": args.image_size,
                    "n_way": 5,
                    "k_shot": shot,
                    "replicas_batched": len(replicas),
                    "replicas_sequential": args.sequential,
                    "steps_per_replica": steps,
                    "sequential_s": round(seq_s, 3),
                    "batched_s": round(bat_s, 3),
                    "sequential_replica_steps_per_s": round(seq_rate, 2),
                    "batched_replica_steps_per_s": round(bat_rate, 2),
                    "batched_over_sequential": round(bat_rate / seq_rate, 2),
                }
            )
            print(json.dumps(rows[-1]))
    out = {
        "benchmark": "finetune engines",
        "passes": args.passes,
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "provenance": provenance(device=str(device)),
    }
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
