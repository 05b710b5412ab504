"""The scheme search: operators stay in the space, no double evaluation, equal budgets,
determinism, resume after a kill (real engine, separate process) and the files it writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation.harness import evaluate_strategies
from ptx_utils.finetuning.fixed import full_finetune, linear_probe
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import create_backbone
from ptx_utils.plots import LiveSearchPlot, save_figure, scheme_heatmap, search_figure
from ptx_utils.running.presets import get_preset
from ptx_utils.search import (
    CURVE_COLUMNS,
    HISTORY_COLUMNS,
    SEARCH_METHODS,
    EpisodeFitness,
    GenerationReport,
    SearchConfig,
    SearchError,
    SearchResult,
    SearchSpace,
    diversity,
    evolve,
    operators,
    search,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = [f"layer{i}" for i in range(6)]
TARGET = (0.0, 0.0, 0.01, 0.01, 0.1, 1.0)


class FakeFitness:
    """Accuracy = share of layers whose rate equals TARGET's, on 3 episodes; records calls."""

    def __init__(self, diverge_on: float | None = None) -> None:
        self.seen: list[Scheme] = []
        self.calls = 0
        self.diverge_on = diverge_on

    def __call__(self, schemes: Sequence[Scheme], desc: str = "") -> np.ndarray:
        self.calls += 1
        self.seen.extend(schemes)
        rows = []
        for s in schemes:
            score = float(np.mean(np.array(s.lrs) == np.array(TARGET[: len(s.lrs)])))
            row = [score, score, score]
            if self.diverge_on is not None and s.lrs[-1] == self.diverge_on:
                row[0] = math.nan
            rows.append(row)
        return np.array(rows)


def comparable(result: SearchResult) -> pd.DataFrame:
    """The history without wall times."""
    return result.history().drop(columns=["seconds"])


# --- settings and space -------------------------------------------------------------------------


def test_config_round_trip_and_validation() -> None:
    cfg = SearchConfig(population=8, lr_zoo=(0, 0.1), max_trainable_layers=2)
    assert cfg.lr_zoo == (0.0, 0.1) and cfg.budget == 8 * 20
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown search setting.*popsize"):
        SearchConfig.from_dict({"popsize": 3})
    with pytest.raises(ValueError, match="method must be one of"):
        SearchConfig(method="grid")
    with pytest.raises(ValueError, match="distinct learning rates"):
        SearchConfig(lr_zoo=(0.1, 0.1))
    with pytest.raises(ValueError, match="min_trainable_layers <= max_trainable_layers"):
        SearchConfig(min_trainable_layers=3, max_trainable_layers=1)


@pytest.mark.parametrize(
    ("zoo", "low", "high"),
    [((0, 0.01, 0.1, 1.0), 0, None), ((0, 0.01, 0.1), 1, 2), ((0.01, 0.1), 0, None), ((0,), 0, 0)],
)
def test_space_size_matches_enumeration_and_samples_are_feasible(
    zoo: tuple[float, ...], low: int, high: int | None
) -> None:
    cfg = SearchConfig(lr_zoo=zoo, min_trainable_layers=low, max_trainable_layers=high)
    space = SearchSpace.of(4, cfg)
    everything = list(space.enumerate())
    assert space.size() == len(everything) == len(set(everything))
    rng = np.random.default_rng(0)
    draws = [space.sample(rng) for _ in range(2000)]
    assert all(space.feasible(d) for d in draws)
    if space.size() <= 20:  # uniform: every scheme shows up
        assert set(draws) == set(everything)


def test_an_impossible_constraint_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="relax the constraint"):
        SearchSpace.of(3, SearchConfig(lr_zoo=(0.01, 0.1), max_trainable_layers=2))


# --- operators, budget, no double evaluation ----------------------------------------------------


