"""The one-call GPU suite's tiny mode runs on a CPU, so the script cannot rot between GPU loans."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_gpu_suite_runs_every_section(repo_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "gpu_suite", repo_root / "benchmarks/gpu_suite.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "suite.json"
    module.main(["--tiny", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["skipped"] == []
    assert record["checks"]["batched_vs_sequential_fp32_ok"] is True
    assert record["checks"]["auto_chunk_equals_fixed"] is True
    assert record["search"]["full"]["candidates"] == 4
    assert record["search"]["raced"]["replicas"] <= record["search"]["full"]["replicas"]
    assert set(record["pretrain"]["images_per_s"]) == {"fp32", "bf16"}
