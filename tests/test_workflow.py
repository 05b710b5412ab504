"""The notebooks' steps: inputs checked with messages naming the notebook, strategies and paired
differences, cross-domain conversion, the domain-shift step end to end on a tiny backbone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_dataset

from ptx_utils.data.convert import convert_images, match_format
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.evaluation import ROW_COLUMNS, Evaluation, paired_table
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.models import create_backbone
from ptx_utils.models.checkpoint import save_checkpoint
from ptx_utils.search import SearchResult
from ptx_utils.steps import common, domain_shift, searching, transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_require_names_the_notebook_that_writes_the_file(tmp_path: Path) -> None:
    with pytest.raises(common.RunInputError, match=r"best\.pt is missing: notebook 01_pretrain"):
        common.load_pretrained(tmp_path, "conv4")
    with pytest.raises(common.RunInputError, match=r"02_search.*same run_dir"):
        searching.load_search(tmp_path, 5, 1, "evolution")
    (tmp_path / "x.csv").write_text("a\n")
    assert common.require(tmp_path, "x.csv", "03_transfer") == tmp_path / "x.csv"


def test_load_pretrained_refuses_another_backbone(tmp_path: Path) -> None:
    net = create_backbone("conv4", in_channels=3, image_size=16)
    save_checkpoint(
        tmp_path / "pretrain" / "best.pt",
        {"backbone": net.state_dict(), "meta": {"backbone": net.config()}},
    )
    model, meta = common.load_pretrained(tmp_path, "conv4", "cpu")
    assert meta["backbone"]["image_size"] == 16 and not model.training
    with pytest.raises(ValueError, match="conv6 was asked for"):
        common.load_pretrained(tmp_path, "conv6", "cpu")


def test_finetune_config_follows_the_pretraining_head() -> None:
    assert common.finetune_config({"passes": 5}, "baseline++").head == "cosine"
    assert common.finetune_config({}, "baseline").head == "linear"
    assert common.finetune_config({"head": "linear"}, "protonet").head == "linear"
    with pytest.raises(ValueError, match=r"finetune parameters.*pases"):
        common.finetune_config({"pases": 5}, "baseline")


def test_transfer_strategies_share_the_searched_head_rate() -> None:
    named = transfer.transfer_strategies(Scheme((0, 0, 0.01, 1.0), head_lr=0.1))
    assert list(named) == ["searched", "linear probe", "full fine-tune", "last-1", "BN-affine"]
    assert all(s.head_lr == 0.1 for s in named.values())
    assert named["last-1"].lrs == (0, 0, 0, 0.01) and named["BN-affine"].scheme.params == "bn"
    assert [s.n_trainable_layers for s in named.values()] == [2, 0, 4, 1, 4]


def _rows(acc: dict[str, list[float]], k_shot: int = 1) -> pd.DataFrame:
    records = [
        {
            "strategy": name,
            "scheme": name,
            "episode": e,
            "n_way": 5,
            "k_shot": k_shot,
            "n_query": 15,
            "accuracy": a,
            "diverged": False,
            "seed": e,
        }
        for name, values in acc.items()
        for e, a in enumerate(values)
    ]
    return pd.DataFrame(records, columns=list(ROW_COLUMNS))


def test_searched_differences_are_searched_minus_each_other() -> None:
    rows = _rows({"searched": [0.9, 0.8, 0.7], "linear probe": [0.5, 0.8, 0.9], "full": [0.1] * 3})
    diff = transfer.searched_differences(rows)
    assert list(diff["reference"]) == ["linear probe", "full"]
    assert (diff["strategy"] == "searched").all()
    lp = diff.iloc[0]
    assert lp["mean_diff"] == pytest.approx((0.4 + 0.0 - 0.2) / 3)
    assert (lp["wins"], lp["losses"], lp["ties"]) == (1, 1, 1)
    # the same numbers as the harness's paired table with the roles swapped
    swapped = paired_table(rows, "searched").set_index("strategy").loc["linear probe"]
    assert lp["mean_diff"] == pytest.approx(-swapped["mean_diff"])
    with pytest.raises(ValueError, match="need the strategy 'searched'"):
        transfer.searched_differences(rows[rows["strategy"] != "searched"])


def test_write_transfer_writes_both_tables_and_never_overwrites(tmp_path: Path) -> None:
    rows = _rows({"searched": [0.9, 0.8], "linear probe": [0.5, 0.6]})
    paths = transfer.write_transfer(tmp_path, Evaluation(rows))
    assert {p.name for p in paths.values()} >= {
        "transfer_summary.csv",
        "transfer_paired.csv",
        "transfer_vs_searched.csv",
        "transfer_summary.tex",
        "transfer_episodes.csv",
    }
    vs = pd.read_csv(tmp_path / "results" / "transfer_vs_searched.csv")
    assert vs["mean_diff"].iloc[0] == pytest.approx(0.3)
    before = (tmp_path / "results" / "transfer_vs_searched.csv").read_text()
    with pytest.raises(FileExistsError, match="new run directory"):
        transfer.write_transfer(
            tmp_path, Evaluation(_rows({"searched": [0.1, 0.1], "linear probe": [1, 1]}))
        )
    assert (tmp_path / "results" / "transfer_vs_searched.csv").read_text() == before
    again = transfer.write_transfer(tmp_path, Evaluation(rows))  # identical: kept, no error
    assert again["vs_searched"].read_text() == before


def test_convert_images_channels_and_size() -> None:
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    rgb = convert_images(gray, 3, 8)
    assert rgb.shape == (2, 3, 8, 8) and (rgb == gray).all()
    back = convert_images(rgb, 1, 8)
    assert torch.equal(back, gray)  # luminance of equal channels is the channel
    small = convert_images(torch.full((1, 3, 16, 16), 200, dtype=torch.uint8), 1, 4)
    assert small.shape == (1, 1, 4, 4) and (small == 200).all()
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        convert_images(gray, 2, 8)


def test_match_format_keeps_labels_and_episodes() -> None:
    ds = make_dataset([3, 4, 5], size=8)
    assert match_format(ds, 1, 8) is ds
    out = match_format(ds, 3, 12)
    assert out.images.shape == (12, 3, 12, 12) and torch.equal(out.labels, ds.labels)
    assert out.fingerprint() == ds.fingerprint() and "3ch 12px" in out.source


def test_parse_cross_domain() -> None:
    assert domain_shift.parse_cross_domain("omniglot") == ("omniglot", "val", "test")
    assert domain_shift.parse_cross_domain("omniglot:evaluation-val:test") == (
        "omniglot",
        "evaluation-val",
        "test",
    )
    with pytest.raises(ValueError, match="name:val_split:test_split"):
        domain_shift.parse_cross_domain("omniglot:test")


def test_shift_targets_on_the_synthetic_dial() -> None:
    targets = domain_shift.shift_targets(
        "synthetic", [1.0, 0.0], ["synthetic:val:test"], "val", "test", channels=1, image_size=16
    )
    assert [t.label for t in targets] == ["shift 0", "shift 1", "synthetic/test"]
    assert [t.order for t in targets] == [0, 1, 2]
    assert targets[1].shift == 1.0 and math.isnan(targets[2].shift)
    for t in targets:
        assert t.test.images.shape[1:] == (1, 16, 16) and t.val.num_classes == 16
    # the same classes and drawings at every level, in another appearance
    assert targets[0].test.fingerprint() == targets[1].test.fingerprint()
    assert not torch.equal(targets[0].test.images, targets[1].test.images)
    assert targets[0].samples(2, 3).shape == (6, 1, 16, 16)
    assert targets[2].slug == "synthetic_test"
    with pytest.raises(ValueError, match="shift_levels is empty"):
        domain_shift.shift_targets("synthetic", [], [], "val", "test", 3, 16)


@pytest.mark.slow
def test_run_domain_shift_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_backbone("conv4", in_channels=3, image_size=16).eval()
    targets = domain_shift.shift_targets("synthetic", [0.0, 1.0], [], "val", "test", 3, 16)
    cfg = FinetuneConfig(head="cosine", passes=1)
    settings = {"population": 2, "generations": 1, "top_k": 1}
    result = domain_shift.run_domain_shift(
        net,
        targets,
        val=EpisodeSetting(3, 1, 2, 2),
        test=EpisodeSetting(3, 1, 2, 3),
        settings=settings,
        cfg=cfg,
        run_dir=tmp_path,
    )
    assert list(result.summary.columns) == list(domain_shift.SHIFT_SUMMARY_COLUMNS)
    assert len(result.summary) == 2 * 5 and (result.summary["n"] == 3).all()
    assert result.summary["mean"].between(0, 1).all()
    assert len(result.schemes) == 2 * 4 and list(result.schemes["layer"][:4]) == net.layer_names()
    assert set(result.searched()) == {"shift 0", "shift 1"}
    searched = result.summary[result.summary["strategy"] == "searched"]
    for label, scheme in result.searched().items():
        assert searched.set_index("target").loc[label, "scheme"] == str(scheme)
        assert SearchResult.load(tmp_path / "shift" / label.replace(" ", "_")).best.scheme == scheme
    assert set(result.rows["target"]) == {"shift 0", "shift 1"}
    assert len(result.rows) == 2 * 5 * 3
    written = pd.read_csv(tmp_path / "results" / "domain_shift_summary.csv")
    assert np.allclose(written["mean"], result.summary["mean"])
    tex = (tmp_path / "results" / "domain_shift_summary.tex").read_text()
    assert "shift 0 & shift 1" in tex and "\\toprule" in tex
    before = {p: p.read_text() for p in (tmp_path / "results").iterdir()}
    again = domain_shift.run_domain_shift(  # identical settings: loads, keeps every file
        net, targets, val=EpisodeSetting(3, 1, 2, 2), test=EpisodeSetting(3, 1, 2, 3),
        settings=settings, cfg=cfg, run_dir=tmp_path,
    )  # fmt: skip
    pd.testing.assert_frame_equal(again.summary, result.summary)
    assert {p: p.read_text() for p in (tmp_path / "results").iterdir()} == before
    with pytest.raises(FileExistsError, match="n_test_episodes"):  # other settings: refused
        domain_shift.run_domain_shift(
            net, targets, val=EpisodeSetting(3, 1, 2, 2), test=EpisodeSetting(3, 1, 2, 4),
            settings=settings, cfg=cfg, run_dir=tmp_path,
        )  # fmt: skip
    assert {p: p.read_text() for p in (tmp_path / "results").iterdir()} == before


@pytest.mark.slow
def test_run_domain_shift_reports_where_spottune_routes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_backbone("conv4", in_channels=3, image_size=16).eval()
    targets = domain_shift.shift_targets("synthetic", [1.0], [], "val", "test", 3, 16)
    result = domain_shift.run_domain_shift(
        net, targets, val=EpisodeSetting(3, 1, 2, 2), test=EpisodeSetting(3, 1, 2, 3),
        settings={"population": 2, "generations": 1, "top_k": 1},
        cfg=FinetuneConfig(head="cosine", passes=1), run_dir=tmp_path, strategy_set="all",
        routing_episodes=2,
    )  # fmt: skip
    assert result.routing is not None
    spot = [s for s in dict.fromkeys(result.summary["strategy"]) if s.startswith("SpotTune")]
    assert list(dict.fromkeys(result.routing["strategy"])) == spot and len(spot) == 4
    assert len(result.routing) == 4 * 4 and (result.routing["n"] == 2).all()
    written = pd.read_csv(tmp_path / "results" / "domain_shift_routing.csv")
    assert list(written.columns[:4]) == ["target", "order", "shift", "strategy"]
    assert np.allclose(written["mean"], result.routing["mean"])
