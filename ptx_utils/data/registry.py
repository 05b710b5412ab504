"""One registry of datasets, built by name: ``load_dataset("omniglot", "background", root=...)``.

Each loader module registers a :class:`DatasetSpec` with :func:`register_dataset`. The spec carries
what a user needs when something is wrong: the on-disk layout the loader expects and where the data
comes from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptx_utils.data.base import FewShotDataset, check_split_name
from ptx_utils.data.errors import DataError

#: ``loader(split, root, image_size, cache, **options) -> FewShotDataset``; root = the data root.
Loader = Callable[..., FewShotDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset by name.

    Attributes:
        name: registry name.
        loader: the function that loads one split.
        splits: the split names the loader accepts, in display order.
        default_image_size: side length used when ``image_size`` is not given.
        needs_root: whether the data lives under a data root (False for generated data).
        layout: the on-disk layout expected under the data root (shown in error messages).
        origin: where a user gets the files (shown in error messages).
        description: one line for listings.
        list_splits: for datasets whose splits depend on the files (e.g. a split file):
            ``list_splits(root, **options) -> tuple of split names``; else ``splits`` applies.
    """

    name: str
    loader: Loader
    splits: tuple[str, ...]
    default_image_size: int
    needs_root: bool = True
    layout: str = ""
    origin: str = ""
    description: str = ""
    list_splits: Callable[..., tuple[str, ...]] | None = None

    def available_splits(self, root: Path | None, **options: Any) -> tuple[str, ...]:
        """The splits this dataset offers for ``root`` and ``options``."""
        return self.list_splits(root, **options) if self.list_splits else self.splits


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None


def resolve_root(root: str | Path | None, spec: DatasetSpec) -> Path:
    """The data root: ``root`` if given, else ``$PTX_DATA_ROOT``; it must exist."""
    if root is None:
        env = os.environ.get("PTX_DATA_ROOT")
        if not env:
            raise DataError(
                f"dataset {spec.name!r} needs a data root: pass root=... (--root DIR) or set "
                f"PTX_DATA_ROOT. Expected layout under it:\n{spec.layout}\n{spec.origin}"
            )
        root = env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data root {path} does not exist. Expected layout under it for {spec.name!r}:\n"
            f"{spec.layout}\n{spec.origin}"
        )
    return path


def missing_data_error(spec: DatasetSpec, root: Path, what: str) -> DataError:
    """A :class:`DataError` for files missing under ``root``, naming the expected layout."""
    return DataError(
        f"{spec.name}: {what} under data root {root}. Expected layout:\n{spec.layout}\n"
        f"{spec.origin}"
    )


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    cache: bool | str | Path = True,
    **options: Any,
) -> FewShotDataset:
    """Load one split of a registered dataset, decoded, from local files only.

    Args:
        name: registry name (see :func:`list_datasets`).
        split: one of the dataset's splits (``get_dataset_spec(name).splits``).
        root: data root holding the dataset folders; defaults to ``$PTX_DATA_ROOT``.
        image_size: side length of the square images; defaults to the dataset's native size.
        cache: decoded-image cache: True (default directory), a directory, or False.
        **options: dataset-specific options (e.g. ``shift`` for ``synthetic``).

    Returns:
        The split as a :class:`FewShotDataset` with images (N, C, image_size, image_size) uint8.
    """
    spec = get_dataset_spec(name)
    size = spec.default_image_size if image_size is None else int(image_size)
    if size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {size}")
    data_root = resolve_root(root, spec) if spec.needs_root else None
    check_split_name(name, split, spec.available_splits(data_root, **options))
    return spec.loader(split=split, root=data_root, image_size=size, cache=cache, **options)
