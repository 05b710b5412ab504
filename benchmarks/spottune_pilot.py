"""The pilot behind SpotTune's default rates: a small grid on validation episodes.

    python benchmarks/spottune_pilot.py --root ../shared/data \
        --out benchmarks/results/spottune_pilot_omniglot_conv4_cpu.json

Copies' rate {0.01, 0.1} × policy rate {0.1, 1} for SpotTune per image and global-2, decisions
sampled and argmax, on ``--episodes`` 5-way 1-shot episodes of Omniglot's ``evaluation-val``
classes (never the test classes), with the committed Conv4 Baseline++ and the protocol's SGD
(cosine head, 100 passes, float32); the linear probe and full fine-tune on the same episodes.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    finetune_batched,
    full_finetune,
    linear_probe,
    replica_seed,
    spottune,
)
from ptx_utils.models.zoo import load_pretrained


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None)
    p.add_argument("--zoo", default="conv4-baselinepp-omniglot")
    p.add_argument("--split", default="evaluation-val")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    model, _ = load_pretrained(args.zoo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = load_dataset("omniglot", args.split, root=args.root)
    eps = sample_episodes(val, 5, 1, 15, args.episodes, seed=1)
    batch = eps.tensors(val)
    cfg = FinetuneConfig(head="cosine", passes=100)
    named = {"linear probe": linear_probe(4), "full fine-tune": full_finetune(4)}
    for lr, policy_lr, k in itertools.product((0.01, 0.1), (0.1, 1.0), (None, 2)):
        for mode in ("sample", "argmax"):
            s = spottune(4, lr=lr, policy_lr=policy_lr, global_k=k, inference=mode)
            named[f"{s.name} lr={lr:g} policy_lr={policy_lr:g}"] = s
    tic = time.perf_counter()
    plan = [(name, e) for name in named for e in range(len(eps))]  # one call: pairs train once
    res = finetune_batched(
        model, [Replica(named[n], e, replica_seed(0, e)) for n, e in plan],
        batch.support_images, batch.support_labels, batch.query_images, 5, cfg, progress=False,
    )  # fmt: skip
    right = res.logits.argmax(-1) == batch.query_labels[torch.tensor([e for _, e in plan])]
    acc = right.float().mean(1).view(len(named), len(eps))
    rows = []
    for name, a in zip(named, acc, strict=True):
        rows.append({"strategy": name, "mean": float(a.mean()), "sd": float(a.std())})
        print(f"{name:>48}: {100 * rows[-1]['mean']:.2f} %", flush=True)
    seconds = round(time.perf_counter() - tic, 1)
    atomic_write_json(
        args.out,
        {
            "benchmark": "SpotTune pilot on validation episodes (default rates)",
            "command": "python " + shlex.join(["benchmarks/spottune_pilot.py", *sys.argv[1:]]),
            "episodes": f"{args.episodes} x 5-way 1-shot, omniglot/{args.split}, seed 1",
            "protocol": "cosine head, 100 passes, float32",
            "threads": torch.get_num_threads(),
            "seconds": seconds,
            "provenance": provenance(seed=0, device="cpu"),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