@pytest.mark.parametrize("method", SEARCH_METHODS)
def test_every_candidate_is_new_feasible_and_inside_the_zoo(method: str) -> None:
    cfg = SearchConfig(
        method=method,
        population=12,
        generations=15,
        lr_zoo=(0, 0.01, 0.1, 1.0),
        min_trainable_layers=1,
        max_trainable_layers=4,
        seed=3,
    )
    fitness = FakeFitness()
    result = evolve(fitness, LAYERS, cfg, progress=False)
    seen = [s.lrs for s in fitness.seen]
    assert len(seen) == len(set(seen)) == cfg.budget  # never evaluated twice; full budget
    assert fitness.calls == cfg.generations  # one fitness call per generation
    for lrs in seen:
        assert set(lrs) <= set(cfg.lr_zoo)
        assert 1 <= sum(x > 0 for x in lrs) <= 4
    origins = Counter(c.origin for c in result.candidates)
    if method == "random":
        assert set(origins) == {"random"}
    else:
        assert origins["mutation"] > 0 and origins["crossover"] > 0
        assert all(c.origin == "random" for c in result.candidates if c.generation == 0)


def test_mutation_and_crossover_only_use_parent_or_zoo_rates() -> None:
    space = SearchSpace.of(6, SearchConfig())
    rng = np.random.default_rng(0)
    a, b = (0.0,) * 6, (0.1,) * 6
    for _ in range(200):
        child = operators._crossover(rng, a, b)
        assert set(child) <= {0.0, 0.1}
        mutant = operators._mutate(space, rng, a, 0.5)
        assert set(mutant) <= set(space.zoo)
    assert operators._mutate(space, rng, a, 0.0) == a
    assert all(
        x != 0.0 for x in operators._mutate(space, rng, a, 1.0)
    )  # a mutation changes the rate


def test_random_search_has_the_same_budget_and_first_generation() -> None:
    ea = evolve(FakeFitness(), LAYERS, SearchConfig(population=10, generations=6), progress=False)
    rs = evolve(
        FakeFitness(),
        LAYERS,
        SearchConfig(method="random", population=10, generations=6),
        progress=False,
    )
    assert len(ea.candidates) == len(rs.candidates) == 60
    first = [c.scheme for c in ea.candidates if c.generation == 0]
    assert first == [c.scheme for c in rs.candidates if c.generation == 0]


def test_evolution_beats_random_search_on_a_structured_fitness() -> None:
    wins = 0
    for seed in range(5):
        cfg = SearchConfig(population=10, generations=10, seed=seed)
        ea = evolve(FakeFitness(), LAYERS, cfg, progress=False).best.fitness
        rs = SearchConfig(method="random", population=10, generations=10, seed=seed)
        wins += ea > evolve(FakeFitness(), LAYERS, rs, progress=False).best.fitness
    assert wins >= 4


def test_a_small_space_is_exhausted_without_repeats() -> None:
    cfg = SearchConfig(population=3, generations=10, lr_zoo=(0, 0.1), top_k=2)
    fitness = FakeFitness()
    result = evolve(fitness, LAYERS[:3], cfg, progress=False)
    assert result.exhausted and result.complete
    assert sorted(s.lrs for s in fitness.seen) == sorted(SearchSpace.of(3, cfg).enumerate())
    assert list(result.curve["n_new"]) == [3, 3, 2]


def test_diverged_episodes_score_zero_and_are_flagged() -> None:
    result = evolve(
        FakeFitness(diverge_on=1.0),
        LAYERS,
        SearchConfig(population=10, generations=3),
        progress=False,
    )
    hist = result.history()
    bad = hist[hist["lrs"].map(lambda t: json.loads(t)[-1] == 1.0)]
    assert len(bad) > 0 and bad["diverged"].all() and (bad["n_diverged"] == 1).all()
    for c in result.candidates:
        ok = float(np.mean(np.array(c.scheme.lrs) == np.array(TARGET)))
        assert c.fitness == pytest.approx(ok * (2 / 3 if c.scheme.lrs[-1] == 1.0 else 1.0))


# --- determinism and resume ---------------------------------------------------------------------


