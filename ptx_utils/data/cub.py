"""Dataset ``"cub"``: CUB-200-2011 birds, split as in Chen et al. 2019 ("A Closer Look at Few-shot
Classification").

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ptx_utils.data.base import FewShotDataset, packaged_split_file
from ptx_utils.data.errors import DataError
from ptx_utils.data.folder import class_folders, load_class_folders, reject_options
from ptx_utils.data.registry import DatasetSpec, missing_data_error, register_dataset

LOADER_VERSION = 1
NAME = "cub"
SPLITS = ("train", "val", "test")
NUM_CLASSES = 200
CANDIDATES = (Path("CUB_200_2011") / "images", Path("cub") / "CUB_200_2011" / "images")

LAYOUT = """\
<root>/CUB_200_2011/images/            (or <root>/cub/CUB_200_2011/images/)
    001.Black_footed_Albatross/*.jpg
    002.Laysan_Albatross/*.jpg
    ...
    200.Common_Yellowthroat/*.jpg      200 class folders, 11,788 JPEGs"""

ORIGIN = (
    "CUB-200-2011 comes from the Caltech-UCSD Birds-200-2011 page (Caltech Vision Lab, "
    "'CUB_200_2011.tgz'; also mirrored on CaltechDATA). Extract the archive under the data root."
)


def split_of_index(index: int) -> str:
    """Split of the ``index``-th sorted class folder (Chen et al. 2019): train/val/test."""
    if index % 2 == 0:
        return "train"
    return "val" if index % 4 == 1 else "test"


def split_classes(class_names: list[str], split: str) -> list[str]:
    """The class names (sorted) that the rule puts in ``split``."""
    ordered = sorted(class_names)
    return [c for i, c in enumerate(ordered) if split_of_index(i) == split]


def packaged_classes(split: str) -> list[str]:
    """The class folder names of ``split`` in the packaged ``cub-closerlook/<split>.json``."""
    return list(json.loads(packaged_split_file(f"cub-closerlook/{split}.json").read_text()))


def find_images_dir(root: Path) -> Path:
    """``<root>/CUB_200_2011/images`` or ``<root>/cub/CUB_200_2011/images``; else DataError."""
    for candidate in CANDIDATES:
        if (root / candidate).is_dir():
            return root / candidate
    raise missing_data_error(SPEC, root, "no CUB_200_2011/images folder")


def check_against_packaged(classes: list[str], split: str, images_dir: Path) -> None:
    """With all 200 folders, the rule's ``split`` must equal the packaged list (else DataError)."""
    expected = packaged_classes(split)
    if classes == expected:
        return
    extra = sorted(set(classes) - set(expected))
    missing = sorted(set(expected) - set(classes))
    raise DataError(
        f"cub: the 200 class folders in {images_dir} do not give the standard {split!r} split "
        f"(Chen et al. 2019). Unexpected folders: {', '.join(extra[:5]) or 'none'}; missing "
        f"folders: {', '.join(missing[:5]) or 'none'}. Keep the folder names of the official "
        "CUB_200_2011.tgz (e.g. 001.Black_footed_Albatross)."
    )


def select_classes(all_classes: list[str], split: str, images_dir: Path) -> list[str]:
    """Classes of ``split``: checked against the packaged lists for 200 folders, else warned."""
    classes = split_classes(all_classes, split)
    if len(all_classes) == NUM_CLASSES:
        check_against_packaged(classes, split, images_dir)
    else:
        warnings.warn(
            f"cub: {images_dir} holds {len(all_classes)} class folders, not {NUM_CLASSES}; "
            "applying the Chen et al. 2019 rule to the sorted folders, so the splits are not "
            "the standard ones and results are not comparable with published numbers",
            UserWarning,
            stacklevel=2,
        )
    if not classes:
        raise DataError(
            f"cub: split {split!r} gets no classes from the {len(all_classes)} class folder(s) "
            f"in {images_dir}; it needs at least 4 class folders"
        )
    return classes


def load_cub(
    split: str, root: Path, image_size: int, cache: bool | str | Path, **options: Any
) -> FewShotDataset:
    """Load one split of CUB-200-2011 (Chen et al. 2019 split).

    Returns:
        images uint8 (N, 3, image_size, image_size); labels int64 (N,) indexing ``class_names``,
        the split's class folder names in sorted order (e.g. ``"001.Black_footed_Albatross"``).
    """
    reject_options(NAME, options)
    images_dir = find_images_dir(root)
    folders = class_folders(images_dir)
    if not folders:
        raise missing_data_error(SPEC, root, f"no class folders in {images_dir}")
    classes = select_classes([f.name for f in folders], split, images_dir)
    return load_class_folders(
        [images_dir / c for c in classes],
        classes,
        split,
        name=NAME,
        image_size=image_size,
        channels=3,
        version=LOADER_VERSION,
        cache=cache,
    )


SPEC = register_dataset(
    DatasetSpec(
        name=NAME,
        loader=load_cub,
        splits=SPLITS,
        default_image_size=84,
        layout=LAYOUT,
        origin=ORIGIN,
        description="CUB-200-2011 birds, Chen et al. 2019 split (100/50/50 classes)",
    )
)
