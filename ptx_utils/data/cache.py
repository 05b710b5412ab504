"""Decoded-image cache: each (dataset, split, size, source files) decoded once, then memory-mapped.

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptx_utils.core.io import atomic_save, atomic_write_json
from ptx_utils.data.base import FewShotDataset

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$PTX_CACHE_DIR`` when set, else ``~/.cache/ptx-kit``."""
    env = os.environ.get("PTX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ptx-kit"


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of (resolved path, size, mtime) of each file: changes when the data on disk changes."""
    h = hashlib.sha256()
    for p in sorted(Path(p).resolve() for p in paths):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stem(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "-".join(str(key[k]) for k in ("dataset", "split", "image_size"))
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in safe)
    return f"{safe}px-{digest}"


def cached_dataset(
    key: dict[str, Any],
    build: Callable[[], FewShotDataset],
    cache: bool | str | Path = True,
) -> FewShotDataset:
    """Return the dataset for ``key`` from the cache, building and storing it on a miss.

    Args:
        key: JSON-serialisable identity; must contain ``dataset``, ``split`` and ``image_size``.
        build: decodes the dataset (called only on a miss).
        cache: True for the default directory, a path for another one, False to bypass the cache.
    """
    if cache is False:
        return build()
    folder = default_cache_dir() if cache is True else Path(cache)
    key = {**key, "cache_format": CACHE_FORMAT}
    stem = _stem(key)
    npy, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    if npy.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            images = np.load(npy, mmap_mode="c")
            if info.get("key") == key and images.shape[0] == len(info["labels"]):
                return FewShotDataset(
                    torch.from_numpy(images),
                    torch.tensor(info["labels"], dtype=torch.int64),
                    list(info["class_names"]),
                    info["name"],
                    info["split"],
                    info["source"],
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged entry is rebuilt below
    dataset = build()
    folder.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(dataset.images.numpy())
    atomic_save(npy, lambda f: np.save(f, images))
    atomic_write_json(
        meta,
        {
            "key": key,
            "labels": dataset.labels.tolist(),
            "class_names": dataset.class_names,
            "name": dataset.name,
            "split": dataset.split,
            "source": dataset.source,
        },
    )
    return dataset