def test_same_seed_same_search_other_seed_other_search() -> None:
    cfg = SearchConfig(population=8, generations=5, seed=1)
    a = evolve(FakeFitness(), LAYERS, cfg, progress=False)
    b = evolve(FakeFitness(), LAYERS, cfg, progress=False)
    c = evolve(FakeFitness(), LAYERS, SearchConfig(population=8, generations=5, seed=2))
    pd.testing.assert_frame_equal(comparable(a), comparable(b))
    assert list(comparable(a)["scheme"]) != list(comparable(c)["scheme"])


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = SearchConfig(population=8, generations=6, seed=4)

    def stop_after_two(report: GenerationReport) -> None:
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evolve(FakeFitness(), LAYERS, cfg, out_dir=tmp_path / "s", callback=stop_after_two)
    saved = SearchResult.load(tmp_path / "s")
    assert saved.generations_done == 2 and len(saved.candidates) == 16
    fitness = FakeFitness()
    resumed = evolve(fitness, LAYERS, cfg, out_dir=tmp_path / "s", progress=False)
    assert fitness.calls == 4  # only the missing generations ran
    straight = evolve(FakeFitness(), LAYERS, cfg, progress=False)
    pd.testing.assert_frame_equal(comparable(resumed), comparable(straight))
    assert resumed.best == straight.best
    # A finished search resumed again does nothing; asking for more generations extends it.
    again = FakeFitness()
    evolve(again, LAYERS, cfg, out_dir=tmp_path / "s", progress=False)
    assert again.calls == 0
    longer = SearchConfig(population=8, generations=8, seed=4)
    extended = evolve(FakeFitness(), LAYERS, longer, out_dir=tmp_path / "s", progress=False)
    longer_straight = evolve(FakeFitness(), LAYERS, longer, progress=False)
    pd.testing.assert_frame_equal(comparable(extended), comparable(longer_straight))


def test_resuming_with_other_settings_or_without_permission_is_refused(tmp_path: Path) -> None:
    cfg = SearchConfig(population=4, generations=2)
    evolve(FakeFitness(), LAYERS, cfg, out_dir=tmp_path, progress=False)
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(SearchError, match="population=4 there, 5 now"):
        evolve(FakeFitness(), LAYERS, SearchConfig(population=5, generations=2), tmp_path)
    with pytest.raises(SearchError, match="backbone_digest"):
        evolve(FakeFitness(), LAYERS, cfg, tmp_path, identity={"backbone_digest": "other"})
    with pytest.raises(SearchError, match="resume=True"):
        evolve(FakeFitness(), LAYERS, cfg, tmp_path, resume=False)
    assert (tmp_path / "state.json").read_bytes() == before
    with pytest.raises(SearchError, match="no search state"):
        SearchResult.load(tmp_path / "nothing-here")


def test_written_files(tmp_path: Path) -> None:
    cfg = SearchConfig(population=6, generations=3)
    result = evolve(FakeFitness(), LAYERS, cfg, out_dir=tmp_path, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best_scheme.json", "curve.csv", "history.csv", "state.json"]
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.columns) == list(HISTORY_COLUMNS) and len(hist) == 18
    assert hist["fitness"].between(0, 1).all() and set(hist["generation"]) == {0, 1, 2}
    fitness = hist["fitness"].to_numpy()
    assert hist["rank"].tolist() == [1 + int((fitness > f).sum()) for f in fitness]
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert curve["best_fitness"].is_monotonic_increasing
    best = json.loads((tmp_path / "best_scheme.json").read_text())
    assert best["fitness"] == result.best.fitness == hist["fitness"].max()
    assert best["rank"] == 1 and best["n_evaluated"] == 18 and "git_commit" in best["provenance"]
    assert Scheme.from_dict(best["scheme"]) == result.best.scheme
    assert result.rank(result.best.scheme) == 1
    assert result.rank(Scheme((0.5,) * 6)) is None
    worst = min(result.candidates, key=lambda c: c.fitness)
    assert result.rank(worst.scheme) == 1 + sum(
        c.fitness > worst.fitness for c in result.candidates
    )


