"""Racing vs full search on the same validation episodes and seeds: replica-steps and test accuracy.

    python benchmarks/bench_racing.py --dataset omniglot --root ../shared/data \
        --zoo conv4-baselinepp-omniglot --val-split evaluation-val --test-split test \
        --search '{"population": 8, "generations": 5, "top_k": 4}' --val-episodes 10 \
        --passes 50 --test-episodes 600 --out benchmarks/results/racing_omniglot_conv4_cpu.json

The backbone is a zoo entry (``--zoo``) or pre-trained here on the dataset's train split
(``--pretrain`` JSON, kept under ``--work``). Two searches with identical settings, episodes and
seeds, one with ``racing=True`` (``--race-episodes`` per stage): both resumable in ``--work``.
Replica-steps = replicas fine-tuned x SGD steps per replica. When the two best schemes differ,
both are fine-tuned on ``--test-episodes`` test episodes (identical episodes and seeds) and
compared with a paired difference; ``--test-episodes 0`` skips the test.
"""

from __future__ import annotations

import argparse
import json
import math
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
from ptx_utils.finetuning import FinetuneConfig, Strategy
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.models.zoo import load_pretrained
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.search import SearchConfig, search
from ptx_utils.steps.common import val_seed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.add_argument("--zoo", default=None, help="a zoo entry; else pre-train with --pretrain")
    p.add_argument("--pretrain", default='{"epochs": 6, "batch_size": 64, "val_episodes": 50}')
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--test-split", default="test")
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--search", default='{"population": 8, "generations": 5, "top_k": 4}')
    p.add_argument("--race-episodes", type=int, default=2)
    p.add_argument("--race-z", type=float, default=1.64)
    p.add_argument("--val-episodes", type=int, default=10)
    p.add_argument("--passes", type=int, default=50)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="default: runs/bench-racing/<dataset>")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = Path(args.work or f"runs/bench-racing/{args.dataset}")

    def split(name: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_dataset(args.dataset, name, root=args.root)

    if args.zoo:
        model, _ = load_pretrained(args.zoo)
    else:
        cfg = PretrainConfig.from_dict({"seed": args.seed, **json.loads(args.pretrain)})
        pretrain(cfg, split(args.train_split), split(args.val_split), work / "pretrain")
        model, _ = load_backbone(work / "pretrain" / "best.pt")
    model.eval()
    val, test = split(args.val_split), split(args.test_split)
    runtime = Runtime(seed=args.seed, device="cpu", precision=args.precision, progress=False)
    episodes = sample_episodes(val, 5, args.shot, 15, args.val_episodes, val_seed(args.seed))
    finetune = FinetuneConfig(head="cosine", passes=args.passes)
    steps = args.passes * math.ceil(5 * args.shot / finetune.batch_size)
    base = SearchConfig.from_dict({"seed": args.seed, **json.loads(args.search)})
    runs = {}
    raced_dir = f"raced-e{args.race_episodes}-z{args.race_z:g}"
    for label, racing in (("full", False), ("raced", True)):
        race = {"race_episodes": args.race_episodes, "race_z": args.race_z} if racing else {}
        config = SearchConfig.from_dict({**base.to_dict(), "racing": racing, **race})
        folder = work / (raced_dir if racing else label)
        tic = time.perf_counter()
        result = search(model, val, episodes, config, finetune, folder, runtime=runtime)
        history = result.history()
        replicas = int(history["n_episodes"].sum())
        runs[label] = {
            "best_scheme": str(result.best.scheme),
            "best_fitness": result.best.fitness,
            "candidates": len(result.candidates),
            "raced_out": int(history["raced_out"].sum()),
            "replicas": replicas,
            "replica_steps": replicas * steps,
            "seconds_this_call": round(time.perf_counter() - tic, 1),
            "search_seconds": round(result.elapsed_seconds, 1),
            "best": result.best,
        }
        print(f"{label}: {result.summary()}; {replicas * steps} replica-steps", flush=True)
    full, raced = runs["full"], runs["raced"]
    test_row = None
    if args.test_episodes:
        test_eps = sample_episodes(test, 5, args.shot, 15, args.test_episodes, args.seed)
        strategies = {"full": Strategy(full["best"].scheme)}
        if raced["best"].scheme != full["best"].scheme:
            strategies["raced"] = Strategy(raced["best"].scheme)
        rows = evaluate_strategies(
            model, strategies, test, test_eps, finetune, runtime, checkpoint_dir=work / "test"
        ).rows
        acc = {k: rows.loc[rows["strategy"] == k, "accuracy"].to_numpy() for k in strategies}
        acc.setdefault("raced", acc["full"])
        diff = paired_difference(acc["raced"], acc["full"], nan_policy="omit")
        test_row = {
            "n_episodes": len(test_eps),
            "episodes_digest": test_eps.digest(),
            "same_scheme": "raced" not in strategies,
            **{f"{k}_mean_ci95": mean_ci95(a[a == a]) for k, a in acc.items()},
            "raced_minus_full": diff.to_dict(),
            "within_ci": bool(abs(diff.mean_diff) <= diff.ci95),
        }
        print(json.dumps(test_row), flush=True)
    for r in runs.values():
        del r["best"]
    atomic_write_json(
        args.out,
        {
            "benchmark": "racing vs full search",
            "dataset": args.dataset,
            "backbone": args.zoo or json.loads(args.pretrain),
            "search": base.to_dict(),
            "race_episodes": args.race_episodes,
            "race_z": args.race_z,
            "val_episodes": args.val_episodes,
            "val_episodes_digest": episodes.digest(),
            "k_shot": args.shot,
            "passes": args.passes,
            "steps_per_replica": steps,
            "runs": runs,
            "replica_steps_raced_over_full": round(
                raced["replica_steps"] / full["replica_steps"], 3
            ),
            "test": test_row,
            "command": shlex.join(["python", *sys.argv]),
            "precision": precision_record(args.precision, "cpu"),
            "provenance": provenance(seed=args.seed, device="cpu"),
        },
    )


if __name__ == "__main__":
    main()
