"""Run directories: a new, empty folder per run, and its ``params.json``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance


def new_run_dir(base: str | Path, name: str) -> Path:
    """Create and return a new, empty run directory ``base/name``.

    An existing directory is never reused: ``name-2``, ``name-3``, ... are tried instead.
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = base / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a new run directory under {base} for {name!r}")


def write_params(run_dir: str | Path, params: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``params.json`` (parameters + provenance) into ``run_dir`` atomically."""
    seed = params.get("seed")
    payload = {"params": dict(params), "provenance": provenance(seed=seed, **extra)}
    return atomic_write_json(Path(run_dir) / "params.json", payload)
