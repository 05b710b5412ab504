"""Tests of the ``cub``, ``cifar-fs``/``fc100`` and ``folder`` loaders.

No real data is needed: each test writes a tiny copy of the on-disk format users download into
``tmp_path`` (CUB-200-2011 class folders of JPEGs, CIFAR-100's Python 2 pickles, a folder of class
sub-folders of PNGs) and loads it through :func:`ptx_utils.data.registry.load_dataset`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import ptx_utils.data.cifar as cifar_module
import ptx_utils.data.cub  # noqa: F401  (registers "cub")
import ptx_utils.data.folder as folder_module
from ptx_utils.data.base import packaged_split_file
from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import get_dataset_spec, list_datasets, load_dataset

SPLITS = ("train", "val", "test")


def packaged(relative: str) -> Any:
    return json.loads(packaged_split_file(relative).read_text())


# ---------------------------------------------------------------------------------------------
# CUB-200-2011 fixtures
# ---------------------------------------------------------------------------------------------


def cub_colour(class_name: str) -> tuple[int, int, int]:
    """A solid colour per class, derived from its number (NNN.)."""
    n = int(class_name[:3])
    return (n * 37) % 256, (n * 91) % 256, (n * 53) % 256


def make_cub(images_dir: Path, class_names: list[str], per_class: int = 2) -> None:
    """Write ``per_class`` tiny solid-colour JPEGs (12x10) into each class folder."""
    for name in class_names:
        folder = images_dir / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            image = Image.new("RGB", (12, 10), cub_colour(name))
            image.save(folder / f"{name.split('.', 1)[1]}_{k:04d}_{k}.jpg", quality=95)


def all_cub_classes() -> list[str]:
    return sorted(c for split in SPLITS for c in packaged(f"cub-closerlook/{split}.json"))


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cub")
    make_cub(root / "CUB_200_2011" / "images", all_cub_classes())
    return root


# ---------------------------------------------------------------------------------------------
# CUB tests
# ---------------------------------------------------------------------------------------------


def test_registered_with_layout_and_origin() -> None:
    for name in ("cub", "cifar-fs", "fc100", "folder"):
        assert name in list_datasets()
        spec = get_dataset_spec(name)
        assert spec.layout and spec.origin
    assert get_dataset_spec("cub").default_image_size == 84
    assert get_dataset_spec("cifar-fs").default_image_size == 32
    assert get_dataset_spec("folder").splits == ("all",)


def test_packaged_cub_lists_cover_200_classes() -> None:
    names = all_cub_classes()
    assert len(names) == len(set(names)) == 200


@pytest.mark.parametrize(("split", "count"), [("train", 100), ("val", 50), ("test", 50)])
def test_cub_splits_match_closerlook(cub_root: Path, split: str, count: int) -> None:
    ds = load_dataset("cub", split, root=cub_root, cache=False)
    assert ds.name == "cub" and ds.split == split
    assert ds.class_names == packaged(f"cub-closerlook/{split}.json")
    assert ds.num_classes == count
    assert tuple(ds.images.shape) == (2 * count, 3, 84, 84)
    assert ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [2] * count
    # every image has the colour of the class its label names (labels are consistent)
    means = ds.images.float().mean(dim=(2, 3))
    expected = torch.tensor([cub_colour(ds.class_names[int(y)]) for y in ds.labels]).float()
    assert torch.all((means - expected).abs() <= 4), (means - expected).abs().max()


def test_cub_splits_are_disjoint_and_cover_all(cub_root: Path) -> None:
    seen = [
        set(load_dataset("cub", s, root=cub_root, image_size=8, cache=False).class_names)
        for s in SPLITS
    ]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert set().union(*seen) == set(all_cub_classes())


def test_cub_cache_hit_returns_identical_tensors(
    cub_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_dataset("cub", "val", root=cub_root, image_size=16, cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded again although the cache holds the split")

    monkeypatch.setattr(folder_module, "decode_files", fail)
    second = load_dataset("cub", "val", root=cub_root, image_size=16, cache=cache)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert first.class_names == second.class_names
    assert first.fingerprint() == second.fingerprint()


def test_cub_subset_in_cub_folder_applies_rule_and_warns(tmp_path: Path) -> None:
    names = all_cub_classes()[:8]
    make_cub(tmp_path / "cub" / "CUB_200_2011" / "images", names, per_class=1)
    with pytest.warns(UserWarning, match="8 class folders"):
        train = load_dataset("cub", "train", root=tmp_path, image_size=8, cache=False)
    with pytest.warns(UserWarning):
        val = load_dataset("cub", "val", root=tmp_path, image_size=8, cache=False)
    with pytest.warns(UserWarning):
        test = load_dataset("cub", "test", root=tmp_path, image_size=8, cache=False)
    assert train.class_names == [names[i] for i in (0, 2, 4, 6)]
    assert val.class_names == [names[1], names[5]]
    assert test.class_names == [names[3], names[7]]


def test_cub_corrupt_jpeg_names_the_file(tmp_path: Path) -> None:
    images = tmp_path / "CUB_200_2011" / "images"
    names = all_cub_classes()[:4]
    make_cub(images, names)
    bad = images / names[0] / "broken_0001.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"broken_0001\.jpg"):
        load_dataset("cub", "train", root=tmp_path, cache=False)


def test_cub_empty_class_folder_is_named(tmp_path: Path) -> None:
    images = tmp_path / "CUB_200_2011" / "images"
    names = all_cub_classes()[:4]
    make_cub(images, names[1:])
    (images / names[0]).mkdir()
    with pytest.warns(UserWarning), pytest.raises(DataError, match=re.escape(names[0])):
        load_dataset("cub", "train", root=tmp_path, cache=False)


def test_cub_200_renamed_folders_are_rejected(tmp_path: Path) -> None:
    images = tmp_path / "CUB_200_2011" / "images"
    names = all_cub_classes()
    names[2] = "003.Renamed_Albatross"
    for name in names:
        (images / name).mkdir(parents=True)
    with pytest.raises(DataError, match=r"003\.Renamed_Albatross"):
        load_dataset("cub", "train", root=tmp_path, cache=False)


def test_cub_missing_folder_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CUB_200_2011/images") as info:
        load_dataset("cub", "train", root=tmp_path, cache=False)
    assert "Caltech-UCSD Birds" in str(info.value)


def test_cub_rejects_unknown_option(cub_root: Path) -> None:
    with pytest.raises(DataError, match="channels"):
        load_dataset("cub", "train", root=cub_root, cache=False, channels=1)


# ---------------------------------------------------------------------------------------------
# CIFAR-100 fixtures: Python 2 pickles, as in cifar-100-python.tar.gz
# ---------------------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes text and bytes as Python 2 ``str`` (BINSTRING), like the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: Any, numpy_core: str = "numpy.core") -> bytes:
    """Protocol-2 pickle with Python 2 strings; arrays reference ``<numpy_core>.multiarray``."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(
        b"cnumpy._core.multiarray\n", f"c{numpy_core}.multiarray\n".encode()
    )


