"""Racing search: deterministic, resumable, refusing other settings, same best on a clear task."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ptx_utils.search import SearchConfig, SearchError, evolve
from ptx_utils.search.stages import STAGES_FILE

LAYERS = ["l1", "l2", "l3", "l4"]
ZOO = (0.0, 0.01, 0.1)


class ToyFitness:
    """Accuracy of a scheme on episode e: a fixed quality per scheme plus episode noise."""

    n_episodes = 8

    def __init__(self) -> None:
        self.replicas = 0

    def quality(self, lrs) -> float:
        return 0.3 + 0.15 * sum(1 for lr in lrs[2:] if lr == 0.01) - 0.1 * (lrs[0] == 0.1)

    def __call__(self, schemes, desc="", episodes=None):
        index = list(range(self.n_episodes)) if episodes is None else list(episodes)
        self.replicas += len(schemes) * len(index)
        out = np.empty((len(schemes), len(index)))
        for i, s in enumerate(schemes):
            seed = abs(hash(tuple(s.lrs))) % 2**32
            noise = np.random.default_rng(seed).normal(0, 0.05, self.n_episodes)
            out[i] = np.clip(self.quality(s.lrs) + noise[index], 0, 1)
        return out


def _config(**kw) -> SearchConfig:
    return SearchConfig(population=6, generations=4, top_k=3, lr_zoo=ZOO, **kw)


def test_racing_saves_replicas_and_keeps_the_best() -> None:
    full_fit, race_fit = ToyFitness(), ToyFitness()
    full = evolve(full_fit, LAYERS, _config(), progress=False)
    raced = evolve(race_fit, LAYERS, _config(racing=True, race_episodes=2), progress=False)
    assert race_fit.replicas < full_fit.replicas
    history = raced.history()
    out = history[history["raced_out"]]
    assert len(out) > 0 and (out["n_episodes"] < ToyFitness.n_episodes).all()
    assert (history.loc[~history["raced_out"], "n_episodes"] == ToyFitness.n_episodes).all()
    assert not raced.best.raced_out
    assert raced.best.scheme == full.best.scheme
    assert int(history["n_episodes"].sum()) == race_fit.replicas
    # raced-out candidates rank after every fully scored one
    assert out["rank"].min() > history.loc[~history["raced_out"], "rank"].max()


def test_racing_is_deterministic_and_resumes_exactly(tmp_path) -> None:
    once = evolve(ToyFitness(), LAYERS, _config(racing=True), tmp_path / "a", progress=False)
    again = evolve(ToyFitness(), LAYERS, _config(racing=True), tmp_path / "b", progress=False)
    assert once.candidates == again.candidates
    first = SearchConfig(**{**_config(racing=True).to_dict(), "generations": 2, "lr_zoo": ZOO})
    evolve(ToyFitness(), LAYERS, first, tmp_path / "c", progress=False)
    resumed = evolve(ToyFitness(), LAYERS, _config(racing=True), tmp_path / "c", progress=False)
    assert resumed.candidates == once.candidates
    with pytest.raises(SearchError, match="racing"):
        evolve(ToyFitness(), LAYERS, _config(), tmp_path / "c", progress=False)


class Stopped(Exception):
    """Stands for the job killed in the middle of a generation."""


class StoppingFitness(ToyFitness):
    """ToyFitness that counts its calls and stops at call ``stop_at`` (1-based), if given."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, schemes, desc="", episodes=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise Stopped
        return super().__call__(schemes, desc, episodes)


def test_a_search_stopped_inside_a_generation_resumes_from_its_last_call(tmp_path) -> None:
    """Each racing stage's scores are logged as it ends: the resumed search repeats no finished
    call of the interrupted generation and ends with exactly the uninterrupted candidates."""
    config = _config(racing=True, race_episodes=2)
    straight = StoppingFitness()
    once = evolve(straight, LAYERS, config, tmp_path / "a", progress=False)
    assert straight.calls > 6  # generation 0 is one call, later ones a call per racing stage
    stop_at = straight.calls - 2  # inside the last generation, after some of its stages
    with pytest.raises(Stopped):
        evolve(StoppingFitness(stop_at), LAYERS, config, tmp_path / "b", progress=False)
    log = json.loads((tmp_path / "b" / STAGES_FILE).read_text())
    done = len(log["calls"])
    assert log["generation"] == config.generations - 1 and done >= 1
    again = StoppingFitness()
    resumed = evolve(again, LAYERS, config, tmp_path / "b", progress=False)
    assert resumed.candidates == once.candidates
    assert [c.accuracies for c in resumed.candidates] == [c.accuracies for c in once.candidates]
    assert again.calls == straight.calls - (stop_at - 1)  # only the calls never finished
    assert not (tmp_path / "b" / STAGES_FILE).exists()  # dropped once the generation is saved
    # a log whose state is gone belongs to no search: a fresh search there drops it
    with pytest.raises(Stopped):
        evolve(StoppingFitness(stop_at), LAYERS, config, tmp_path / "c", progress=False)
    (tmp_path / "c" / "state.json").unlink()
    fresh = StoppingFitness()
    assert (
        evolve(fresh, LAYERS, config, tmp_path / "c", progress=False).candidates == once.candidates
    )
    assert fresh.calls == straight.calls


def test_racing_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="race_episodes"):
        SearchConfig(racing=True, race_episodes=0)


def test_replay_of_a_full_search_matches_the_raced_search_where_they_share_candidates(
    repo_root, tmp_path
) -> None:
    """``benchmarks/replay_racing.py`` runs the racing rule on a full search's stored accuracies;
    until the first raced-out candidate changes the parents (generations 0 and 1), a raced search
    evaluates the same candidates, so the replay must stop exactly the same ones."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "replay_racing", repo_root / "benchmarks/replay_racing.py"
    )
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    full = evolve(ToyFitness(), LAYERS, _config(), tmp_path / "full", progress=False)
    raced = evolve(ToyFitness(), LAYERS, _config(racing=True, race_episodes=2), progress=False)
    shared = [c for c in full.candidates if c.generation <= 1]
    assert [c.scheme for c in shared] == [c.scheme for c in raced.candidates[: len(shared)]]
    early = replace(full, candidates=shared)
    got = replay.replay(early, race_episodes=2, race_z=_config().race_z)
    seen = sum(len(c.accuracies) for c in raced.candidates[: len(shared)])
    assert got["share"] == seen / (len(shared) * ToyFitness.n_episodes) < 1
    assert got["raced_out"] == sum(c.raced_out for c in raced.candidates[: len(shared)]) > 0
    # the whole replay: a share in (0, 1]; a huge race_z stops nothing
    assert 0 < replay.replay(full, 2, 1.64)["share"] <= 1
    assert replay.replay(full, 2, 1e9)["share"] == 1.0
    replay.main([str(tmp_path / "full"), "--race-episodes", "2", "--race-z", "1.64"])
