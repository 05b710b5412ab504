"""Dataset ``"folder"``: any folder of class sub-folders, one class per sub-folder.

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ptx_utils.data.base import FewShotDataset, decode_image, list_images
from ptx_utils.data.cache import cached_dataset, files_fingerprint
from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import DatasetSpec, missing_data_error, register_dataset

LOADER_VERSION = 1
NAME = "folder"
ALL_SPLIT = "all"
DECODE_THREADS = min(8, os.cpu_count() or 1)

LAYOUT = """\
<root>/                      (the folder passed as root)
    <class name>/            one sub-folder per class
        <image>.jpg|.png|... the images of that class
    ...
optional split file (split_file=...), JSON: {"train": [class names], "val": [...], "test": [...]}
without a split file the only split is "all\""""

ORIGIN = (
    "Any images you have: put each class's images in a sub-folder named after the class. "
    "Splits are 'all' (no split file) or the split names your split file defines."
)


# ---------------------------------------------------------------------------------------------
# shared helpers (also used by the cub loader)
# ---------------------------------------------------------------------------------------------


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (one per class), sorted by name; hidden folders are skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_images(class_dir: Path) -> list[Path]:
    """The image files of one class folder, sorted; a folder without images raises DataError."""
    images = list_images(class_dir)
    if not images:
        nested = any(p.is_dir() for p in class_dir.iterdir())
        hint = (
            "; it holds sub-folders: is root one level too high? Pass the folder whose "
            "sub-folders are the classes"
            if nested
            else ""
        )
        raise DataError(
            f"class folder {class_dir} holds no image files (expected .jpg/.png/... files "
            f"directly inside it); add images or remove the folder{hint}"
        )
    return images


def gather_files(class_dirs: Sequence[Path]) -> tuple[list[Path], np.ndarray]:
    """Image files of the given class folders and their labels (index into ``class_dirs``).

    Returns:
        files: every image path, class by class, each class sorted by file name.
        labels: int64 array of shape (len(files),).
    """
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = class_images(class_dir)
        files.extend(images)
        labels.extend([label] * len(images))
    return files, np.asarray(labels, dtype=np.int64)


def decode_files(files: Sequence[Path], image_size: int, channels: int, desc: str) -> torch.Tensor:
    """Decode image files into uint8 (N, C, S, S), S = image_size, in the order given.

    Pillow releases the GIL while decoding and resizing, so a few threads decode at once; each
    writes its image straight into the output. A file that cannot be decoded raises
    :class:`DataError` naming it.
    """
    out = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)

    def decode(index: int) -> None:
        out[index] = decode_image(files[index], image_size, channels).transpose(2, 0, 1)

    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)
    try:
        for _ in tqdm(
            pool.map(decode, range(len(files))), total=len(files), desc=desc, leave=False
        ):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(out)


def load_class_folders(
    class_dirs: Sequence[Path],
    classes: list[str],
    split: str,
    *,
    name: str,
    image_size: int,
    channels: int,
    version: int,
    cache: bool | str | Path,
    extra_files: Sequence[Path] = (),
) -> FewShotDataset:
    """Decode the images of ``class_dirs`` (class ``c`` named ``classes[c]``), through the cache.

    ``extra_files`` (e.g. a split file) join the source fingerprint of the cache key.

    Returns:
        images uint8 (N, channels, image_size, image_size), labels int64 (N,).
    """
    files, labels = gather_files(class_dirs)
    key = {
        "dataset": name,
        "split": split,
        "image_size": image_size,
        "version": version,
        "channels": channels,
        "classes": list(classes),
        "source": files_fingerprint([*files, *extra_files]),
    }
    source = str(Path(class_dirs[0]).parent.resolve())

    def build() -> FewShotDataset:
        images = decode_files(files, image_size, channels, desc=f"decode {name}/{split}")
        return FewShotDataset(images, torch.from_numpy(labels), list(classes), name, split, source)

    return cached_dataset(key, build, cache)


