"""Notebook 05's gathering: every run found, missing results named, tables as CSV and LaTeX,
figures drawn; and the figures of notebooks 03 and 04."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ptx_utils import plots as viz
from ptx_utils.evaluation import ROW_COLUMNS, Evaluation, summary_table
from ptx_utils.steps import analysis, searching, transfer


def _rows(means: dict[str, float], k_shots: tuple[int, ...] = (1, 5)) -> pd.DataFrame:
    records = [
        {
            "strategy": name,
            "scheme": name,
            "episode": e,
            "n_way": 5,
            "k_shot": k,
            "n_query": 15,
            "accuracy": min(1.0, m + 0.01 * (e % 3)),
            "diverged": False,
            "seed": e,
        }
        for k in k_shots
        for name, m in means.items()
        for e in range(6)
    ]
    return pd.DataFrame(records, columns=list(ROW_COLUMNS))


MEANS = {"searched": 0.9, "linear probe": 0.8, "full fine-tune": 0.7, "last-1": 0.75}


def _shift_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    summary, schemes = [], []
    for order, (target, n) in enumerate((("shift 0", 1), ("shift 1", 3))):
        for name, m in MEANS.items():
            summary.append(
                {
                    "target": target,
                    "order": order,
                    "shift": float(order),
                    "strategy": name,
                    "scheme": name,
                    "n_trainable": n if name == "searched" else 0,
                    "n_way": 5,
                    "k_shot": 1,
                    "n_episodes": 6,
                    "n": 6,
                    "n_diverged": 0,
                    "mean": m - 0.2 * order,
                    "ci95": 0.02,
                }
            )
        for j in range(4):
            schemes.append(
                {
                    "target": target,
                    "order": order,
                    "shift": float(order),
                    "layer": f"block{j + 1}",
                    "layer_index": j,
                    "lr": 0.1 if j >= 4 - n else 0.0,
                    "n_trainable": n,
                    "fitness": 0.8,
                }
            )
    return pd.DataFrame(summary), pd.DataFrame(schemes)


def _make_run(root: Path, name: str, complete: bool = True) -> Path:
    run = root / name
    (run / "results").mkdir(parents=True)
    params = {"dataset": "synthetic", "backbone": "conv4", "preset": "smoke", "seed": 0, "n_way": 5}
    (run / "params.json").write_text(
        json.dumps({"params": params, "provenance": {"git_commit": "abc", "date": "2026-11-23"}})
    )
    transfer.write_transfer(run, Evaluation(_rows(MEANS)))
    if complete:
        pd.DataFrame(
            [
                [5, k, m, "0 0 0 1 | head 0.01", "0 0 0 1", 1, 0.9, 12, 3, 1.5]
                for k in (1, 5)
                for m in ("evolution", "random")
            ],
            columns=list(searching.SEARCH_SUMMARY_COLUMNS),
        ).to_csv(run / "results" / "search_summary.csv", index=False)
        summary, schemes = _shift_frames()
        summary.to_csv(run / "results" / "domain_shift_summary.csv", index=False)
        schemes.to_csv(run / "results" / "domain_shift_schemes.csv", index=False)
    return run


def test_gather_stacks_runs_and_names_what_is_missing(tmp_path: Path) -> None:
    _make_run(tmp_path, "a")
    _make_run(tmp_path, "b", complete=False)
    (tmp_path / "not-a-run").mkdir()
    collection = analysis.gather(tmp_path)
    assert list(collection.runs["run"]) == ["a", "b"]
    assert collection.runs.set_index("run").loc["a", "missing"] == ""
    missing = collection.runs.set_index("run").loc["b", "missing"]
    assert "search_summary.csv (02_search)" in missing and "04_domain_shift" in missing
    transfer = collection["transfer"]
    assert list(transfer.columns[:3]) == ["run", "dataset", "backbone"]
    assert len(transfer) == 2 * 2 * len(MEANS)  # runs x shots x strategies
    assert set(collection["shift"]["run"]) == {"a"}
    assert len(analysis.gather(tmp_path, only=["b"]).runs) == 1
    with pytest.raises(FileNotFoundError, match="no run named zz"):
        analysis.gather(tmp_path, only=["zz"])
    with pytest.raises(FileNotFoundError, match="ptx run --preset demo"):
        analysis.find_runs(tmp_path / "nowhere")


def test_transfer_table_joins_the_paired_difference(tmp_path: Path) -> None:
    _make_run(tmp_path, "a")
    table = analysis.transfer_table(analysis.gather(tmp_path))
    row = table.set_index(["k_shot", "strategy"]).loc[(1, "linear probe")]
    assert row["diff_vs_searched"] == pytest.approx(0.1) and row["setting"] == "5-way 1-shot"
    assert pd.isna(table.set_index(["k_shot", "strategy"]).loc[(1, "searched"), "diff_vs_searched"])


def test_mean_ci_latex_bolds_the_best_and_escapes() -> None:
    frame = pd.DataFrame(
        [
            {"strategy": "last_1", "col": "A", "mean": 0.5, "ci95": 0.01},
            {"strategy": "searched", "col": "A", "mean": 0.75, "ci95": 0.02},
            {"strategy": "searched", "col": "B & C", "mean": float("nan"), "ci95": 0.0},
        ]
    )
    tex = analysis.mean_ci_latex(frame, "strategy", "col", caption="Acc. 95%")
    assert "\\textbf{75.00 $\\pm$ 2.00}" in tex and "50.00 $\\pm$ 1.00 &" in tex
    assert "last\\_1" in tex and "B \\& C" in tex and "Acc. 95\\%" in tex
    assert tex.count("--") == 2  # the NaN cell and last_1's missing B column


def test_write_tables_and_figures(tmp_path: Path) -> None:
    _make_run(tmp_path / "runs", "a")
    _make_run(tmp_path / "runs", "b")
    collection = analysis.gather(tmp_path / "runs")
    written = analysis.write_tables(collection, tmp_path / "out")
    assert set(written) == {
        "runs",
        "transfer",
        "transfer_tex",
        "search",
        "domain_shift",
        "domain_shift_tex",
    }
    assert "a 5-way 1-shot & a 5-way 5-shot & b 5-way 1-shot" in written["transfer_tex"].read_text()
    for draw, n_axes in (
        (viz.transfer_overview, 4),
        (viz.shift_overview, 4),
        (viz.search_overview, 1),
    ):
        fig = draw(collection)
        assert len(fig.axes) == n_axes
        plt.close(fig)
    empty = analysis.gather(tmp_path / "runs", only=[])
    with pytest.raises(ValueError, match="run notebook 03_transfer first"):
        viz.transfer_overview(empty)


def test_transfer_and_shift_figures() -> None:
    rows = _rows(MEANS)
    fig = viz.strategy_figure(summary_table(rows))
    assert [ax.get_title() for ax in fig.axes] == ["5-way 1-shot", "5-way 5-shot"]
    assert len(fig.axes[0].patches) == len(MEANS)
    fig = viz.episode_distribution(rows)
    assert len(fig.axes) == 2 and "6 episodes" in fig.axes[0].get_title()
    summary, schemes = _shift_frames()
    fig = viz.shift_figure(summary, n_layers=4)
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["shift 0", "shift 1"]
    assert [p.get_height() for p in fig.axes[1].patches] == [1, 3]
    fig = viz.shift_scheme_map(schemes, zoo=(0.0, 0.01, 0.1, 1.0))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "1 tuned" in texts and "3 tuned" in texts and texts.count("frozen") == 3 + 1
    plt.close("all")


def test_strategy_palette_is_stable_and_colour_blind_safe() -> None:
    palette = viz.strategy_palette(["linear probe", "mine", "searched", "other"])
    assert palette["searched"] == viz.STRATEGY_COLORS["searched"]
    assert set(palette.values()) <= set(viz.OKABE_ITO)
    assert len(set(palette.values())) == 4