class Cifar:
    """Names and images of the fixture: 3 images per fine class (2 in train, 1 in test)."""

    def __init__(self) -> None:
        pairs = [tuple(p) for split in SPLITS for p in packaged(f"cifar-fs/{split}.json")]
        self.fine_names = sorted(c for _, c in pairs)
        self.coarse_names = sorted(s for split in SPLITS for s in packaged(f"fc100/{split}.json"))
        self.superclass = {c: s for s, c in pairs}
        rng = np.random.default_rng(0)
        self.batches: dict[str, dict[str, np.ndarray]] = {}
        for name, per_class in (("train", 2), ("test", 1)):
            fine = np.repeat(np.arange(100), per_class)
            rng.shuffle(fine)  # CIFAR's files are not grouped by class
            coarse = np.array(
                [self.coarse_names.index(self.superclass[self.fine_names[f]]) for f in fine]
            )
            data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
            self.batches[name] = {"data": data, "fine": fine, "coarse": coarse}

    def expected_images(self, class_name: str) -> np.ndarray:
        """The class's images as (n, 3, 32, 32), train first, in file order."""
        f = self.fine_names.index(class_name)
        rows = [b["data"][b["fine"] == f] for b in (self.batches["train"], self.batches["test"])]
        return np.concatenate(rows).reshape(-1, 3, 32, 32)

    def write(self, folder: Path, numpy_core: str = "numpy.core") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, batch in self.batches.items():
            obj = {
                b"filenames": [f"img_{i}.png".encode() for i in range(len(batch["fine"]))],
                b"batch_label": f"{name} batch".encode(),
                b"fine_labels": [int(x) for x in batch["fine"]],
                b"coarse_labels": [int(x) for x in batch["coarse"]],
                b"data": batch["data"],
            }
            (folder / name).write_bytes(py2_pickle(obj, numpy_core))
        meta = {
            b"fine_label_names": [n.encode() for n in self.fine_names],
            b"coarse_label_names": [n.encode() for n in self.coarse_names],
        }
        (folder / "meta").write_bytes(py2_pickle(meta, numpy_core))


