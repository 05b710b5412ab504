"""mini-ImageNet (Vinyals et al. 2016) in the Ravi & Larochelle split: 64 / 16 / 20 classes.

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ptx_utils.data.base import (
    IMAGE_EXTENSIONS,
    FewShotDataset,
    decode_image,
    list_images,
    packaged_split_file,
)
from ptx_utils.data.cache import cached_dataset, files_fingerprint
from ptx_utils.data.errors import DataError
from ptx_utils.data.folder import decode_files
from ptx_utils.data.registry import DatasetSpec, missing_data_error, register_dataset

LOADER_VERSION = 1
SPLITS = ("train", "val", "test")
IMAGES_PER_CLASS = 600
FOLDER_NAMES = ("mini-imagenet", "miniImageNet", "mini_imagenet", "miniimagenet")

LAYOUT = """\
  <root>/mini-imagenet/{train,val,test}.zip or {split}_part_a.zip, _part_b.zip, ...
      (entries <split>/<wnid>/<name>.jpg), or
  <root>/mini-imagenet/images/<wnid>XXXXXXXX.jpg + {train,val,test}.csv (Ravi's form), or
  <root>/mini-imagenet/{train,val,test}/<wnid>/*.jpg"""
ORIGIN = (
    "mini-ImageNet: build it from ImageNet with the Ravi & Larochelle CSVs "
    "(github.com/twitter/meta-learning-lstm) or use a packed copy; 600 84x84 images per class."
)


def split_classes(split: str) -> list[str]:
    """The split's WordNet ids (sorted), from the packaged Ravi class lists."""
    return json.loads(packaged_split_file(f"mini-imagenet-ravi/{split}.json").read_text())


def _find_folder(root: Path) -> Path:
    for name in FOLDER_NAMES:
        if (root / name).is_dir():
            return root / name
    raise missing_data_error(SPEC, root, "no mini-imagenet/ folder")


def _zip_parts(folder: Path, split: str) -> list[Path]:
    whole = folder / f"{split}.zip"
    return [whole] if whole.is_file() else sorted(folder.glob(f"{split}_part_*.zip"))


def _warn_missing_parts(parts: list[Path], split: str) -> None:
    letters = [p.stem.rsplit("_", 1)[-1] for p in parts]
    if len(letters) and all(len(x) == 1 and x.isalpha() for x in letters):
        # a lone part "a" still means a set split in parts: at least part b is absent
        last = max(*letters, "b")
        expected = [chr(c) for c in range(ord("a"), ord(last) + 1)]
        absent = [x for x in expected if x not in letters]
        if absent:
            warnings.warn(
                f"mini-imagenet/{split}: zip part(s) {', '.join(absent)} missing; "
                "loading the parts present (fewer images per class)",
                stacklevel=4,
            )


def _items_from_zips(parts: list[Path], classes: set[str]) -> list[tuple[str, str, Path, str]]:
    """(wnid, file name, zip path, entry name) of every image entry of the split's classes."""
    items = []
    for part in parts:
        try:
            with zipfile.ZipFile(part) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot open {part}: {exc}; re-copy the zip") from exc
        for entry in names:
            p = Path(entry)
            if (
                p.suffix.lower() in IMAGE_EXTENSIONS
                and p.parent.name in classes
                and not p.name.startswith(".")  # e.g. macOS __MACOSX/.../._x.jpg
            ):
                items.append((p.parent.name, p.name, part, entry))
    return items


def _decode_zip_items(
    items: list[tuple[str, str, Path, str]], image_size: int, desc: str
) -> np.ndarray:
    out = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    handles = {part: zipfile.ZipFile(part) for part in dict.fromkeys(p for _, _, p, _ in items)}
    try:
        for i, (_, _, part, entry) in enumerate(tqdm(items, desc=desc, leave=False)):
            try:
                data = handles[part].read(entry)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError(
                    f"cannot read {entry} from {part}: {exc}; the zip is damaged, re-copy it"
                ) from exc
            out[i] = decode_image(data, image_size, 3, what=f"{part}:{entry}")
    finally:
        for z in handles.values():
            z.close()
    return out


def _items_from_files(folder: Path, split: str, classes: set[str]) -> list[tuple[str, Path]]:
    """(wnid, path) of every image of the split in Ravi's or the per-split-folder form."""
    images_dir = folder / "images"
    if images_dir.is_dir():
        csv_path = folder / f"{split}.csv"
        if csv_path.is_file():
            with open(csv_path, newline="") as f:
                rows = [(r["label"], images_dir / r["filename"]) for r in csv.DictReader(f)]
            foreign = sorted({wnid for wnid, _ in rows} - classes)
            if foreign:
                raise DataError(
                    f"{csv_path} lists classes outside the Ravi {split} split "
                    f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                    f"use the original Ravi {split}.csv"
                )
            absent = [str(p) for _, p in rows if not p.is_file()]
            if absent:
                raise DataError(
                    f"{csv_path} lists {len(absent)} images missing from "
                    f"{images_dir}, e.g. {absent[0]}"
                )
            return rows
        pattern = re.compile(r"^(n\d{8})")
        return [
            (m.group(1), p)
            for p in list_images(images_dir)
            if (m := pattern.match(p.name)) and m.group(1) in classes
        ]
    split_dir = folder / split
    if split_dir.is_dir():
        return [
            (d.name, p)
            for d in sorted(split_dir.iterdir())
            if d.is_dir() and d.name in classes
            for p in list_images(d)
        ]
    raise missing_data_error(SPEC, folder.parent, f"no images for split {split!r}")


def load_mini_imagenet(
    split: str, root: Path, image_size: int, cache: bool | str | Path = True
) -> FewShotDataset:
    """Load one split: images (N, 3, image_size, image_size) uint8, classes = sorted wnids."""
    folder = _find_folder(root)
    classes = split_classes(split)
    wanted = set(classes)
    parts = _zip_parts(folder, split)
    if parts:
        _warn_missing_parts(parts, split)
        zip_items = sorted(_items_from_zips(parts, wanted))
        found = [wnid for wnid, *_ in zip_items]
        sources: list[Path] = parts
        fingerprint_files = parts
    else:
        file_items = sorted(_items_from_files(folder, split, wanted))
        found = [wnid for wnid, _ in file_items]
        sources = [p for _, p in file_items]
        csv_path = folder / f"{split}.csv"
        fingerprint_files = [*sources, csv_path] if csv_path.is_file() else sources
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"mini-imagenet/{split}: expected the {len(classes)} classes of the Ravi split, "
            f"{len(missing)} have no images (e.g. {', '.join(missing[:3])}) in {folder}"
        )
    counts = np.unique(np.array(found), return_counts=True)[1]
    if counts.min() < IMAGES_PER_CLASS:
        per_class = f"{counts.min()}" + (f"-{counts.max()}" if counts.max() > counts.min() else "")
        warnings.warn(
            f"mini-imagenet/{split}: {per_class} images per class instead of "
            f"{IMAGES_PER_CLASS} (some files or zip parts are absent); loading what is there",
            stacklevel=3,
        )
    key = {
        "dataset": "mini-imagenet",
        "split": split,
        "image_size": image_size,
        "version": LOADER_VERSION,
        "source": files_fingerprint(fingerprint_files),
    }

    def build() -> FewShotDataset:
        desc = f"decode mini-imagenet/{split}"
        if parts:
            pixels = _decode_zip_items(zip_items, image_size, desc)
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        else:
            images = decode_files(sources, image_size, 3, desc)
        index = {wnid: c for c, wnid in enumerate(classes)}
        labels = torch.tensor([index[w] for w in found], dtype=torch.int64)
        return FewShotDataset(
            images, labels, classes, "mini-imagenet", split, str(folder.resolve())
        )

    return cached_dataset(key, build, cache)


SPEC = register_dataset(
    DatasetSpec(
        name="mini-imagenet",
        loader=load_mini_imagenet,
        splits=SPLITS,
        default_image_size=84,
        layout=LAYOUT,
        origin=ORIGIN,
        description="mini-ImageNet, 100 ImageNet classes, Ravi split 64/16/20, 84x84 RGB",
    )
)
