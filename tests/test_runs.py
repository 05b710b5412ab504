"""Atomic writes and run directories: nothing half-written, nothing overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptx_utils.core.io import atomic_open, atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.run_dir import new_run_dir, write_params


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_new_run_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "demo")
    (first / "keep.txt").write_text("results")
    second = new_run_dir(tmp_path, "demo")
    third = new_run_dir(tmp_path, "demo")
    assert [first.name, second.name, third.name] == ["demo", "demo-2", "demo-3"]
    assert (first / "keep.txt").read_text() == "results"


def test_params_carry_provenance(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"seed": 7, "dataset": "synthetic"})
    payload = json.loads(path.read_text())
    assert payload["params"] == {"seed": 7, "dataset": "synthetic"}
    prov = payload["provenance"]
    assert prov["seed"] == 7
    assert prov["versions"]["torch"] and prov["device"] and prov["date"]
    assert set(provenance()) >= {"git_commit", "versions", "python", "device", "seed", "date"}
