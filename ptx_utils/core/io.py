"""Run directories, provenance and atomic writes.

Nothing the kit writes is ever half-written or overwritten: files are written to a temporary name in
the same folder and renamed into place, and every run gets a directory of its own.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

PROVENANCE_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "papermill", "ptx-kit")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save(path: str | Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Let ``writer`` write binary content to a file object that lands at ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        writer(f)
    return Path(path)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the project (with ``-dirty`` if modified), or None outside git."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None when a package is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the architecture, e.g. ``x86_64``.

    Two CPUs of one architecture may still give different floating-point results (different
    kernels), so results name the model.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return f"{value.strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str | None = None) -> str:
    """A human-readable name of the compute device (GPU name, or the CPU and its core count)."""
    import torch

    if (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_model()}, {os.cpu_count()} cores"


def provenance(seed: int | None = None, device: str | None = None, **extra: Any) -> dict[str, Any]:
    """What every written result carries: commit, versions, device, seed, date, plus ``extra``."""
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "device": device_description(device),
        "seed": seed,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


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
