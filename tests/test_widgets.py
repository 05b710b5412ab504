"""The explorers: scores match the harness and are cached, controls build the expected scheme,
interactions redraw, bad inputs fail with messages that say what is missing, and every explorer
has a static figure that ``show`` saves as PDF and PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from ptx_utils import search as S
from ptx_utils import widgets as W
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import Episodes, sample_episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import (
    FinetuneConfig,
    Scheme,
    Strategy,
    as_strategy,
    last_k,
    linear_probe,
)
from ptx_utils.models import Backbone, create_backbone
from ptx_utils.widgets import render, scheme_explorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = FinetuneConfig(passes=2)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("conv4", in_channels=3, image_size=16).eval()


@pytest.fixture(scope="module")
def episodes(synthetic_test: FewShotDataset) -> Episodes:
    return sample_episodes(synthetic_test, 3, 1, 2, 2, seed=0)


@pytest.fixture(scope="module")
def explorer(
    backbone: Backbone, synthetic_test: FewShotDataset, episodes: Episodes
) -> W.SchemeExplorer:
    n = len(backbone.layer_names())
    refs = {"last-1": last_k(n, 1, 0.01), "linear probe": linear_probe(n)}
    return W.SchemeExplorer(
        backbone=backbone,
        dataset=synthetic_test,
        episodes=episodes,
        cfg=CFG,
        references=refs,
        engine="sequential",
    )


def _bar_labels(fig: plt.Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_yticklabels()]


# --- SchemeExplorer -----------------------------------------------------------------------------


def test_evaluate_matches_the_harness(
    explorer: W.SchemeExplorer,
    backbone: Backbone,
    synthetic_test: FewShotDataset,
    episodes: Episodes,
) -> None:
    scheme = Scheme((0.0, 0.0, 0.1, 0.01))
    rows = evaluate_strategies(
        backbone=backbone,
        strategies={"x": scheme},
        dataset=synthetic_test,
        episodes=episodes,
        cfg=CFG,
        runtime=Runtime(seed=0, progress=False),
        engine="sequential",
    ).rows
    accuracy = np.nan_to_num(rows["accuracy"].to_numpy(), nan=0.0)
    mean, ci95 = explorer.evaluate(scheme)
    assert mean == pytest.approx(accuracy.mean())
    assert ci95 == pytest.approx(1.96 * accuracy.std() / math.sqrt(len(accuracy)))
    assert 0 <= mean <= 1


def test_scores_are_cached_and_references_batched(
    explorer: W.SchemeExplorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real = scheme_explorer.evaluate_strategies

    def counting(**kwargs: object) -> object:
        calls.append([str(s) for s in kwargs["strategies"].values()])  # type: ignore[attr-defined]
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scheme_explorer, "evaluate_strategies", counting)
    explorer._scores.clear()
    table = explorer.reference_table()
    assert len(calls) == 1 and len(calls[0]) == 2  # both references in one call
    assert list(table.columns) == ["strategy", "scheme", "mean", "ci95"]
    assert list(table["strategy"]) == ["last-1", "linear probe"]
    assert table["mean"].between(0, 1).all() and (table["ci95"] >= 0).all()
    explorer.reference_table()
    renamed = Scheme(explorer.references["last-1"].lrs, name="another name")
    assert explorer.evaluate(renamed) == (table["mean"][0], table["ci95"][0])
    assert len(calls) == 1  # nothing fine-tuned again
    explorer.evaluate(Scheme((0.0, 0.0, 0.0, 0.1)))
    assert len(calls) == 2 and calls[1] == ["0 0 0 0.1 | head 0.01"]


def test_widget_controls_build_the_scheme_and_the_button_redraws(
    explorer: W.SchemeExplorer,
) -> None:
    box = explorer.widget()
    assert box.children and len(explorer.dropdowns) == 4
    assert [d.value for d in explorer.dropdowns] == [0.0, 0.0, 0.0, 0.01]  # first reference
    assert [v for _, v in explorer.dropdowns[0].options] == [0.0, 0.01, 0.1, 1.0]
    assert explorer.output is not None and len(explorer.output.outputs) == 1  # references
    explorer.dropdowns[1].value = 0.1
    explorer.dropdowns[3].value = 1.0
    assert explorer.head is not None
    explorer.head.value = 0.1
    scheme = explorer.current_scheme()
    assert scheme == Scheme((0.0, 0.1, 0.0, 1.0), head_lr=0.1)
    explorer.output.outputs = ()
    assert explorer.button is not None
    explorer.button.click()
    outputs = explorer.output.outputs
    assert len(outputs) == 1 and "image/png" in outputs[0]["data"]
    assert as_strategy(scheme) in explorer._scores and explorer._tried[-1] == as_strategy(scheme)
    assert explorer.status is not None and "%" in explorer.status.value
    assert not explorer.button.disabled


def test_adabn_and_channel_transform_toggles(explorer: W.SchemeExplorer) -> None:
    explorer.widget()
    assert explorer.bn_stats is not None and explorer.cit is not None
    for d in explorer.dropdowns:
        d.value = 0.0
    assert explorer.current_strategy() == as_strategy(explorer.current_scheme())  # both off
    explorer.bn_stats.value = "support"
    explorer.cit.value = True
    strategy = explorer.current_strategy()
    assert strategy.bn_stats == "support" and strategy.feature_transform == "channel-importance"
    assert explorer.button is not None and explorer.status is not None
    explorer.button.click()
    assert strategy in explorer._scores and "%" in explorer.status.value
    assert "cached" not in explorer.status.value
    explorer.button.click()  # unchanged: said to be the cached result
    assert "cached result, not fine-tuned again" in explorer.status.value
    explorer.dropdowns[3].value = 0.01  # a trained layer: the transform is refused, said so
    explorer.button.click()
    assert "not a valid strategy" in explorer.status.value
    assert "frozen features" in explorer.status.value and not explorer.button.disabled


def test_a_failed_click_says_why_in_the_output(explorer: W.SchemeExplorer) -> None:
    explorer.widget()
    assert explorer.head is not None and explorer.output is not None
    explorer.head.value = -1.0
    with pytest.raises(ValueError, match="head learning rate must be >= 0"):
        explorer._on_click()
    assert "head learning rate" in explorer.output.outputs[-1]["text"]
    assert explorer.button is not None and not explorer.button.disabled


def test_invalid_references_and_episodes_are_refused(
    backbone: Backbone, synthetic_test: FewShotDataset, episodes: Episodes
) -> None:
    def make(refs: dict, eps: Episodes = episodes) -> W.SchemeExplorer:
        return W.SchemeExplorer(
            backbone=backbone, dataset=synthetic_test, episodes=eps, cfg=CFG, references=refs
        )

    with pytest.raises(ValueError, match=r"reference 'short'.*3 learning rates.*4 layers"):
        make({"short": Scheme((0.0, 0.0, 0.01))})
    with pytest.raises(TypeError, match=r"reference 'text': expected a ptx_utils Strategy"):
        make({"text": "0 0 0 0.01"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one reference"):
        make({})
    with pytest.raises(ValueError, match="at least one episode"):
        make({"lp": linear_probe(4)}, episodes[:0])


def test_static_figure_has_a_bar_per_reference_and_extra(explorer: W.SchemeExplorer) -> None:
    extra = {"mine": Scheme((0.0, 0.0, 0.01, 0.01)), "BN": Scheme((0.01,) * 4, params="bn")}
    fig = explorer.static_figure(extra)
    try:
        assert f"n = {len(explorer.episodes)} episode(s)" in fig.axes[0].get_title()
        assert len(fig.axes[0].patches) == 4
        assert _bar_labels(fig) == [
            "last-1 (0 0 0 0.01)",
            "linear probe (0 0 0 0)",
            "mine (0 0 0.01 0.01)",
            "BN (0.01 0.01 0.01 0.01, bn only)",
        ]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"extra scheme 'bad': .*1 learning rates.*4 layers"):
        explorer.static_figure({"bad": Scheme((0.0,))})


def test_scheme_label_names_a_strategy_s_other_fields() -> None:
    scheme = Scheme((0.0, 0.0, 0.0, 0.01))
    assert W.scheme_label("last-1", scheme) == "last-1 (0 0 0 0.01)"
    assert W.scheme_label("last-1", Strategy(scheme)) == "last-1 (0 0 0 0.01)"
    cosine = Strategy(Scheme((0.0, 0.0, 0.0, 0.01), head_lr=0.1), classifier="cosine")
    assert W.scheme_label("", cosine) == "0 0 0 0.01, head 0.1, cosine"


# --- DomainShiftExplorer ------------------------------------------------------------------------

TARGETS = ["shift 0", "shift 0.5", "omniglot/test"]
LAYERS = [f"layer{i}" for i in range(4)]
STRATEGIES = ["searched", "linear probe", "full fine-tune"]


def shift_inputs() -> tuple[dict, pd.DataFrame, dict]:
    gen = torch.Generator().manual_seed(0)
    samples = {
        t: torch.randint(0, 256, (6, 1 if t.startswith("omniglot") else 3, 8, 8), generator=gen)
        .to(torch.uint8)
        .contiguous()
        for t in TARGETS
    }
    summary = pd.DataFrame(
        [
            {"target": t, "strategy": s, "mean": 0.3 + 0.1 * i + 0.05 * j, "ci95": 0.03, "n_way": 5}
            for i, t in enumerate(TARGETS)
            for j, s in enumerate(STRATEGIES)
        ]
    )
    schemes = {
        "shift 0": Scheme((0.0, 0.0, 0.0, 0.01)),
        "shift 0.5": Scheme((0.0, 0.0, 0.1, 0.01)),
        "omniglot/test": Scheme((0.01, 0.1, 1.0, 1.0)),
    }
    return samples, summary, schemes


def test_domain_shift_explorer_redraws_on_slide_and_has_a_static_figure() -> None:
    samples, summary, schemes = shift_inputs()
    explorer = W.DomainShiftExplorer(TARGETS, samples, summary, schemes, LAYERS)
    assert explorer.strategies == tuple(STRATEGIES)
    box = explorer.widget()
    assert box.children and explorer.slider is not None and explorer.output is not None
    first = explorer.output.outputs
    assert len(first) == 1 and "image/png" in first[0]["data"]
    explorer.output.outputs = ()
    explorer.slider.value = TARGETS[1]
    assert len(explorer.output.outputs) == 1
    assert explorer.output.outputs[0]["data"]["image/png"] != first[0]["data"]["image/png"]
    fig = explorer.static_figure()
    try:
        assert len(fig.axes) == 3 * len(TARGETS)
        accuracy_rows = fig.axes[2 * len(TARGETS) :]
        assert len({ax.get_ylim() for ax in accuracy_rows}) == 1  # shared accuracy scale
        assert all(len(ax.patches) == len(STRATEGIES) for ax in accuracy_rows)
        scheme_ax = fig.axes[len(TARGETS)]
        assert scheme_ax.get_yscale() == "symlog"
        ticks = [t.get_text() for t in scheme_ax.get_yticklabels()]
        assert ticks == ["frozen", "0.01", "0.1", "1"]
    finally:
        plt.close(fig)


def test_domain_shift_explorer_shows_where_spottune_routes() -> None:
    samples, summary, schemes = shift_inputs()
    routing = pd.DataFrame(
        [
            {"target": t, "strategy": name, "block": b, "mean": m, "std": 0.1}
            for t, m in zip(TARGETS, (0.2, 0.5, 0.9), strict=True)
            for name in ("SpotTune", "SpotTune global-2")
            for b in range(4)
        ]
    )
    explorer = W.DomainShiftExplorer(
        targets=TARGETS, samples=samples, summary=summary, schemes=schemes, layer_names=LAYERS,
        routing=routing[routing["target"] != TARGETS[2]],
    )  # fmt: skip
    fig = explorer.target_figure(TARGETS[0])
    try:
        assert len(fig.axes) == 4 and len(fig.axes[3].patches) == 8  # 2 strategies x 4 blocks
        assert [round(p.get_height(), 3) for p in fig.axes[3].patches[:4]] == [0.2] * 4
    finally:
        plt.close(fig)
    fig = explorer.target_figure(TARGETS[2])  # a target without SpotTune: said, not drawn
    try:
        assert "no SpotTune here" in [t.get_text() for t in fig.axes[3].texts]
    finally:
        plt.close(fig)
    fig = explorer.static_figure()
    try:
        assert len(fig.axes) == 4 * len(TARGETS)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="routing lacks column"):
        W.DomainShiftExplorer(
            TARGETS, samples, summary, schemes, LAYERS, routing.drop(columns="block")
        )


def test_domain_shift_explorer_names_what_is_missing() -> None:
    samples, summary, schemes = shift_inputs()
    del samples["shift 0.5"]
    with pytest.raises(ValueError, match=r"no samples for target\(s\) 'shift 0.5'"):
        W.DomainShiftExplorer(TARGETS, samples, summary, schemes, LAYERS)
    samples, summary, schemes = shift_inputs()
    del schemes["omniglot/test"]
    summary = summary[summary["target"] != "shift 0"]
    with pytest.raises(ValueError, match=r"scheme for target\(s\) 'omniglot/test'.*'shift 0'"):
        W.DomainShiftExplorer(TARGETS, samples, summary, schemes, LAYERS)
    samples, summary, schemes = shift_inputs()
    with pytest.raises(ValueError, match="lacks column"):
        W.DomainShiftExplorer(TARGETS, samples, summary.drop(columns="ci95"), schemes, LAYERS)
    with pytest.raises(ValueError, match="not percent"):
        W.DomainShiftExplorer(
            TARGETS, samples, summary.assign(mean=summary["mean"] * 100), schemes, LAYERS
        )
    with pytest.raises(ValueError, match=r"scheme for target 'shift 0': .*4 learning rates"):
        W.DomainShiftExplorer(TARGETS, samples, summary, schemes, LAYERS[:3])
    samples["shift 0"] = samples["shift 0"].float()
    with pytest.raises(ValueError, match=r"samples\['shift 0'\] must be a non-empty uint8"):
        W.DomainShiftExplorer(TARGETS, samples, summary, schemes, LAYERS)


# --- SearchHistoryBrowser -----------------------------------------------------------------------

TARGET = (0.0, 0.01, 0.1, 1.0)


def fake_fitness(schemes: Sequence[Scheme], desc: str = "") -> np.ndarray:
    """Share of layers whose rate equals TARGET's, on 2 identical episodes."""
    score = [float(np.mean(np.array(s.lrs) == np.array(TARGET))) for s in schemes]
    return np.array([[x, x] for x in score])