COMMITTED_STATES = sorted(
    Path(__file__).resolve().parent.parent.glob("benchmarks/results/search_*/search/*/state.json")
)


@pytest.mark.parametrize(
    "state_path", COMMITTED_STATES, ids=lambda p: f"{p.parents[2].name}/{p.parent.name}"
)
def test_committed_search_states_still_load(state_path: Path) -> None:
    result = SearchResult.load(state_path.parent)
    assert result.candidates and result.generations_done >= 1
    assert [c.index for c in result.candidates] == list(range(len(result.candidates)))
    assert result.best.fitness == max(c.fitness for c in result.candidates)
    assert list(result.history().columns) == list(HISTORY_COLUMNS)
    # Saving it again writes the same state: the format is unchanged.
    assert json.loads(json.dumps(result.state())) == json.loads(state_path.read_text())


def test_committed_search_states_are_found() -> None:
    assert len(COMMITTED_STATES) >= 1


def test_report_line_and_figures(tmp_path: Path) -> None:
    reports: list[GenerationReport] = []
    ea = evolve(
        FakeFitness(), LAYERS, SearchConfig(population=5, generations=2), callback=reports.append
    )
    line = reports[-1].line()
    assert line.startswith("generation 2/2: best ") and "mean" in line and "diversity" in line
    rs = evolve(FakeFitness(), LAYERS, SearchConfig(method="random", population=5, generations=2))
    fig = search_figure({"evolution": ea, "random": rs})
    paths = save_figure(fig, tmp_path / "search")
    assert [p.suffix for p in paths] == [".pdf", ".png"] and all(
        p.stat().st_size > 0 for p in paths
    )
    LiveSearchPlot()(reports[-1])  # outside IPython: nothing to draw, no error
    heat = scheme_heatmap(ea, top=3)
    texts = [t.get_text() for t in heat.axes[0].texts]
    assert len(texts) == 4 * 6 and str(ea.best.scheme) in heat.axes[0].get_title()
    column_sums = np.zeros(6)
    for k, t in enumerate(texts):  # row-major (rate, layer): each layer's shares add up to 1
        column_sums[k % 6] += float(t.rstrip("%")) / 100
    np.testing.assert_allclose(column_sums, 1.0, atol=0.02)
    save_figure(heat, tmp_path / "heat")
    assert diversity([(0.0, 0.1), (0.0, 0.1)]) == 0.0
    assert diversity([(0.0, 0.1), (0.1, 0.0)]) == 1.0


# --- with the real fine-tuning engine -----------------------------------------------------------

SMALL_FT = FinetuneConfig(passes=2)
SMALL_SEARCH = dict(population=4, generations=4, top_k=2, mutation_prob=0.3, seed=5)


def _backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("conv4", in_channels=3, image_size=16)


def test_episode_fitness_equals_the_evaluation_harness(synthetic_test: FewShotDataset) -> None:
    backbone = _backbone()
    episodes = sample_episodes(synthetic_test, n_way=5, k_shot=1, n_query=3, n_episodes=3, seed=2)
    # The fitness takes strategies and bare schemes alike.
    strategies = [linear_probe(4), full_finetune(4, 0.1), Scheme((0, 0, 0.1, 0.01))]
    runtime = Runtime(seed=7, progress=False)
    fitness = EpisodeFitness(backbone, synthetic_test, episodes, SMALL_FT, runtime=runtime)
    acc = fitness(strategies)
    np.testing.assert_array_equal(acc, fitness([s.scheme for s in strategies[:2]] + strategies[2:]))
    rows = evaluate_strategies(
        backbone,
        {str(i): s for i, s in enumerate(strategies)},
        synthetic_test,
        episodes,
        SMALL_FT,
        runtime=runtime,
        engine="batched",
    ).rows
    np.testing.assert_array_equal(acc, rows["accuracy"].to_numpy().reshape(3, 3))
    assert fitness.identity()["episodes_digest"] == episodes.digest()
    assert "base_strategy" not in fitness.identity()  # earlier searches keep their identity


