"""benchmarks/reproduce.py writes one complete JSON per (shot, strategy) row, refuses to replace
rows, and benchmarks/reproduction_table.py renders every row it finds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_rows_written_refused_again_and_rendered(tmp_path: Path) -> None:
    reproduce, table = _module("reproduce"), _module("reproduction_table")
    argv = [
        "--dataset", "synthetic", "--image-size", "16", "--backbone", "conv4",
        "--pretrain", '{"epochs": 1, "epoch_images": 320, "batch_size": 32, "val_episodes": 4}',
        "--shots", "1", "--n-query", "3",
        "--search", '{"population": 2, "generations": 2, "top_k": 1}',
        "--val-episodes", "2", "--passes", "2", "--test-episodes", "3",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "rows"),
    ]  # fmt: skip
    written = reproduce.main(argv)
    assert len(written) == 5
    rows = [json.loads(p.read_text()) for p in written]
    assert all(list(r) == sorted(reproduce.ROW_FIELDS) for r in rows)  # every field, nothing else
    assert [r["strategy"] for r in rows] == list(table.STRATEGY_ORDER)
    searched = rows[0]
    assert searched["scheme"] == searched["searched_scheme"] == rows[1]["searched_scheme"]
    assert searched["search_candidates"] == 4 and searched["n_episodes"] == 3
    assert all(0 <= r["mean"] <= 1 and r["ci95"] >= 0 for r in rows)
    assert len({r["episodes_digest"] for r in rows}) == 1  # identical test episodes
    assert searched["command"].startswith("python benchmarks/reproduce.py --dataset synthetic")
    assert searched["commit"] and searched["device"].startswith("cpu")
    started = searched["provenance"]
    assert started["git_commit"] == searched["commit"] and started["date"] <= started["finished"]
    assert len(searched["pretrain"]["sha256"]) == 64

    before = {p: p.read_bytes() for p in written}
    with pytest.raises(SystemExit, match="already exist"):
        reproduce.main(argv)
    assert {p: p.read_bytes() for p in written} == before

    text = table.main(["--dir", str(tmp_path / "rows")])
    assert text.count("| synthetic conv4 baseline++ 5-way 1-shot |") == 5
    assert f"{100 * searched['mean']:.2f} ± {100 * searched['ci95']:.2f}" in text
    assert "[1] `python benchmarks/reproduce.py --dataset synthetic" in text
    assert "| 1 ep (best 1), " in text  # the pre-training, on the setting's first line


def test_paper_numbers_sit_beside_their_protocol() -> None:
    table = _module("reproduction_table")
    row = {"dataset": "mini-imagenet", "backbone": "resnet12", "method": "baseline++"}
    assert table._paper({**row, "k_shot": 5, "strategy": "searched"}) == "80.38 (P-Transfer)"
    conv6 = {**row, "backbone": "conv6", "k_shot": 1, "strategy": "linear probe"}
    assert table._paper(conv6) == "48.29 (CloserLook; P-Transfer 52.52)"
    assert table._paper({**row, "dataset": "omniglot", "k_shot": 1, "strategy": "searched"}) == "—"


def test_shift_is_refused_outside_the_synthetic_dial(tmp_path: Path) -> None:
    reproduce = _module("reproduce")
    argv = ["--dataset", "omniglot", "--shift", "0.5", "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="synthetic dataset's dial"):
        reproduce.main(argv)
    assert not any(tmp_path.iterdir())  # nothing run, nothing written


@pytest.mark.slow
def test_cross_domain_target_is_converted_searched_apart_and_labelled(tmp_path: Path) -> None:
    reproduce = _module("reproduce")
    argv = [
        "--dataset", "synthetic", "--image-size", "16", "--backbone", "conv4",
        "--pretrain", '{"epochs": 1, "epoch_images": 160, "batch_size": 32, "val_episodes": 2}',
        "--target", "synthetic:val:test",  # loaded at its own size, resized to 16 px
        "--shots", "1", "--n-query", "2",
        "--search", '{"population": 2, "generations": 1, "top_k": 1}',
        "--val-episodes", "2", "--passes", "1", "--test-episodes", "2",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "rows"),
    ]  # fmt: skip
    written = reproduce.main(argv)
    name = "synthetic-to-synthetic_conv4_baseline++_5way_1shot_searched.json"
    assert written[0].name == name and len(written) == 5
    row = json.loads(written[0].read_text())
    assert row["dataset"] == "synthetic-to-synthetic"
    assert row["protocol"]["target"] == {
        "dataset": "synthetic",
        "val_split": "val",
        "test_split": "test",
    }
    assert row["protocol"]["image_size"] == 16
    assert (tmp_path / "work" / "to-synthetic").is_dir()  # its own search folder
    assert (tmp_path / "work" / "pretrain").is_dir()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "omniglot:test"], "expected 'name' or 'name:val_split:test_split'"),
        (["--target", "omniglot", "--shift", "0.5"], "not both"),
    ],
)
def test_bad_target_is_refused_before_anything_runs(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    reproduce = _module("reproduce")
    argv = ["--dataset", "synthetic", "--work-dir", str(tmp_path), *extra]
    with pytest.raises(SystemExit, match=message):
        reproduce.main(argv)
    assert not any(tmp_path.iterdir())


def test_committed_results_load_and_the_table_re_renders_identically() -> None:
    """Every committed benchmark JSON parses, and the reproduction rows render into exactly the
    table docs/reproduction.md holds between its markers."""
    results = BENCHMARKS / "results"
    files = sorted(results.rglob("*.json"))
    assert files, "no committed benchmark results found"
    for path in files:
        json.loads(path.read_text())
    table = _module("reproduction_table")
    text = table.render(table.load_rows(results / "reproduction"))
    page = (BENCHMARKS.parent / "docs" / "reproduction.md").read_text()
    between = page.split(table.BEGIN, 1)[1].split("\n", 1)[1].split(table.END, 1)[0]
    assert between.strip("\n") == text.strip("\n")