@pytest.fixture(scope="module")
def searches() -> dict[str, S.SearchResult]:
    return {
        method: S.evolve(
            fake_fitness,
            LAYERS,
            S.SearchConfig(method=method, population=5, generations=4, top_k=3, seed=0),
            progress=False,
        )
        for method in ("evolution", "random")
    }


def test_table_holds_the_top_schemes_up_to_a_generation(
    searches: dict[str, S.SearchResult],
) -> None:
    browser = W.SearchHistoryBrowser(searches, top=3)
    assert browser.generations == {"evolution": 4, "random": 4}
    first = browser.table("evolution", 1)
    assert list(first.columns) == ["rank", "scheme", "fitness", "generation", "origin"]
    assert len(first) == 3 and (first["generation"] == 0).all()
    assert list(first["rank"]) == [1, 2, 3]
    assert first["fitness"].is_monotonic_decreasing
    gen0 = [c for c in searches["evolution"].candidates if c.generation == 0]
    assert first["fitness"].iloc[0] == max(c.fitness for c in gen0)
    everything = W.SearchHistoryBrowser(searches, top=100).table("evolution", 4)
    assert len(everything) == len(searches["evolution"].candidates)
    assert everything["scheme"].iloc[0] == str(searches["evolution"].best.scheme)
    with pytest.raises(ValueError, match=r"generation must lie in 1\.\.4"):
        browser.table("evolution", 0)
    with pytest.raises(ValueError, match="unknown search 'grid'"):
        browser.table("grid", 1)