@pytest.fixture(scope="module")
def cifar() -> Cifar:
    return Cifar()


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory, cifar: Cifar) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    cifar.write(root / "cifar-100-python")
    return root


# ---------------------------------------------------------------------------------------------
# CIFAR tests
# ---------------------------------------------------------------------------------------------


def test_fixture_names_are_cifar100(cifar: Cifar) -> None:
    assert len(cifar.fine_names) == 100 and len(cifar.coarse_names) == 20
    assert set(cifar.superclass.values()) == set(cifar.coarse_names)
    assert b"numpy.core.multiarray" in py2_pickle(np.zeros(2, np.uint8))


@pytest.mark.parametrize(("split", "count"), [("train", 64), ("val", 16), ("test", 20)])
def test_cifar_fs_splits(cifar_root: Path, split: str, count: int) -> None:
    ds = load_dataset("cifar-fs", split, root=cifar_root, cache=False)
    assert ds.num_classes == count
    assert ds.class_names == sorted(c for _, c in packaged(f"cifar-fs/{split}.json"))
    assert tuple(ds.images.shape) == (3 * count, 3, 32, 32)
    assert ds.class_counts().tolist() == [3] * count


@pytest.mark.parametrize(("split", "count"), [("train", 60), ("val", 20), ("test", 20)])
def test_fc100_splits(cifar_root: Path, cifar: Cifar, split: str, count: int) -> None:
    ds = load_dataset("fc100", split, root=cifar_root, cache=False)
    superclasses = packaged(f"fc100/{split}.json")
    assert ds.num_classes == count
    assert {cifar.superclass[c] for c in ds.class_names} == set(superclasses)
    assert ds.class_names == sorted(
        c for c in cifar.fine_names if cifar.superclass[c] in superclasses
    )
    assert ds.class_counts().tolist() == [3] * count


def test_fc100_splits_are_disjoint(cifar_root: Path) -> None:
    names = [
        set(load_dataset("fc100", s, root=cifar_root, cache=False).class_names) for s in SPLITS
    ]
    assert sum(len(n) for n in names) == len(set().union(*names)) == 100


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
def test_cifar_pixels_round_trip(cifar_root: Path, cifar: Cifar, name: str) -> None:
    ds = load_dataset(name, "val", root=cifar_root, image_size=32, cache=False)
    for c, class_name in enumerate(ds.class_names):
        got = ds.images[ds.labels == c].numpy()
        np.testing.assert_array_equal(got, cifar.expected_images(class_name))


def test_cifar_accepts_numpy2_pickles_and_nested_folder(tmp_path: Path, cifar: Cifar) -> None:
    cifar.write(tmp_path / "cifar100" / "cifar-100-python", numpy_core="numpy._core")
    ds = load_dataset("cifar-fs", "test", root=tmp_path, cache=False)
    name = ds.class_names[0]
    np.testing.assert_array_equal(ds.images[ds.labels == 0].numpy(), cifar.expected_images(name))


def test_cifar_resizes(cifar_root: Path) -> None:
    ds = load_dataset("cifar-fs", "test", root=cifar_root, image_size=40, cache=False)
    assert tuple(ds.images.shape) == (60, 3, 40, 40) and ds.image_size == 40