def reject_options(name: str, options: dict[str, Any], allowed: Sequence[str] = ()) -> None:
    """Raise DataError for options a loader does not know, naming the ones it does."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise DataError(
            f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; its options: {known}"
        )


# ---------------------------------------------------------------------------------------------
# the "folder" dataset
# ---------------------------------------------------------------------------------------------


def _find_split_file(split_file: str | Path, root: Path) -> Path:
    """The split file as given, else relative to ``root``; DataError when neither exists."""
    path = Path(split_file).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (root / path).is_file():
        return root / path
    raise DataError(
        f"split file {split_file} does not exist (looked at {path.resolve()} and under {root}); "
        'pass the path of a JSON file like {"train": [class names], "val": [...], "test": [...]}'
    )


def read_split_file(path: Path) -> dict[str, list[str]]:
    """Parse a split file: a JSON object mapping split names to lists of class names."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}; it must be a JSON file") from exc
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"split file {path} must hold a non-empty JSON object like "
            f'{{"train": [class names], "val": [...], "test": [...]}}, got {type(data).__name__}'
        )
    splits: dict[str, list[str]] = {}
    for split, classes in data.items():
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(
                f"split file {path}: split {split!r} must be a list of class-folder names"
            )
        if len(set(classes)) != len(classes):
            dupes = sorted({c for c in classes if classes.count(c) > 1})
            raise DataError(
                f"split file {path}: split {split!r} lists class(es) {', '.join(dupes)} twice"
            )
        splits[split] = list(classes)
    return splits


def check_split_classes(splits: dict[str, list[str]], available: Sequence[str], path: Path) -> None:
    """Every listed class must be a class folder, and no class may be in two splits."""
    existing = set(available)
    owner: dict[str, str] = {}
    for split, classes in splits.items():
        for cls in classes:
            if cls not in existing:
                raise DataError(
                    f"split file {path}: class {cls!r} of split {split!r} has no folder in the "
                    f"dataset folder; fix the name or add the folder <root>/{cls}/"
                )
            if cls in owner:
                raise DataError(
                    f"split file {path}: class {cls!r} is in both split {owner[cls]!r} and "
                    f"split {split!r}; splits must not share classes"
                )
            owner[cls] = split


def _split_classes(split: str, available: list[str], split_path: Path | None) -> list[str]:
    """Class names of ``split``: all folders for ``"all"`` without a split file, else the file's."""
    if split_path is None:
        if split != ALL_SPLIT:
            raise DataError(
                f"dataset 'folder' has only the split 'all' without a split file, got {split!r}; "
                'pass split_file=... (JSON {"train": [...], "val": [...], "test": [...]})'
            )
        return available
    splits = read_split_file(split_path)
    check_split_classes(splits, available, split_path)
    if split not in splits:
        raise DataError(
            f"split file {split_path} defines no split {split!r}; it defines: {', '.join(splits)}"
        )
    if not splits[split]:
        raise DataError(f"split file {split_path}: split {split!r} lists no classes")
    return splits[split]


def folder_splits(
    root: Path | None, split_file: str | Path | None = None, **_: Any
) -> tuple[str, ...]:
    """The folder's splits: ``("all",)`` without a split file, else the file's split names."""
    if split_file is None or root is None:
        return (ALL_SPLIT,)
    return tuple(read_split_file(_find_split_file(split_file, root)))


def load_folder(
    split: str,
    root: Path,
    image_size: int,
    cache: bool | str | Path,
    split_file: str | Path | None = None,
    channels: int = 3,
    **options: Any,
) -> FewShotDataset:
    """Load one split of a class-per-sub-folder image folder.

    Args:
        split: ``"all"`` without a split file, else one of the split file's split names.
        root: the folder holding the class sub-folders.
        image_size: side of the square output images (shorter-side resize, centre crop).
        cache: decoded-image cache (see :func:`cached_dataset`).
        split_file: optional JSON file mapping split names to class-folder names.
        channels: 3 for RGB, 1 for grayscale.

    Returns:
        images uint8 (N, channels, image_size, image_size); labels int64 (N,); class names are the
        folder names, sorted (``"all"``) or in split-file order.
    """
    reject_options(NAME, options, ("split_file", "channels"))
    if channels not in (1, 3):
        raise DataError(f"dataset 'folder': channels must be 1 or 3, got {channels!r}")
    folders = class_folders(root)
    if not folders:
        raise missing_data_error(SPEC, root, "no class sub-folders found")
    split_path = None if split_file is None else _find_split_file(split_file, root)
    classes = _split_classes(split, [f.name for f in folders], split_path)
    return load_class_folders(
        [root / c for c in classes],
        classes,
        split,
        name=NAME,
        image_size=image_size,
        channels=channels,
        version=LOADER_VERSION,
        cache=cache,
        extra_files=[split_path] if split_path is not None else [],
    )


SPEC = register_dataset(
    DatasetSpec(
        name=NAME,
        loader=load_folder,
        splits=(ALL_SPLIT,),
        list_splits=folder_splits,
        default_image_size=84,
        layout=LAYOUT,
        origin=ORIGIN,
        description="any folder of class sub-folders; optional JSON split file",
    )
)
