"""Evaluation harness: statistics on known numbers, tidy results, shared seeds, atomic writing."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ptx_utils import evaluation as ev
from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import (
    betainc,
    mean_ci95,
    paired_difference,
    student_t_cdf,
    student_t_sf2,
    summarize,
)
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import Episodes, sample_episodes
from ptx_utils.evaluation import harness
from ptx_utils.finetuning import as_strategy, replicas
from ptx_utils.finetuning.fixed import full_finetune, linear_probe
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.models import Backbone, create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- statistics -----------------------------------------------------------------------------


def test_mean_ci95_on_known_numbers() -> None:
    mean, ci = mean_ci95([0.0, 1.0] * 50)
    assert mean == 0.5
    assert ci == pytest.approx(1.96 * 0.5 / math.sqrt(100), rel=1e-12)


def test_summarize_leaves_out_and_counts_nan() -> None:
    s = summarize([0.0, 1.0, math.nan] * 50)
    assert (s.n, s.n_missing, s.mean) == (100, 50, 0.5)
    assert s.ci95 == pytest.approx(1.96 * 0.5 / 10)
    empty = summarize([math.nan, math.nan])
    assert empty.n == 0 and empty.n_missing == 2 and math.isnan(empty.mean)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (2.0, 3.0, 0.4, 0.5248),  # binomial sum: P(Bin(4, 0.4) >= 2)
        (1.0, 1.0, 0.3, 0.3),  # uniform
        (0.5, 0.5, 0.3, 2 / math.pi * math.asin(math.sqrt(0.3))),  # arcsine law
        (5.0, 0.5, 0.99, None),  # symmetric branch, checked against 1 - I_{1-x}(b, a)
    ],
)
def test_regularized_incomplete_beta(a: float, b: float, x: float, expected: float | None) -> None:
    if expected is None:
        expected = 1.0 - betainc(b, a, 1.0 - x)
    assert betainc(a, b, x) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        (2.0, 10, 0.0733880347707404),  # tables / scipy.stats.t.sf(2, 10) * 2
        (2.228138851986274, 10, 0.05),  # the 97.5 % quantile of t(10)
        (12.706204736174705, 1, 0.05),  # the 97.5 % quantile of t(1)
        (1.0, 1, 0.5),  # Cauchy: 1 - 2/pi * atan(1)
        (3.0, 2, 1 - 3 / math.sqrt(11)),  # df=2 closed form: 1 - |t| / sqrt(2 + t^2)
        (-3.0, 2, 1 - 3 / math.sqrt(11)),
        (0.0, 5, 1.0),
        (math.inf, 5, 0.0),
    ],
)
def test_student_t_two_sided_p(t: float, df: int, p: float) -> None:
    assert student_t_sf2(t, df) == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_student_t_cdf_is_symmetric_and_approaches_the_normal() -> None:
    assert student_t_cdf(0.0, 7) == 0.5
    assert student_t_cdf(-1.3, 7) == pytest.approx(1 - student_t_cdf(1.3, 7), rel=1e-12)
    assert student_t_cdf(1.959963984540054, 1e8) == pytest.approx(0.975, abs=1e-7)


def test_paired_difference_matches_a_hand_computation() -> None:
    a = np.array([0.60, 0.70, 0.55, 0.80, 0.65, 0.72])
    b = np.array([0.50, 0.72, 0.50, 0.70, 0.65, 0.60])
    d = a - b
    n = len(d)
    r = paired_difference(a, b)
    assert r.n == n
    assert r.mean_diff == pytest.approx(d.sum() / n, rel=1e-12)
    sd0 = math.sqrt(((d - d.mean()) ** 2).sum() / n)
    sd1 = math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1))
    assert r.ci95 == pytest.approx(1.96 * sd0 / math.sqrt(n), rel=1e-12)
    assert r.t == pytest.approx(d.mean() / (sd1 / math.sqrt(n)), rel=1e-12)
    assert r.p_value == pytest.approx(student_t_sf2(r.t, n - 1), rel=1e-12)
    assert 0 < r.p_value < 0.2
    assert (r.wins, r.losses, r.ties) == (4, 1, 1)
    assert r.win_rate == pytest.approx(4 / 6) and r.loss_rate == pytest.approx(1 / 6)


def test_paired_difference_with_t_two_on_ten_dof() -> None:
    # d = c + s * z with mean(z) = 0, std(z, ddof=1) = 1 and n = 11: t = c * sqrt(11) / s.
    z = np.arange(11, dtype=float) - 5.0
    z /= z.std(ddof=1)
    d = 2.0 / math.sqrt(11) + z
    r = paired_difference(d, np.zeros(11))
    assert r.t == pytest.approx(2.0, rel=1e-12)
    assert r.p_value == pytest.approx(0.0733880347707404, rel=1e-9)


def test_paired_difference_zero_variance() -> None:
    same = paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (same.mean_diff, same.ci95, same.t, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert same.ties == 3
    # 0.6 - 0.4 and 0.7 - 0.5 differ by float rounding; still zero variance.
    shifted = paired_difference([0.6, 0.7, 0.9], [0.4, 0.5, 0.7])
    assert shifted.mean_diff == pytest.approx(0.2)
    assert shifted.p_value == 0.0 and shifted.t == math.inf and shifted.ci95 == 0.0
    assert paired_difference([0.4, 0.5], [0.6, 0.7]).t == -math.inf


def test_paired_difference_errors_and_nan_policy() -> None:
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        paired_difference([0.1, math.nan, 0.3], [0.1, 0.2, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [])
    r = paired_difference([0.1, math.nan, 0.3, 0.5], [0.1, 0.2, 0.2, 0.3], nan_policy="omit")
    assert r.n == 3 and r.mean_diff == pytest.approx(0.1)
    one = paired_difference([0.7], [0.5])
    assert one.n == 1 and math.isnan(one.t) and math.isnan(one.p_value)


# --- the harness ------------------------------------------------------------------------------

CFG = FinetuneConfig(passes=2)
SEED = 3
RUNTIME = Runtime(seed=SEED, device="cpu", progress=False)


@pytest.fixture(scope="module")
def setup(
    synthetic_test: FewShotDataset,
) -> tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]]:
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=3, image_size=16)
    episodes = sample_episodes(synthetic_test, n_way=5, k_shot=2, n_query=4, n_episodes=3, seed=1)
    n = len(backbone.layer_names())
    strategies = {
        "linear probe": linear_probe(n),
        "full fine-tune": full_finetune(n, 0.01),
        "diverging": Scheme((1.0,) * n, 1.0, name="diverging"),
    }
    return backbone, synthetic_test, episodes, strategies


@pytest.fixture(scope="module")
def evaluation(
    setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]],
) -> ev.Evaluation:
    backbone, dataset, episodes, strategies = setup
    return ev.evaluate_strategies(
        backbone, strategies, dataset, episodes, CFG, runtime=RUNTIME, engine="sequential"
    )


@pytest.fixture(scope="module")
def rows(evaluation: ev.Evaluation) -> pd.DataFrame:
    return evaluation.rows


def test_rows_are_tidy_and_flag_divergence(rows: pd.DataFrame, evaluation: ev.Evaluation) -> None:
    assert list(rows.columns) == list(ev.ROW_COLUMNS)
    assert len(rows) == 9
    assert (
        list(rows["strategy"]) == ["linear probe"] * 3 + ["full fine-tune"] * 3 + ["diverging"] * 3
    )
    assert list(rows["episode"]) == [0, 1, 2] * 3
    assert (rows[["n_way", "k_shot", "n_query"]] == [5, 2, 4]).all().all()
    assert rows["diverged"].dtype == bool
    div = rows["strategy"] == "diverging"
    assert rows.loc[div, "diverged"].any()
    assert (rows["accuracy"].isna() == rows["diverged"]).all()
    ok = rows.loc[~div]
    assert not ok["diverged"].any()
    assert ok["accuracy"].between(0, 1).all()
    # accuracies are multiples of 1 / (n_way * n_query)
    assert np.allclose(ok["accuracy"] * 20, np.round(ok["accuracy"] * 20))
    assert rows.loc[0, "scheme"] == "0 0 0 0 | head 0.01"
    assert evaluation.meta["engine"] == "sequential" and evaluation.meta["seed"] == SEED
    assert not rows.attrs  # metadata travels on the Evaluation, never on the frame


def test_replica_seeds_are_shared_across_strategies(
    rows: pd.DataFrame, setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]]
) -> None:
    backbone, dataset, episodes, strategies = setup
    expected = [SEED * 1_000_003 + e for e in range(3)]
    for _, group in rows.groupby("strategy"):
        assert list(group["seed"]) == expected
    assert replicas.replica_seed(SEED, 2) == expected[2]
    # The harness's linear probe on episode 1 equals a direct call with the documented seed.
    batch = episodes.tensors(dataset)
    direct = finetune_sequential(
        backbone, strategies["linear probe"], batch.support_images[1], batch.support_labels[1],
        batch.query_images[1], 5, CFG, seed=replicas.replica_seed(SEED, 1),
    )  # fmt: skip
    acc = (direct.logits.argmax(1) == batch.query_labels[1]).double().mean().item()
    got = rows.loc[(rows["strategy"] == "linear probe") & (rows["episode"] == 1), "accuracy"]
    assert got.item() == acc


def test_batched_engine_gets_the_same_replicas(
    monkeypatch: pytest.MonkeyPatch,
    rows: pd.DataFrame,
    setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]],
) -> None:
    """A stand-in batched engine (sequential underneath) sees the right (scheme, episode, seed)."""

    @dataclass(frozen=True)
    class Replica:
        strategy: Scheme
        episode: int
        seed: int

        @property
        def scheme(self) -> Scheme:
            return as_strategy(self.strategy).scheme

    @dataclass(frozen=True)
    class BatchedResult:
        logits: torch.Tensor
        diverged: torch.Tensor

    seen: list[Replica] = []

    def finetune_batched(backbone, replicas, s_img, s_lab, q_img, n_way, cfg, **kw):
        seen.extend(replicas)
        out = [
            finetune_sequential(
                backbone, r.strategy, s_img[r.episode], s_lab[r.episode], q_img[r.episode],
                n_way, cfg, seed=r.seed,
            )
            for r in replicas
        ]  # fmt: skip
        return BatchedResult(
            torch.stack([o.logits for o in out]), torch.tensor([o.diverged for o in out])
        )

    fake = types.ModuleType("ptx_utils.finetuning.batched")
    fake.Replica = Replica  # type: ignore[attr-defined]
    fake.finetune_batched = finetune_batched  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ptx_utils.finetuning.batched", fake)
    assert replicas.default_engine() == "batched"
    backbone, dataset, episodes, strategies = setup
    batched = ev.evaluate_strategies(backbone, strategies, dataset, episodes, CFG, runtime=RUNTIME)
    assert batched.meta["engine"] == "batched"
    assert [(r.episode, r.seed) for r in seen] == [(e, SEED * 1_000_003 + e) for e in range(3)] * 3
    assert [as_strategy(r.strategy) for r in seen[::3]] == [
        as_strategy(s) for s in strategies.values()
    ]
    pd.testing.assert_frame_equal(batched.rows, rows)


def test_checkpointed_evaluation_resumes_per_strategy(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rows: pd.DataFrame,
    setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]],
) -> None:
    """With ``checkpoint_dir`` each strategy is saved when done; a job killed during the second
    strategy re-runs only that one and the rows equal one uninterrupted evaluation."""
    backbone, dataset, episodes, strategies = setup
    run = {"engine": "sequential", "checkpoint_dir": tmp_path}
    first = ev.evaluate_strategies(backbone, strategies, dataset, episodes, CFG, RUNTIME, **run)
    pd.testing.assert_frame_equal(first.rows, rows)
    assert first.meta["episodes_digest"] == episodes.digest()
    assert list(first.meta["strategies"]) == list(strategies)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == sorted(
        f"5way_2shot_4query_{slug}.{ext}"
        for slug in ("linear-probe", "full-fine-tune", "diverging")
        for ext in ("csv", "json")
    )

    # The kill: the second strategy's metadata (written last) never made it to disk.
    (tmp_path / "5way_2shot_4query_full-fine-tune.json").unlink()
    evaluated: list[list[str]] = []
    real, inner = harness.evaluate_strategies, harness._evaluate

    def spy(backbone, strategies, *args, **kwargs):
        evaluated.append(list(strategies))
        return inner(backbone, strategies, *args, **kwargs)

    monkeypatch.setattr(harness, "_evaluate", spy)
    resumed = harness.evaluate_strategies(
        backbone, strategies, dataset, episodes, CFG, RUNTIME, **run
    )
    assert evaluated == [["full fine-tune"]]
    pd.testing.assert_frame_equal(resumed.rows, rows)
    summary = ev.summary_table(resumed.rows)
    pd.testing.assert_frame_equal(summary, ev.summary_table(rows))

    # Saved rows for other settings are refused, not mixed in.
    with pytest.raises(ValueError, match="for other settings"):
        real(backbone, strategies, dataset, episodes, FinetuneConfig(passes=3), RUNTIME, **run)
    with pytest.raises(ValueError, match="for other settings"):
        real(backbone, strategies, dataset, episodes, CFG, Runtime(seed=SEED + 1), **run)


def test_a_strategy_stopped_between_blocks_resumes_from_its_last_block(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    conv4: Backbone,
    synthetic_test: FewShotDataset,
) -> None:
    """With a checkpoint directory a strategy's test episodes run in blocks, each saved: a job
    stopped after a block loses no finished block, and on CPU the rows equal one call over all
    episodes exactly (blocks are whole chunks of the engine, so they train the same chunks)."""
    from ptx_utils.finetuning import batched, fixed

    monkeypatch.setattr(harness, "BLOCK_EPISODES", 4)
    monkeypatch.setattr(batched, "CLOSED_FORM_EPISODES", 2)  # blocks of 4 = two of its fits
    episodes = sample_episodes(synthetic_test, 5, 1, 3, 10, seed=4)
    quick = FinetuneConfig(passes=2)
    runtime = Runtime(progress=False, precision="fp32", chunk_size=2)
    named = {
        "full fine-tune": full_finetune(4),
        "logistic regression": fixed.logistic_regression(4),
        "TSA": fixed.tsa(4, steps=2),
        "SpotTune": fixed.spottune(4),
        "SpotTune (argmax)": fixed.spottune(4, inference="argmax"),
    }
    whole = ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, runtime).rows
    calls: list[tuple[list[str], int]] = []
    inner = harness._evaluate

    def stop_at_second_block(backbone, group, dataset, eps, cfg, rt, engine, offset=0, desc=""):
        calls.append((list(group), offset))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return inner(backbone, group, dataset, eps, cfg, rt, engine, offset, desc)

    monkeypatch.setattr(harness, "_evaluate", stop_at_second_block)
    run = {"checkpoint_dir": tmp_path}
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, runtime, **run)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "5way_1shot_3query_full-fine-tune.block00000-00003.csv",
        "5way_1shot_3query_full-fine-tune.block00000-00003.json",
    ]
    offsets: list[int] = []

    def record_offsets(backbone, group, dataset, eps, cfg, rt, engine, offset=0, desc=""):
        offsets.append(offset)
        return inner(backbone, group, dataset, eps, cfg, rt, engine, offset, desc)

    monkeypatch.setattr(harness, "_evaluate", record_offsets)
    resumed = ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, runtime, **run)
    assert offsets[:2] == [4, 8]  # the full fine-tune's blocks 2 and 3; block 1 was read back
    pd.testing.assert_frame_equal(resumed.rows, whole, check_exact=True)
    assert not list(tmp_path.glob("*.block*"))  # the strategies' files hold every episode

    # a block made with other settings (here another chunk size) is not read but redone; one
    # whose rows are not the episodes its record names is refused
    def full_finetune_stopped_after_its_first_block() -> None:
        for p in tmp_path.glob("5way_1shot_3query_full-fine-tune.*"):
            p.unlink()
        calls.clear()
        monkeypatch.setattr(harness, "_evaluate", stop_at_second_block)
        with pytest.raises(KeyboardInterrupt):
            ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, runtime, **run)

    full_finetune_stopped_after_its_first_block()
    other = Runtime(progress=False, precision="fp32", chunk_size=4)
    offsets.clear()
    monkeypatch.setattr(harness, "_evaluate", record_offsets)
    again = ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, other, **run)
    assert offsets[:3] == [0, 4, 8]
    assert list(again.rows["episode"]) == list(whole["episode"])
    full_finetune_stopped_after_its_first_block()
    block = tmp_path / "5way_1shot_3query_full-fine-tune.block00000-00003.csv"
    rows = pd.read_csv(block)
    rows.loc[0, "episode"] = 7
    block.write_text(rows.to_csv(index=False))
    with pytest.raises(ValueError, match="does not hold episodes 0-3"):
        ev.evaluate_strategies(conv4, named, synthetic_test, episodes, quick, runtime, **run)


def test_real_batched_engine_agrees_with_sequential(
    rows: pd.DataFrame, setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]]
) -> None:
    pytest.importorskip("ptx_utils.finetuning.batched")
    backbone, dataset, episodes, strategies = setup
    batched = ev.evaluate_strategies(
        backbone, strategies, dataset, episodes, CFG, runtime=RUNTIME, engine="batched"
    ).rows
    assert list(batched["diverged"]) == list(rows["diverged"])
    # Float differences may flip a near-tie query now and then: allow one query per episode.
    diff = (batched["accuracy"] - rows["accuracy"]).abs().fillna(0)
    assert (diff <= 1 / 20 + 1e-9).all()


def test_bad_arguments_are_refused(
    setup: tuple[Backbone, FewShotDataset, Episodes, dict[str, Scheme]],
) -> None:
    backbone, dataset, episodes, _ = setup
    with pytest.raises(ValueError, match="engine"):
        ev.evaluate_strategies(backbone, {"lp": linear_probe(4)}, dataset, episodes, engine="x")
    with pytest.raises(ValueError, match=r"'short'.*one rate per layer"):
        ev.evaluate_strategies(backbone, {"short": linear_probe(3)}, dataset, episodes)
    with pytest.raises(ValueError, match="at least one strategy"):
        ev.evaluate_strategies(backbone, {}, dataset, episodes)


def test_summary_table(rows: pd.DataFrame) -> None:
    summary = ev.summary_table(rows)
    assert list(summary.columns) == list(ev.SUMMARY_COLUMNS)
    assert list(summary["strategy"]) == ["linear probe", "full fine-tune", "diverging"]
    lp = summary.iloc[0]
    acc = rows.loc[rows["strategy"] == "linear probe", "accuracy"]
    assert (lp["n"], lp["n_diverged"], lp["n_episodes"]) == (3, 0, 3)
    assert (lp["mean"], lp["ci95"]) == pytest.approx(mean_ci95(acc))
    assert lp["mean_failed_as_zero"] == pytest.approx(lp["mean"])
    div = summary.iloc[2]
    n_div = int(rows.loc[rows["strategy"] == "diverging", "diverged"].sum())
    assert n_div >= 1 and (div["n"], div["n_diverged"]) == (3 - n_div, n_div)
    assert div["mean_failed_as_zero"] == pytest.approx(
        rows.loc[rows["strategy"] == "diverging", "accuracy"].fillna(0).mean()
    )


def _constructed_rows() -> pd.DataFrame:
    """Two strategies on 4 episodes; B diverges on episode 3."""
    return pd.DataFrame(
        {
            "strategy": ["A"] * 4 + ["B"] * 4,
            "episode": [0, 1, 2, 3] * 2,
            "accuracy": [0.5, 0.6, 0.7, 0.8, 0.4, 0.6, 0.5, math.nan],
            "diverged": [False] * 7 + [True],
        }
    )


def test_summary_counts_divergence_both_ways() -> None:
    s = ev.summary_table(_constructed_rows()).set_index("strategy")
    assert s.loc["B", "n"] == 3 and s.loc["B", "n_diverged"] == 1
    assert s.loc["B", "mean"] == pytest.approx(0.5)
    assert s.loc["B", "mean_failed_as_zero"] == pytest.approx(1.5 / 4)


def test_paired_table_uses_only_episodes_where_neither_diverged() -> None:
    paired = ev.paired_table(_constructed_rows(), reference="B")
    assert len(paired) == 1
    r = paired.iloc[0]
    assert (r["strategy"], r["reference"], r["n"], r["n_excluded"]) == ("A", "B", 3, 1)
    expected = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])
    assert r["mean_diff"] == pytest.approx(expected.mean_diff)
    assert r["t"] == pytest.approx(expected.t) and r["p_value"] == pytest.approx(expected.p_value)
    assert (r["wins"], r["losses"], r["ties"]) == (2, 0, 1)
    with pytest.raises(ValueError, match="'C' is not among"):
        ev.paired_table(_constructed_rows(), reference="C")
    with pytest.raises(ValueError, match="duplicate"):
        ev.paired_table(pd.concat([_constructed_rows()] * 2), reference="A")
    only = ev.paired_table(_constructed_rows(), reference="B", strategies=["A"])
    pd.testing.assert_frame_equal(only, paired)
    with pytest.raises(ValueError, match="'D' is not among"):
        ev.paired_table(_constructed_rows(), reference="B", strategies=["D"])


def test_tables_read_rows_concatenated_from_several_files() -> None:
    """One CSV per strategy, concatenated without ``ignore_index``: the repeated index labels
    change nothing."""
    rows = _constructed_rows()
    a, b = (rows[rows["strategy"] == s].reset_index(drop=True) for s in "AB")
    stacked = pd.concat([a, b])
    assert stacked.index.duplicated().any()
    pd.testing.assert_frame_equal(ev.summary_table(stacked), ev.summary_table(rows))
    pd.testing.assert_frame_equal(ev.paired_table(stacked, "B"), ev.paired_table(rows, "B"))


def test_tables_separate_episode_settings() -> None:
    one = _constructed_rows().assign(n_way=5, k_shot=1, n_query=15)
    five = _constructed_rows().assign(n_way=5, k_shot=5, n_query=15)
    both = pd.concat([one, five], ignore_index=True)
    summary = ev.summary_table(both)
    assert len(summary) == 4 and list(summary["k_shot"]) == [1, 1, 5, 5]
    assert len(ev.paired_table(both, "A")) == 2
    tex = ev.summary_latex(summary)
    assert "5-way 1-shot & 5-way 5-shot" in tex


def test_write_results_writes_every_file(
    rows: pd.DataFrame, evaluation: ev.Evaluation, tmp_path: Path
) -> None:
    paths = ev.write_results(tmp_path, evaluation, name="test", reference="linear probe", note="x")
    assert set(paths) == {"episodes", "summary", "summary_tex", "paired", "provenance"}
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted(p.name for p in paths.values())
    episodes = pd.read_csv(paths["episodes"])
    assert list(episodes.columns) == list(ev.ROW_COLUMNS) and len(episodes) == 9
    pd.testing.assert_series_equal(episodes["accuracy"], rows["accuracy"])
    summary = pd.read_csv(paths["summary"])
    assert list(summary.columns) == list(ev.SUMMARY_COLUMNS) and len(summary) == 3
    paired = pd.read_csv(paths["paired"])
    assert list(paired.columns) == list(ev.PAIRED_COLUMNS)
    assert list(paired["strategy"]) == ["full fine-tune", "diverging"]
    tex = paths["summary_tex"].read_text()
    assert tex.startswith("\\begin{tabular}{lc}\n\\toprule") and "\\bottomrule" in tex
    lp = summary.iloc[0]
    assert f"linear probe & {100 * lp['mean']:.2f} $\\pm$ {100 * lp['ci95']:.2f} \\\\" in tex
    n_div = summary.iloc[2]["n_diverged"]
    assert f"({n_div}/3 div.) \\\\" in tex
    prov = json.loads(paths["provenance"].read_text())
    assert prov["seed"] == SEED and prov["engine"] == "sequential" and prov["note"] == "x"
    assert prov["reference"] == "linear probe" and "git_commit" in prov
    assert prov["episodes_digest"] == evaluation.meta["episodes_digest"]
    assert set(prov["strategies"]) == {"linear probe", "full fine-tune", "diverging"}


def test_write_results_never_overwrites_silently(evaluation: ev.Evaluation, tmp_path: Path) -> None:
    rows = evaluation.rows
    first = ev.write_results(tmp_path, evaluation, name="val")
    assert "paired" not in first
    before = {p: p.read_text() for p in first.values()}
    with pytest.raises(FileExistsError, match=r"val_episodes\.csv differs.*overwrite=True"):
        ev.write_results(tmp_path, ev.Evaluation(rows.iloc[:3]), name="val")
    assert {p: p.read_text() for p in first.values()} == before
    ev.write_results(tmp_path, evaluation, name="val")  # identical settings: kept as they are
    assert {p: p.read_text() for p in first.values()} == before
    ev.write_results(tmp_path, ev.Evaluation(rows.iloc[:3]), name="val", overwrite=True)
    assert len(pd.read_csv(first["episodes"])) == 3
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="file-name stem"):
        ev.write_results(tmp_path, evaluation, name="../escape")


def test_latex_escapes_strategy_names() -> None:
    rows = _constructed_rows().replace({"strategy": {"A": "last_2 & 50%"}})
    tex = ev.summary_latex(ev.summary_table(rows))
    assert "last\\_2 \\& 50\\%" in tex
