"""Fixed fine-tuning strategies on identical test episodes: table with CIs and paired differences.

    python benchmarks/bench_strategies.py --checkpoint runs/bench-omniglot/best.pt \
        --dataset omniglot --root ../shared/data --novel-split evaluation \
        --out-dir benchmarks/results/strategies_omniglot_conv4_cpu

Loads a pre-trained backbone (e.g. the one ``bench_pretrain.py`` made), fine-tunes linear probe,
full fine-tuning and last-1 on ``--episodes`` 5-way episodes per shot with the paper's protocol
(100 passes, batch 4, SGD 0.9/0.9, weight decay 1e-3, head lr 0.01), and writes per shot the
tidy per-episode CSV, the summary (mean, ci95, n; CSV + LaTeX), the paired differences against
the linear probe, and a JSON with the command, checkpoint hash, timings, device, versions, date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

from ptx_utils.core.device import resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies, paired_table, summary_table, write_results
from ptx_utils.finetuning import FinetuneConfig, full_finetune, last_k, linear_probe
from ptx_utils.models.checkpoint import load_backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="omniglot")
    p.add_argument("--root", default=None)
    p.add_argument("--novel-split", default="test")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01, help="rate of full fine-tune and last-1")
    p.add_argument("--engine", default="batched", choices=["batched", "sequential"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()

    device = resolve_device(args.device)
    backbone, meta = load_backbone(args.checkpoint)
    backbone.to(device)
    n_layers = len(backbone.layer_names())
    strategies = {
        "linear probe": linear_probe(n_layers),
        "full fine-tune": full_finetune(n_layers, args.lr),
        "last-1": last_k(n_layers, 1, args.lr),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        novel = load_dataset(
            args.dataset, args.novel_split, root=args.root, image_size=meta["dataset"]["image_size"]
        )
    cfg = FinetuneConfig(
        passes=args.passes, head="cosine" if meta["method"] == "baseline++" else "linear"
    )
    out_dir = Path(args.out_dir)
    summary: dict[str, object] = {}
    for shot in args.shots:
        episodes = sample_episodes(novel, 5, shot, 15, args.episodes, seed=args.seed)
        tic = time.perf_counter()
        evaluation = evaluate_strategies(
            backbone,
            strategies,
            novel,
            episodes,
            cfg,
            runtime=Runtime(seed=args.seed, device=str(device)),
            engine=args.engine,
        )
        seconds = time.perf_counter() - tic
        rows = evaluation.rows
        name = f"5way_{shot}shot"
        write_results(out_dir, evaluation, name=name, reference="linear probe")
        summary[name] = {
            "seconds": round(seconds, 1),
            "episodes_digest": episodes.digest(),
            "summary": summary_table(rows).reset_index().to_dict(orient="records"),
            "paired_vs_linear_probe": paired_table(rows, "linear probe")
            .reset_index()
            .to_dict(orient="records"),
        }
        print(json.dumps(summary[name], indent=1, default=str))
    atomic_write_json(
        out_dir / "summary.json",
        {
            "benchmark": "fixed strategies on identical episodes",
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "checkpoint_sha256": hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest(),
            "checkpoint_meta": {
                "backbone": meta["backbone"],
                "method": meta["method"],
                "dataset": {k: v for k, v in meta["dataset"].items() if k != "classes"},
            },
            "finetune": cfg.__dict__,
            "strategies": {k: str(v) for k, v in strategies.items()},
            "results": summary,
            "provenance": provenance(seed=args.seed, device=str(device)),
        },
    )


if __name__ == "__main__":
    main()
