"""bf16 vs fp32 on identical episodes: is the faster precision statistically the same?

    python benchmarks/bench_bf16_equality.py --root ../shared/data \
        --out benchmarks/results/bf16_equality_omniglot_conv4_cpu.json

The zoo's Omniglot Conv4 Baseline++ backbone; 600 5-way 1-shot test episodes (15 queries); the
paper's protocol (cosine head, 100 passes, batch 4); linear probe, last-1 and the searched scheme
of the committed Omniglot reproduction row (``--searched``). Each strategy runs in fp32 and in bf16
with the same replica seeds; per strategy the paired difference bf16 - fp32 over the episodes with
its 95 % CI. Equal when the CI contains 0 and |difference| < 0.5 points. Resumable: the per-
strategy rows are kept under ``--work`` (run the command again after an interruption).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

from ptx_utils.core.device import precision_record
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import mean_ci95, paired_difference
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import FinetuneConfig, Scheme, Strategy, last_k, linear_probe
from ptx_utils.models.zoo import load_pretrained

SEARCHED = "benchmarks/results/reproduction/omniglot_conv4_baseline++_5way_1shot_searched.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None)
    p.add_argument("--zoo", default="conv4-baselinepp-omniglot")
    p.add_argument("--split", default="test")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--searched", default=SEARCHED, help="a row JSON holding searched_scheme")
    p.add_argument("--work", default="runs/bench-bf16-equality")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    model, meta = load_pretrained(args.zoo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        novel = load_dataset(meta["zoo"]["dataset"], args.split, root=args.root)
    episodes = sample_episodes(novel, 5, args.shot, 15, args.episodes, seed=0)
    text = json.loads(Path(args.searched).read_text())[
        "searched_scheme"
    ]  # "0 0.01 0 0.1 | head 0.01"
    rates, head = text.split("| head")
    n = len(model.layer_names())
    strategies = {
        "linear probe": linear_probe(n),
        "last-1": last_k(n, 1),
        "searched": Strategy(Scheme(tuple(float(x) for x in rates.split()), float(head))),
    }
    cfg = FinetuneConfig(head="cosine", passes=args.passes)
    results, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        tic = time.perf_counter()
        results[precision] = evaluate_strategies(
            model, strategies, novel, episodes, cfg,
            Runtime(seed=0, device="cpu", precision=precision),
            checkpoint_dir=Path(args.work) / f"{args.shot}shot" / precision,
        ).rows  # fmt: skip
        seconds[precision] = round(time.perf_counter() - tic, 1)
    rows = []
    for name in strategies:
        acc = {p: r.loc[r["strategy"] == name, "accuracy"].to_numpy() for p, r in results.items()}
        diff = paired_difference(acc["bf16"], acc["fp32"], nan_policy="omit")
        means = {p: mean_ci95(a[a == a]) for p, a in acc.items()}
        rows.append(
            {
                "strategy": name,
                "scheme": str(strategies[name].scheme),
                **{f"{p}_mean": m for p, (m, _) in means.items()},
                **{f"{p}_ci95": c for p, (_, c) in means.items()},
                **{f"{p}_diverged": int((a != a).sum()) for p, a in acc.items()},
                "bf16_minus_fp32": diff.to_dict(),
                "equal": bool(abs(diff.mean_diff) <= diff.ci95 and abs(diff.mean_diff) < 0.005),
            }
        )
        d = diff
        print(
            f"{name:<14} fp32 {means['fp32'][0]:.4f}  bf16 {means['bf16'][0]:.4f}  "
            f"diff {100 * d.mean_diff:+.2f} ± {100 * d.ci95:.2f} points  "
            f"({d.wins} up / {d.losses} down / {d.ties} same)  equal={rows[-1]['equal']}"
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "bf16 vs fp32 statistical equality",
            "backbone": args.zoo,
            "zoo_sha256": meta["zoo"]["sha256"],
            "dataset": f"{novel.name}/{novel.split}",
            "n_way": 5,
            "k_shot": args.shot,
            "n_episodes": len(episodes),
            "episodes_digest": episodes.digest(),
            "finetune": cfg.__dict__,
            "rows": rows,
            "seconds": seconds,
            "command": shlex.join(["python", *sys.argv]),
            "precision_support": precision_record("auto", "cpu"),
            "provenance": provenance(seed=0, device="cpu"),
        },
    )


if __name__ == "__main__":
    main()
