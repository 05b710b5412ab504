"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, 20 drawers each.

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ptx_utils.data.base import FewShotDataset, decode_image, packaged_split_file, resize_uint8
from ptx_utils.data.cache import cached_dataset, files_fingerprint
from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import DatasetSpec, missing_data_error, register_dataset

LOADER_VERSION = 1
NATIVE_SIZE = 105
SETS = ("background", "evaluation")
VINYALS_SPLITS = ("train", "val", "test", "trainval")
#: Derived: evaluation characters that are not in Vinyals' test split.
HELD_OUT_SPLITS = ("evaluation-val",)
FOLDER_NAMES = ("omniglot", "omniglot-py")

LAYOUT = """\
  <root>/omniglot/images_background.npz and images_evaluation.npz   (npz form), or
  <root>/omniglot/images_background/<Alphabet>/characterNN/XXXX_YY.png
  <root>/omniglot/images_evaluation/<Alphabet>/characterNN/XXXX_YY.png   (original PNG form)"""
ORIGIN = (
    "Omniglot comes from github.com/brendenlake/omniglot (python/images_background.zip and "
    "images_evaluation.zip, unzipped); the npz form from github.com/bitsandscraps/omniglot."
)


@lru_cache(maxsize=1)
def character_table() -> tuple[tuple[str, str, int], ...]:
    """(character name ``Alphabet/characterNN``, set, npz row) for all 1623 characters, by id."""
    with open(packaged_split_file("omniglot_id_to_character.csv"), newline="") as f:
        return tuple(
            (f"{r['alphabet']}/{r['character']}", r["set"], int(r["npz_row"]))
            for r in csv.DictReader(f)
        )


def split_characters(split: str) -> list[str]:
    """Character names of a split, in the split's canonical order."""
    if split in SETS:
        return [name for name, s, _ in character_table() if s == split]
    if split == "evaluation-val":
        test = set(split_characters("test"))
        return [name for name in split_characters("evaluation") if name not in test]
    lines = packaged_split_file(f"omniglot-vinyals/{split}.txt").read_text().split()
    return [line.strip() for line in lines if line.strip()]


def _find_folder(root: Path) -> Path:
    for name in FOLDER_NAMES:
        if (root / name).is_dir():
            return root / name
    raise missing_data_error(SPEC, root, "no omniglot/ folder")


def _load_npz_set(folder: Path, set_name: str, rows: list[int]) -> np.ndarray:
    """Rows of one npz set as uint8 (len(rows), 20, 105, 105), 255 = paper."""
    path = folder / f"images_{set_name}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}. Expected an npz with a bool 'images' "
            "array (n_characters, 20, 105, 105); re-download it."
        ) from exc
    n_rows = sum(1 for _, s, _ in character_table() if s == set_name)
    if images.dtype != np.bool_ or images.shape != (n_rows, 20, NATIVE_SIZE, NATIVE_SIZE):
        raise DataError(
            f"{path}: 'images' is {images.dtype} {images.shape}, expected bool "
            f"({n_rows}, 20, 105, 105) (one row per {set_name} character); re-download it."
        )
    return images[rows].astype(np.uint8) * 255


def _load_png_character(folder: Path) -> np.ndarray:
    """The 20 drawings of one character folder as uint8 (20, 105, 105)."""
    files = sorted(folder.glob("*.png"))
    if len(files) != 20:
        raise DataError(
            f"Omniglot character folder {folder} has {len(files)} PNG files, expected 20 "
            "(XXXX_01.png ... XXXX_20.png); re-extract the archive."
        )
    return np.stack([decode_image(p, NATIVE_SIZE, 1)[..., 0] for p in files])


def _decode(folder: Path, characters: list[str], split: str) -> np.ndarray:
    """All drawings of ``characters`` as uint8 (n, 20, 105, 105), 255 = paper."""
    table = {name: (s, row) for name, s, row in character_table()}
    unknown = [c for c in characters if c not in table]
    if unknown:
        raise DataError(f"unknown Omniglot characters in split {split}: {unknown[:5]}")
    npz_files = [folder / f"images_{s}.npz" for s in SETS]
    if all(p.is_file() for p in npz_files):
        out = np.empty((len(characters), 20, NATIVE_SIZE, NATIVE_SIZE), dtype=np.uint8)
        for set_name in SETS:
            pos = [i for i, c in enumerate(characters) if table[c][0] == set_name]
            if pos:
                out[pos] = _load_npz_set(folder, set_name, [table[characters[i]][1] for i in pos])
        return out
    char_dirs = [folder / f"images_{table[c][0]}" / c for c in characters]
    missing = [str(d) for d in char_dirs if not d.is_dir()]
    if len(missing) == len(char_dirs):
        raise missing_data_error(SPEC, folder.parent, "neither the npz files nor the PNG folders")
    if missing:
        raise DataError(
            f"Omniglot split {split!r} needs {len(char_dirs)} character folders; {len(missing)} "
            f"are missing, e.g. {missing[0]}. Unzip both images_background.zip and "
            "images_evaluation.zip into the omniglot/ folder."
        )
    progress = tqdm(char_dirs, desc=f"decode omniglot/{split}", leave=False)
    return np.stack([_load_png_character(d) for d in progress])


def load_omniglot(
    split: str,
    root: Path,
    image_size: int,
    cache: bool | str | Path = True,
    rotations: bool = False,
) -> FewShotDataset:
    """Load one Omniglot split: images (n_classes * 20, 1, image_size, image_size) uint8."""
    folder = _find_folder(root)
    characters = split_characters(split)
    npz_files = [folder / f"images_{s}.npz" for s in SETS]
    use_npz = all(p.is_file() for p in npz_files)
    sources = npz_files if use_npz else sorted(folder.glob("images_*/*/*/*.png"))
    key = {
        "dataset": "omniglot",
        "split": split,
        "image_size": image_size,
        "version": LOADER_VERSION,
        "rotations": rotations,
        "source": files_fingerprint(sources),
    }

    def build() -> FewShotDataset:
        raw = _decode(folder, characters, split)  # (n, 20, 105, 105)
        images = resize_uint8(
            torch.from_numpy(raw).reshape(-1, 1, NATIVE_SIZE, NATIVE_SIZE), image_size
        ).reshape(len(characters), 20, 1, image_size, image_size)
        names = list(characters)
        if rotations:
            rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, 2, 3)]
            images = torch.cat([images, *rotated])
            names = [f"{c}/rot000" for c in characters] + [
                f"{c}/rot{90 * k:03d}" for k in (1, 2, 3) for c in characters
            ]
        labels = torch.arange(len(names)).repeat_interleave(20)
        return FewShotDataset(
            images.reshape(-1, 1, image_size, image_size).contiguous(),
            labels,
            names,
            "omniglot",
            split,
            str(folder.resolve()),
        )

    return cached_dataset(key, build, cache)


SPEC = register_dataset(
    DatasetSpec(
        name="omniglot",
        loader=load_omniglot,
        splits=SETS + VINYALS_SPLITS + HELD_OUT_SPLITS,
        default_image_size=28,
        layout=LAYOUT,
        origin=ORIGIN,
        description="Omniglot, 1623 characters x 20 drawers (Lake and Vinyals splits), grayscale",
    )
)
