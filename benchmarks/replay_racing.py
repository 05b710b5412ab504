"""Replay a finished full search through the racing rule with other settings, without fine-tuning.

    python benchmarks/replay_racing.py runs/bench-racing/omniglot-paper-p20/full \
        --race-episodes 1 2 3 --race-z 1.0 1.64 2.0

A full (non-raced) search has every candidate's accuracy on every validation episode. For each
setting, each generation's candidates go through :func:`ptx_utils.search.racing.race` with a
fitness that looks the stored accuracies up, against the candidates of the earlier generations as
the full search evaluated them. What the replay cannot show is the feedback: a raced search ranks
raced-out candidates last, so its parents, and with them its later candidates, can differ (the
real raced runs of ``bench_racing.py`` measure that). Prints, per setting, the share of the
replicas a raced search would fine-tune, how many candidates stop early, and which of the full
search's final top-k (and whether its best) would have been stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.search import SearchResult
from ptx_utils.search.racing import RACE_SD_FLOOR, race
from ptx_utils.search.result import ranked


class StoredFitness:
    """A fitness that returns the stored per-episode accuracies of already evaluated schemes."""

    def __init__(self, result: SearchResult) -> None:
        self.table = {c.scheme: np.asarray(c.accuracies, float) for c in result.candidates}
        self.n_episodes = len(result.candidates[0].accuracies)

    def __call__(
        self, schemes: Sequence[Scheme], desc: str = "", episodes: Sequence[int] | None = None
    ) -> np.ndarray:
        index = list(range(self.n_episodes)) if episodes is None else list(episodes)
        return np.stack([self.table[s][index] for s in schemes])


def replay(result: SearchResult, race_episodes: int, race_z: float) -> dict[str, object]:
    """One racing setting replayed over ``result`` (a full search): replicas, stops, losses."""
    config = replace(result.config, racing=True, race_episodes=race_episodes, race_z=race_z)
    fitness = StoredFitness(result)
    used = total = 0
    stopped = set()
    for g in sorted({c.generation for c in result.candidates}):
        before = [c for c in result.candidates if c.generation < g]
        gen = [c for c in result.candidates if c.generation == g]
        scores, out = race(fitness, [c.scheme for c in gen], before, config, desc="replay")
        used += sum(len(s) for s in scores)
        total += fitness.n_episodes * len(gen)
        stopped |= {c.index for c, o in zip(gen, out, strict=True) if o}
    top = ranked(result.candidates)[: result.config.top_k]
    return {
        "race_episodes": race_episodes,
        "race_z": race_z,
        "share": used / total,
        "raced_out": len(stopped),
        "top_k_stopped": [round(c.fitness, 4) for c in top if c.index in stopped],
        "best_stopped": top[0].index in stopped,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("search_dir", help="the out_dir of a finished search run without racing")
    p.add_argument("--race-episodes", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--race-z", type=float, nargs="+", default=[1.0, 1.64, 2.0])
    args = p.parse_args(argv)
    result = SearchResult.load(args.search_dir)
    if result.config.racing:
        raise SystemExit(f"{args.search_dir} is a raced search; replay needs a full one")
    print(f"{len(result.candidates)} candidates, {len(result.candidates[0].accuracies)} episodes, "
          f"top_k {result.config.top_k}; sd floor {RACE_SD_FLOOR}")  # fmt: skip
    print("race_episodes race_z share raced_out top_k_stopped best_stopped")
    for e in args.race_episodes:
        for z in args.race_z:
            r = replay(result, e, z)
            print(f"{e:>13} {z:>6g} {r['share']:>5.0%} {r['raced_out']:>9} "
                  f"{r['top_k_stopped']} {r['best_stopped']}")  # fmt: skip


if __name__ == "__main__":
    main()