def test_browser_refuses_empty_inputs(searches: dict[str, S.SearchResult]) -> None:
    with pytest.raises(ValueError, match="at least one search"):
        W.SearchHistoryBrowser({})
    empty = S.SearchResult(S.SearchConfig(), tuple(LAYERS))
    with pytest.raises(ValueError, match="search 'new' has no evaluated candidate"):
        W.SearchHistoryBrowser({"new": empty})


def test_browser_widget_redraws_on_slide_and_label(searches: dict[str, S.SearchResult]) -> None:
    browser = W.SearchHistoryBrowser(searches, top=3)
    browser.widget()
    assert browser.slider is not None and browser.dropdown is not None
    assert browser.output is not None
    assert (browser.slider.min, browser.slider.max, browser.slider.value) == (1, 4, 4)
    browser.output.outputs = ()
    browser.slider.value = 2
    figure, table = browser.output.outputs
    assert "image/png" in figure["data"]
    assert table["data"]["text/plain"] == browser.table("evolution", 2).to_string(index=False)
    browser.output.outputs = ()
    browser.dropdown.value = "random"
    assert browser.output.outputs[1]["data"]["text/html"].startswith("<table")


def test_show_saves_the_static_figure_outside_ipython(
    searches: dict[str, S.SearchResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = W.SearchHistoryBrowser(searches, top=4)
    fig = browser.static_figure()
    assert len(fig.axes) == 2 * 3 + 1  # 2 searches x (first, middle, last) + a colour bar
    plt.close(fig)
    with pytest.raises(ValueError, match=r"values in 1\.\.4"):
        browser.static_figure([5])
    before = plt.get_fignums()
    paths = W.show(browser, figure_stem=tmp_path / "x")
    assert [p.name for p in paths] == ["x.pdf", "x.png"]
    assert paths[0].read_bytes().startswith(b"%PDF") and paths[1].read_bytes()[:4] == b"\x89PNG"
    assert plt.get_fignums() == before  # closed
    assert browser.output is None  # no widget built outside a kernel
    assert W.show(browser) == []
    assert capsys.readouterr().out == ""


def test_show_in_a_live_kernel_displays_the_widget_and_the_figure(
    searches: dict[str, S.SearchResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    import IPython.display

    shown: list[object] = []
    monkeypatch.setattr(render, "_ipython", lambda: SimpleNamespace(kernel=object()))
    monkeypatch.setattr(IPython.display, "display", shown.append)
    browser = W.SearchHistoryBrowser(searches, top=2)
    assert W.show(browser) == []
    assert [type(x).__name__ for x in shown] == ["VBox", "Figure"]
    assert not plt.fignum_exists(shown[1].number)  # type: ignore[attr-defined]
    shown.clear()
    W.show(browser, interactive=False)
    assert [type(x).__name__ for x in shown] == ["Figure"]