def test_cifar_cache_hit_returns_identical_tensors(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_dataset("fc100", "test", root=cifar_root, cache=cache)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unpickled again although the cache holds the split")

    monkeypatch.setattr(cifar_module, "Cifar100", fail)
    second = load_dataset("fc100", "test", root=cifar_root, cache=cache)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert first.class_names == second.class_names


class SystemCall:
    """Unpickling this would run ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (self.command,)


class EvalCall:
    """Unpickling this would run ``eval(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return eval, (self.code,)


@pytest.mark.parametrize(
    "dumps",
    [py2_pickle, lambda obj: pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)],
    ids=["python2-style", "highest-protocol"],
)
def test_malicious_pickle_is_refused_and_not_run(
    tmp_path: Path, cifar_root: Path, dumps: Callable[[Any], bytes]
) -> None:
    folder = tmp_path / "cifar-100-python"
    shutil.copytree(cifar_root / "cifar-100-python", folder)
    marker = tmp_path / "pwned"
    payload = {b"data": SystemCall(f"touch {marker}"), b"fine_labels": [], b"coarse_labels": []}
    (folder / "train").write_bytes(dumps(payload))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system from .*train"):
        load_dataset("cifar-fs", "train", root=tmp_path, cache=False)
    assert not marker.exists()


def test_malicious_meta_with_eval_is_refused(tmp_path: Path, cifar_root: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    shutil.copytree(cifar_root / "cifar-100-python", folder)
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    (folder / "meta").write_bytes(pickle.dumps(EvalCall(code), protocol=2))
    refused = r"refusing to unpickle (__builtin__|builtins)\.eval from .*meta"
    with pytest.raises(DataError, match=refused):
        load_dataset("fc100", "val", root=tmp_path, cache=False)
    assert not marker.exists()


def test_cifar10_style_batch_is_rejected(tmp_path: Path, cifar_root: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    shutil.copytree(cifar_root / "cifar-100-python", folder)
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test").write_bytes(py2_pickle(batch))
    with pytest.raises(DataError, match="fine_labels"):
        load_dataset("cifar-fs", "train", root=tmp_path, cache=False)


def test_cifar_wrong_data_shape_is_rejected(tmp_path: Path, cifar_root: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    shutil.copytree(cifar_root / "cifar-100-python", folder)
    batch = {
        b"data": np.zeros((2, 1024), np.uint8),
        b"fine_labels": [0, 1],
        b"coarse_labels": [0, 1],
    }
    (folder / "train").write_bytes(py2_pickle(batch))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_dataset("cifar-fs", "train", root=tmp_path, cache=False)


def test_cifar_truncated_pickle_names_the_file(tmp_path: Path, cifar_root: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    shutil.copytree(cifar_root / "cifar-100-python", folder)
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read .*train"):
        load_dataset("cifar-fs", "train", root=tmp_path, cache=False)


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar-fs", "train", root=tmp_path, cache=False)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(DataError, match="lacks test, meta"):
        load_dataset("fc100", "train", root=tmp_path, cache=False)


# ---------------------------------------------------------------------------------------------
# folder fixtures and tests
# ---------------------------------------------------------------------------------------------

FOLDER_COLOURS = {
    "cat": (200, 30, 30),
    "dog": (30, 200, 30),
    "emu": (30, 30, 200),
    "fox": (120, 120, 0),
}


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """``<tmp>/pets/<class>/*.png``: 4 classes, 3 solid-colour 10x8 PNGs each."""
    root = tmp_path / "pets"
    for name, colour in FOLDER_COLOURS.items():
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (10, 8), colour).save(root / name / f"{k}.png")
    (root / "README.txt").write_text("not a class")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def write_split_file(path: Path, splits: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps(splits))
    return path


def test_folder_without_split_file_has_split_all(image_folder: Path) -> None:
    ds = load_dataset("folder", "all", root=image_folder, cache=False)
    assert ds.class_names == ["cat", "dog", "emu", "fox"]
    assert tuple(ds.images.shape) == (12, 3, 84, 84)
    for c, name in enumerate(ds.class_names):
        pixels = ds.images[ds.labels == c].permute(0, 2, 3, 1).reshape(-1, 3)
        assert torch.all(pixels == torch.tensor(FOLDER_COLOURS[name], dtype=torch.uint8))
    with pytest.raises(DataError, match=r"no split 'train'; known splits: all$"):
        load_dataset("folder", "train", root=image_folder, cache=False)


def test_folder_with_split_file(image_folder: Path, tmp_path: Path) -> None:
    splits = {"train": ["fox", "cat"], "val": ["dog"], "test": ["emu"]}
    split_file = write_split_file(tmp_path / "splits.json", splits)
    for split, classes in splits.items():
        ds = load_dataset(
            "folder", split, root=image_folder, image_size=8, cache=False, split_file=split_file
        )
        assert ds.class_names == classes
        assert ds.class_counts().tolist() == [3] * len(classes)
        assert tuple(ds.images.shape) == (3 * len(classes), 3, 8, 8)
    with pytest.raises(DataError, match="no split 'all'; known splits: train, val, test"):
        load_dataset("folder", "all", root=image_folder, cache=False, split_file=split_file)


def test_folder_split_file_relative_to_root(image_folder: Path) -> None:
    write_split_file(image_folder / "splits.json", {"train": ["dog"], "test": ["cat"]})
    ds = load_dataset(
        "folder", "test", root=image_folder, image_size=8, cache=False, split_file="splits.json"
    )
    assert ds.class_names == ["cat"]


def test_folder_split_file_unknown_class(image_folder: Path, tmp_path: Path) -> None:
    split_file = write_split_file(tmp_path / "s.json", {"train": ["cat", "gnu"], "val": ["dog"]})
    with pytest.raises(DataError, match="'gnu'"):
        load_dataset("folder", "val", root=image_folder, cache=False, split_file=split_file)


def test_folder_split_file_overlap(image_folder: Path, tmp_path: Path) -> None:
    split_file = write_split_file(tmp_path / "s.json", {"train": ["cat", "dog"], "val": ["dog"]})
    with pytest.raises(DataError, match="'dog' is in both split 'train' and split 'val'"):
        load_dataset("folder", "train", root=image_folder, cache=False, split_file=split_file)


def test_folder_bad_split_files(image_folder: Path, tmp_path: Path) -> None:
    not_json = tmp_path / "s.json"
    not_json.write_text("train: [cat]")
    with pytest.raises(DataError, match="JSON"):
        load_dataset("folder", "train", root=image_folder, cache=False, split_file=not_json)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(
            "folder", "train", root=image_folder, cache=False, split_file=tmp_path / "nope.json"
        )


def test_folder_empty_class_folder_is_named(image_folder: Path) -> None:
    (image_folder / "gnu").mkdir()
    with pytest.raises(DataError, match="gnu"):
        load_dataset("folder", "all", root=image_folder, cache=False)


def test_folder_corrupt_image_is_named(image_folder: Path) -> None:
    (image_folder / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"dog.9\.png"):
        load_dataset("folder", "all", root=image_folder, cache=False)


def test_folder_grayscale(image_folder: Path) -> None:
    ds = load_dataset("folder", "all", root=image_folder, image_size=8, cache=False, channels=1)
    assert tuple(ds.images.shape) == (12, 1, 8, 8)
    cat = ds.images[ds.labels == ds.class_names.index("cat")]
    expected = Image.new("RGB", (1, 1), FOLDER_COLOURS["cat"]).convert("L").getpixel((0, 0))
    assert torch.all(cat == expected)
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        load_dataset("folder", "all", root=image_folder, cache=False, channels=2)


def test_folder_cache_hit_and_channels_key(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    rgb = load_dataset("folder", "all", root=image_folder, image_size=8, cache=cache)
    gray = load_dataset("folder", "all", root=image_folder, image_size=8, cache=cache, channels=1)
    assert gray.channels == 1 and rgb.channels == 3
    assert len(list(cache.glob("*.npy"))) == 2  # channels is part of the cache key

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded again although the cache holds the split")

    monkeypatch.setattr(folder_module, "decode_files", fail)
    again = load_dataset("folder", "all", root=image_folder, image_size=8, cache=cache)
    assert torch.equal(rgb.images, again.images) and torch.equal(rgb.labels, again.labels)
    assert again.class_names == rgb.class_names


def test_folder_root_one_level_too_high(image_folder: Path) -> None:
    with pytest.raises(DataError, match=r"pets holds no image files.*one level too high"):
        load_dataset("folder", "all", root=image_folder.parent, cache=False)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("folder", "all", root=tmp_path, cache=False)


def test_folder_unknown_option(image_folder: Path) -> None:
    with pytest.raises(DataError, match="unknown option"):
        load_dataset("folder", "all", root=image_folder, cache=False, splits="x.json")
