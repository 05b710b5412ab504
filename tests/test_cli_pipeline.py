"""The ``ptx`` command: data check/list, and ``ptx run`` through papermill into a run directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest
from conftest import DATA_ROOT, requires_data_root

from ptx_utils.cli import main, parse_assignment
from ptx_utils.pipeline import PipelineError, run_pipeline


def _rows(out: str) -> dict[str, list[str]]:
    """``ptx data check`` table rows: split -> [classes, images, per class, size, channels]."""
    return {
        parts[0]: parts[1:]
        for line in out.splitlines()
        if len(parts := line.split()) == 6 and parts[1].isdigit()
    }


def test_data_check_synthetic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "synthetic"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {s: r[0] for s, r in rows.items()} == {"train": "64", "val": "16", "test": "20"}
    assert all(r[2] == "100" and r[3] == "32x32" and r[4] == "3" for r in rows.values())


def test_data_check_unknown_name_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "imagenet-1k"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet-1k'" in err and "mini-imagenet, omniglot" in err


def test_data_check_missing_root_names_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", "mini-imagenet", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "mini-imagenet/{train,val,test}.zip" in out and "FAILED" in out
    assert main(["data", "check", "omniglot", "--root", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_data_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "omniglot", "mini-imagenet", "cub", "cifar-fs", "fc100", "folder"):
        assert name in out


@requires_data_root
@pytest.mark.realdata
def test_data_check_real_omniglot_and_mini_imagenet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "omniglot", "--root", str(DATA_ROOT)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["background"][0] == "964" and rows["evaluation"][0] == "659"
    assert main(["data", "check", "mini-imagenet", "--root", str(DATA_ROOT)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert [rows[s][0] for s in ("train", "val", "test")] == ["64", "16", "20"]
    assert "300 images per class instead of 600" in out


def test_parse_assignment() -> None:
    assert parse_assignment("n_way=20") == ("n_way", 20)
    assert parse_assignment("k_shots=[1, 5]") == ("k_shots", [1, 5])
    assert parse_assignment("dataset=omniglot") == ("dataset", "omniglot")
    assert parse_assignment("data_root=null") == ("data_root", None)


def test_smoke_run_writes_notebooks_params_and_figures(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--run-dir", str(run_dir)]) == 0
    params = json.loads((run_dir / "params.json").read_text())
    assert params["params"]["preset"] == "smoke" and params["params"]["dataset"] == "synthetic"
    assert params["provenance"]["versions"]["papermill"]
    executed = sorted(run_dir.glob("*.ipynb"))
    assert [p.stem for p in executed] == ["01_pretrain"]
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert outputs and not [o for o in outputs if o.output_type == "error"]
    for stem in ("synthetic_shift_grid", "01_base_classes", "01_episode", "01_pretrain_curves"):
        for ext in ("pdf", "png"):
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    for name in ("best.pt", "last.pt", "curves.csv", "nearest_centroid_test.csv"):
        assert (run_dir / "pretrain" / name).is_file(), name
    with open(run_dir / "pretrain" / "nearest_centroid_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k_shot"]) for r in rows] == [1, 5]
    assert all(0.2 < float(r["mean"]) <= 1 and int(r["n"]) == 20 for r in rows)
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    assert summary["datasets"]["base"]["classes"] == 64
    assert {r["k_shot"] for r in summary["episodes"]} == {1, 5}
    # the same run directory again is refused, and nothing in it changes
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert main(["run", "--preset", "smoke", "--run-dir", str(run_dir)]) == 1
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"unknown parameter.*n_wya"):
        run_pipeline("smoke", {"n_wya": 3}, run_dir=tmp_path / "r")


def test_failing_notebook_stops_and_keeps_partial_output(tmp_path: Path) -> None:
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("run_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("print('before')"),
        nbformat.v4.new_code_cell("raise ValueError('boom in cell three')"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, nb_dir / "01_pretrain.ipynb")
    nbformat.write(nb, nb_dir / "02_search.ipynb")
    with pytest.raises(PipelineError, match=r"01_pretrain.ipynb failed.*ValueError: boom"):
        run_pipeline("smoke", run_dir=tmp_path / "run", notebook_dir=nb_dir)
    partial = nbformat.read(tmp_path / "run" / "01_pretrain.ipynb", as_version=4)
    assert any(o.get("text") == "before\n" for c in partial.cells for o in c.get("outputs", []))
    assert not (tmp_path / "run" / "02_search.ipynb").exists()
