"""Searched scheme vs the fixed strategies: evolution vs random search, then 600 test episodes.

    python benchmarks/bench_search_quality.py --checkpoint runs/<demo run>/pretrain/best.pt \
        --dataset synthetic --shots 1 5 --seeds 0 1 2 \
        --out-dir benchmarks/results/search_synthetic_conv4_cpu

Per shot: ``--val-episodes`` validation episodes (fixed for every search), then for each seed an
evolutionary search and a random search with the same budget (``population * generations``
candidates), each written as a resumable search directory (state, history, curve, best scheme).
The evolution's best scheme over the seeds (chosen by validation fitness) is then fine-tuned on
``--test-episodes`` test episodes beside the linear probe and full fine-tuning, on identical
episodes and seeds, and compared with paired differences. ``--reuse-rows DIR`` takes the fixed
strategies' per-episode rows from an earlier ``bench_strategies.py`` run on the same checkpoint
and episodes (checked by hash) instead of fine-tuning them again. Writes per shot the tidy
per-episode CSV, summary (CSV + LaTeX), paired tables, an EA-vs-random figure, and one JSON with
the command, checkpoint hash, timings, device, versions and date.
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
from typing import Any

import pandas as pd

from ptx_utils.core.device import resolve_device
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import Episodes, sample_episodes
from ptx_utils.evaluation import (
    Evaluation,
    evaluate_strategies,
    paired_table,
    summary_table,
    write_results,
)
from ptx_utils.finetuning import FinetuneConfig, full_finetune, linear_probe
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.plots import save_figure, scheme_heatmap, search_figure
from ptx_utils.search import SearchConfig, SearchResult, search


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.reset_index(drop=True).to_dict(orient="records")


def reused_rows(
    directory: Path, name: str, episodes: Episodes, cfg: FinetuneConfig, seed: int
) -> pd.DataFrame:
    """Per-episode rows of an earlier run, refused unless made on the same episodes, protocol
    and seed (the caller also recomputes some of them to check the checkpoint)."""
    meta = json.loads((directory / f"{name}_provenance.json").read_text())
    checks = {
        "episodes_digest": (meta.get("episodes_digest"), episodes.digest()),
        "finetune_config": (meta.get("finetune_config"), cfg.__dict__),
        "seed": (meta.get("seed"), seed),
    }
    wrong = [f"{k}: {a} there, {b} here" for k, (a, b) in checks.items() if a != b]
    if wrong:
        raise SystemExit(f"cannot reuse rows from {directory}: " + "; ".join(wrong))
    return pd.read_csv(directory / f"{name}_episodes.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.add_argument("--val-split", default="val")
    p.add_argument("--novel-split", default="test")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--val-episodes", type=int, default=20)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["evolution", "random"],
        default=["evolution", "random"],
        help="searches to run per seed (the evolution's best is the one tested)",
    )
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01, help="rate of full fine-tuning")
    p.add_argument("--reuse-rows", default=None, help="results/ dir of a bench_strategies run")
    p.add_argument(
        "--verify-reuse",
        type=int,
        default=20,
        help="recompute the reused strategies on this many episodes; they must match exactly",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()

    device = resolve_device(args.device)
    sha = hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest()
    backbone, meta = load_backbone(args.checkpoint)
    backbone.to(device)
    n_layers = len(backbone.layer_names())
    size = meta["dataset"]["image_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = load_dataset(args.dataset, args.val_split, root=args.root, image_size=size)
        novel = load_dataset(args.dataset, args.novel_split, root=args.root, image_size=size)
    cfg = FinetuneConfig(
        passes=args.passes, head="cosine" if meta["method"] == "baseline++" else "linear"
    )
    out_dir = Path(args.out_dir)
    runtime = Runtime(device=str(device))
    report: dict[str, Any] = {}
    for shot in args.shots:
        name = f"{args.n_way}way_{shot}shot"
        val_episodes = sample_episodes(
            val, args.n_way, shot, args.n_query, args.val_episodes, seed=10_000
        )
        if "evolution" not in args.methods:
            raise SystemExit("--methods must include evolution: its best scheme is tested")
        searches: dict[str, dict[int, SearchResult]] = {m: {} for m in args.methods}
        for seed in args.seeds:
            for method in searches:
                config = SearchConfig(
                    method=method,
                    population=args.population,
                    generations=args.generations,
                    top_k=args.top_k,
                    seed=seed,
                )
                searches[method][seed] = search(
                    backbone,
                    val,
                    val_episodes,
                    config,
                    cfg,
                    out_dir=out_dir / "search" / f"{name}_{method}_seed{seed}",
                    runtime=runtime,
                )
                print(searches[method][seed].summary(), flush=True)
        first = args.seeds[0]
        fig = search_figure(
            {m: searches[m][first] for m in searches},
            title=f"{args.dataset} {name}: evolution vs random search (seed {first})",
        )
        save_figure(fig, out_dir / "figures" / f"{name}_search")
        best_search = max(
            (searches["evolution"][s] for s in args.seeds), key=lambda r: r.best.fitness
        )
        best = best_search.best
        save_figure(scheme_heatmap(best_search), out_dir / "figures" / f"{name}_best_scheme")
        fixed = {
            "linear probe": linear_probe(n_layers),
            "full fine-tune": full_finetune(n_layers, args.lr),
        }
        test_episodes = sample_episodes(novel, args.n_way, shot, args.n_query, args.test_episodes)
        tic = time.perf_counter()
        evaluated = {"searched (evolution)": best.scheme}
        old = None
        if args.reuse_rows:
            old = reused_rows(Path(args.reuse_rows), name, test_episodes, cfg, 0)
            old = old[old["strategy"].isin(list(fixed))].reset_index(drop=True)
            check = evaluate_strategies(
                backbone, fixed, novel, test_episodes[: args.verify_reuse], cfg, runtime=runtime
            ).rows
            stored = old[old["episode"] < args.verify_reuse]
            if not (
                check["strategy"].tolist() == stored["strategy"].tolist()
                and check["accuracy"].tolist() == stored["accuracy"].tolist()
            ):
                raise SystemExit(
                    f"the reused rows of {args.reuse_rows} differ from this checkpoint's on the "
                    f"first {args.verify_reuse} episodes; fine-tune every strategy here instead"
                )
        else:
            evaluated = {**fixed, **evaluated}
        evaluation = evaluate_strategies(
            backbone, evaluated, novel, test_episodes, cfg, runtime=runtime
        )
        test_seconds = time.perf_counter() - tic
        if old is not None:
            merged = dict(evaluation.meta)
            merged["strategies"] = {
                **{k: v.to_dict() for k, v in fixed.items()},
                **merged["strategies"],
            }
            merged["reused_rows_from"] = args.reuse_rows
            evaluation = Evaluation(pd.concat([old, evaluation.rows], ignore_index=True), merged)
        rows = evaluation.rows
        write_results(out_dir, evaluation, name=name, reference="linear probe")
        paired_full = paired_table(rows, "full fine-tune")
        report[name] = {
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "val_episodes_digest": val_episodes.digest(),
            "test_episodes_digest": test_episodes.digest(),
            "searches": {
                method: {
                    str(seed): {
                        "best_fitness": r.best.fitness,
                        "best_scheme": str(r.best.scheme),
                        "n_evaluated": len(r.candidates),
                        "generations_done": r.generations_done,
                        "exhausted": r.exhausted,
                        "seconds": round(r.elapsed_seconds, 1),
                        "directory": str(r.out_dir),
                    }
                    for seed, r in by_seed.items()
                }
                for method, by_seed in searches.items()
            },
            "searched_scheme": str(best.scheme),
            "searched_fitness": best.fitness,
            "test_seconds": round(test_seconds, 1),
            "reused_rows": args.reuse_rows,
            "reused_rows_verified_on_episodes": args.verify_reuse if args.reuse_rows else None,
            "summary": records(summary_table(rows)),
            "paired_vs_linear_probe": records(paired_table(rows, "linear probe")),
            "paired_vs_full_finetune": records(paired_full),
        }
        print(json.dumps(report[name], indent=1, default=str), flush=True)
    # One invocation per shot may share an out-dir: earlier shots' results are kept.
    path = out_dir / "summary.json"
    if path.exists():
        report = {**json.loads(path.read_text())["results"], **report}
    atomic_write_json(
        path,
        {
            "benchmark": "searched scheme vs fixed strategies; evolution vs random search",
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "checkpoint_sha256": sha,
            "checkpoint_meta": {
                "backbone": meta["backbone"],
                "method": meta["method"],
                "dataset": {k: v for k, v in meta["dataset"].items() if k != "classes"},
            },
            "finetune": cfg.__dict__,
            "search": {
                "population": args.population,
                "generations": args.generations,
                "top_k": args.top_k,
                "val_episodes": args.val_episodes,
                "seeds": args.seeds,
            },
            "results": report,
            "provenance": provenance(device=str(device)),
        },
    )


if __name__ == "__main__":
    main()