def test_the_search_varies_the_scheme_of_a_base_strategy(synthetic_test: FewShotDataset) -> None:
    """With ``base`` each candidate runs as ``base.with_scheme(scheme)``: a cosine-classifier base
    under a linear protocol scores as the scheme under a cosine protocol."""
    backbone = _backbone()
    episodes = sample_episodes(synthetic_test, n_way=5, k_shot=1, n_query=3, n_episodes=2, seed=2)
    schemes = [Scheme((0, 0, 0, 0.1)), Scheme((0, 0, 0.1, 0.01))]
    runtime = Runtime(seed=7, progress=False)
    base = Strategy(Scheme((0, 0, 0, 0)), classifier="cosine")
    linear = replace(SMALL_FT, head="linear")
    with_base = EpisodeFitness(backbone, synthetic_test, episodes, linear, runtime, base=base)
    cosine = EpisodeFitness(backbone, synthetic_test, episodes, replace(SMALL_FT, head="cosine"),
                            runtime)  # fmt: skip
    np.testing.assert_array_equal(with_base(schemes), cosine(schemes))
    assert with_base.identity()["base_strategy"]["classifier"] == "cosine"


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from ptx_utils.data import load_dataset
    from ptx_utils.data.episodes import sample_episodes
    from ptx_utils.finetuning.protocol import FinetuneConfig
    from ptx_utils.models import create_backbone
    from ptx_utils.search import SearchConfig, search

    def kill_after_generation_two(report):
        if report.generation == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    data = load_dataset("synthetic", "test", image_size=16, images_per_class=30)
    episodes = sample_episodes(data, n_way=5, k_shot=1, n_query=3, n_episodes=3, seed=2)
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=3, image_size=16)
    search(backbone, data, episodes, SearchConfig(**{config}), FinetuneConfig(passes=2),
           out_dir=sys.argv[1], callback=kill_after_generation_two)
    print("not killed")
    """
)


def test_search_killed_after_generation_two_resumes_to_the_same_result(
    synthetic_test: FewShotDataset, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    script = KILL_SCRIPT.replace("{config}", repr(SMALL_SEARCH))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "not killed" not in proc.stdout
    assert SearchResult.load(out).generations_done == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    episodes = sample_episodes(synthetic_test, n_way=5, k_shot=1, n_query=3, n_episodes=3, seed=2)
    cfg = SearchConfig(**SMALL_SEARCH)
    resumed = search(_backbone(), synthetic_test, episodes, cfg, SMALL_FT, out_dir=out)
    quiet = Runtime(progress=False)
    straight = search(_backbone(), synthetic_test, episodes, cfg, SMALL_FT, runtime=quiet)
    assert resumed.generations_done == straight.generations_done == 4
    pd.testing.assert_frame_equal(comparable(resumed), comparable(straight))
    assert resumed.best == straight.best and resumed.best.fitness == straight.best.fitness
    for a, b in zip(resumed.candidates, straight.candidates, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
    # Another backbone may not continue this search.
    other = create_backbone("conv4", in_channels=3, image_size=16)
    with pytest.raises(SearchError, match="backbone_digest"):
        search(other, synthetic_test, episodes, cfg, SMALL_FT, out_dir=out, runtime=quiet)


@pytest.mark.parametrize("preset", ["smoke", "demo", "paper"])
def test_presets_hold_valid_search_and_finetune_settings(preset: str) -> None:
    params = get_preset(preset)
    config = SearchConfig.from_dict(params["search"])
    FinetuneConfig(**params["finetune"])
    assert config.top_k <= config.population and params["n_val_episodes"] >= 1
    if preset == "paper":
        assert (config.population, config.generations, config.top_k) == (20, 20, 10)
        assert params["finetune"]["passes"] == 100 and params["n_val_episodes"] == 20
