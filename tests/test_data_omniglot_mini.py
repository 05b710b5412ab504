"""Tests of the ``omniglot`` and ``mini-imagenet`` loaders.

Fixture tests write tiny copies of the on-disk forms users have into ``tmp_path``: Omniglot as the
npz re-pack and as the original PNG folders (from the same arrays), mini-ImageNet as split zips,
Ravi's ``images/`` folder + CSV, and per-split class folders. Real-data tests (marked ``realdata``)
read the shared data folder named by ``PTX_DATA_ROOT`` and are skipped when it is not set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, requires_data_root
from PIL import Image

import ptx_utils.data.mini_imagenet as mini_module
import ptx_utils.data.omniglot as omniglot_module
from ptx_utils.data.base import FewShotDataset, packaged_split_file
from ptx_utils.data.cache import default_cache_dir
from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import load_dataset


def packaged(relative: str) -> Any:
    return json.loads(packaged_split_file(relative).read_text())


# ---------------------------------------------------------------------------------------------
# Omniglot fixtures: the npz re-pack and the original PNG tree, from the same bool arrays
# ---------------------------------------------------------------------------------------------

SET_SIZES = {"background": 964, "evaluation": 659}


@dataclass(frozen=True)
class Character:
    set: str
    row: int  # row in images_<set>.npz
    char_id: int  # XXXX in the PNG file names


def character_csv() -> dict[str, Character]:
    """``Alphabet/characterNN`` -> where it lives, read from the packaged CSV."""
    with open(packaged_split_file("omniglot_id_to_character.csv"), newline="") as f:
        return {
            f"{r['alphabet']}/{r['character']}": Character(
                r["set"], int(r["npz_row"]), int(r["char_id"])
            )
            for r in csv.DictReader(f)
        }


def vinyals(split: str) -> list[str]:
    return packaged_split_file(f"omniglot-vinyals/{split}.txt").read_text().split()


def random_drawings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` characters x 20 drawings, bool (n, 20, 105, 105), True = paper.

    Ink is random 5x5 blocks (~15%), so every drawing differs and the npz stays small.
    """
    blocks = rng.random((n, 20, 21, 21)) < 0.15
    return ~blocks.repeat(5, axis=2).repeat(5, axis=3)


@dataclass
class FakeOmniglot:
    npz_root: Path  # <npz_root>/omniglot/images_{background,evaluation}.npz
    png_root: Path  # <png_root>/omniglot/images_background/<Alphabet>/characterNN/XXXX_YY.png
    drawings: dict[str, np.ndarray]  # the characters that are not blank paper, bool (20, 105, 105)
    png_characters: list[str]


@pytest.fixture(scope="module")
def fake_omniglot(tmp_path_factory: pytest.TempPathFactory) -> FakeOmniglot:
    table = character_csv()
    assert {s: sum(c.set == s for c in table.values()) for s in SET_SIZES} == SET_SIZES
    # Vinyals' val split (172 characters of 5 background alphabets) is the smallest split: every
    # one of its characters gets its own drawings, as do a few evaluation characters; all other
    # rows are blank paper (the loader needs all 964 + 659 rows of the npz form).
    png_characters = vinyals("val")
    varied = png_characters + vinyals("test")[::60]
    rng = np.random.default_rng(0)
    drawings = dict(zip(varied, random_drawings(rng, len(varied)), strict=True))

    npz_root = tmp_path_factory.mktemp("omniglot-npz")
    (npz_root / "omniglot").mkdir()
    for set_name, n in SET_SIZES.items():
        images = np.ones((n, 20, 105, 105), dtype=bool)
        for name, pixels in drawings.items():
            if table[name].set == set_name:
                images[table[name].row] = pixels
        labels = np.repeat(np.arange(n, dtype=np.int64)[:, None], 20, axis=1)
        np.savez_compressed(
            npz_root / "omniglot" / f"images_{set_name}.npz", images=images, labels=labels
        )
        del images

    # Writing all 32,460 PNGs would take too long, and the PNG loader needs every character of
    # the split it loads: the PNG tree holds exactly the val split (3440 PNGs), half as 1-bit
    # PNGs (mode "1", like the originals) and half as 8-bit grayscale (mode "L").
    png_root = tmp_path_factory.mktemp("omniglot-png")
    for name in png_characters:
        folder = png_root / "omniglot" / "images_background" / name
        folder.mkdir(parents=True)
        for k, pixels in enumerate(drawings[name]):
            image = Image.fromarray(pixels) if k % 2 else Image.fromarray(pixels * np.uint8(255))
            image.save(folder / f"{table[name].char_id:04d}_{k + 1:02d}.png")
    return FakeOmniglot(npz_root, png_root, drawings, png_characters)


@pytest.fixture(scope="module")
def npz_val(fake_omniglot: FakeOmniglot) -> FewShotDataset:
    return load_dataset("omniglot", "val", root=fake_omniglot.npz_root, cache=False)


# ---------------------------------------------------------------------------------------------
# Omniglot tests
# ---------------------------------------------------------------------------------------------


def test_omniglot_png_form_equals_npz_form(
    fake_omniglot: FakeOmniglot, npz_val: FewShotDataset
) -> None:
    png = load_dataset("omniglot", "val", root=fake_omniglot.png_root, cache=False)
    n = len(fake_omniglot.png_characters)
    for ds in (png, npz_val):
        assert ds.name == "omniglot" and ds.split == "val"
        assert ds.class_names == fake_omniglot.png_characters == vinyals("val")
        assert tuple(ds.images.shape) == (n * 20, 1, 28, 28)
        assert ds.images.dtype == torch.uint8
        assert torch.equal(ds.labels, torch.arange(n).repeat_interleave(20))
    assert torch.equal(png.images, npz_val.images)  # exact, pixel for pixel
    assert png.fingerprint() == npz_val.fingerprint()
    # not trivially equal: every character differs, and the paper is white
    assert len({npz_val.images[npz_val.labels == c].numpy().tobytes() for c in range(n)}) == n
    assert npz_val.images.float().mean() > 180 and npz_val.images.max() == 255


def test_omniglot_native_size_pixels_match_the_arrays(
    fake_omniglot: FakeOmniglot,
) -> None:
    """At 105x105 (no resize) both forms give the arrays themselves, paper 255 and ink 0."""
    for root in (fake_omniglot.npz_root, fake_omniglot.png_root):
        ds = load_dataset("omniglot", "val", root=root, image_size=105, cache=False)
        assert tuple(ds.images.shape) == (172 * 20, 1, 105, 105)
        for c, name in enumerate(ds.class_names):
            expected = fake_omniglot.drawings[name].astype(np.uint8) * 255
            np.testing.assert_array_equal(ds.images[ds.labels == c, 0].numpy(), expected)


def test_omniglot_decode_maps_both_npz_sets_by_the_csv(fake_omniglot: FakeOmniglot) -> None:
    # a character list mixing both sets, out of order, plus a blank-paper character
    evaluation = [n for n in fake_omniglot.drawings if n not in fake_omniglot.png_characters]
    names = [evaluation[1], fake_omniglot.png_characters[5], evaluation[0], "Latin/character01"]
    assert {character_csv()[n].set for n in names} == {"background", "evaluation"}
    raw = omniglot_module._decode(fake_omniglot.npz_root / "omniglot", names, "mixed")
    assert raw.shape == (4, 20, 105, 105) and raw.dtype == np.uint8
    for i, name in enumerate(names[:3]):
        np.testing.assert_array_equal(raw[i], fake_omniglot.drawings[name] * np.uint8(255))
    assert np.all(raw[3] == 255)


def test_omniglot_evaluation_val_is_held_out_from_background_and_test(
    fake_omniglot: FakeOmniglot,
) -> None:
    held_out = omniglot_module.split_characters("evaluation-val")
    evaluation = omniglot_module.split_characters("evaluation")
    assert len(held_out) == 236 == len(evaluation) - len(vinyals("test"))
    assert set(held_out) <= set(evaluation)
    assert not set(held_out) & set(omniglot_module.split_characters("background"))
    assert not set(held_out) & set(vinyals("test"))
    ds = load_dataset("omniglot", "evaluation-val", root=fake_omniglot.npz_root, cache=False)
    assert ds.class_names == held_out and len(ds) == 236 * 20
    # In the fixture the only drawn evaluation characters are test characters: none loaded here.
    assert bool((ds.images == 255).all())


def test_omniglot_rotations(fake_omniglot: FakeOmniglot, npz_val: FewShotDataset) -> None:
    rot = load_dataset("omniglot", "val", root=fake_omniglot.npz_root, cache=False, rotations=True)
    characters = vinyals("val")
    n = len(characters)
    assert rot.num_classes == 4 * n and len(rot) == 4 * n * 20
    assert rot.class_counts().tolist() == [20] * (4 * n)
    for k in range(4):
        assert rot.class_names[k * n : (k + 1) * n] == [f"{c}/rot{90 * k:03d}" for c in characters]
    blocks = [rot.images[(rot.labels >= k * n) & (rot.labels < (k + 1) * n)] for k in range(4)]
    assert torch.equal(blocks[0], npz_val.images)
    for k in (1, 2, 3):
        assert torch.equal(blocks[k], torch.rot90(blocks[0], k, dims=(-2, -1)))
        assert not torch.equal(blocks[k], blocks[0])
    # rot090 is a quarter turn counter-clockwise, as PIL's Image.rotate(90) in Vinyals' protocol
    first = Image.fromarray(blocks[0][0, 0].numpy())
    np.testing.assert_array_equal(blocks[1][0, 0].numpy(), np.asarray(first.rotate(90)))


def test_omniglot_png_form_missing_characters(fake_omniglot: FakeOmniglot) -> None:
    # trainval holds the 172 val characters present plus 1028 absent ones
    with pytest.raises(DataError, match=r"needs 1200 character folders; 1028 are missing"):
        load_dataset("omniglot", "trainval", root=fake_omniglot.png_root, cache=False)
    # train holds none of them: nothing of the split is there, the layout is shown
    with pytest.raises(DataError, match="neither the npz files nor the PNG folders") as info:
        load_dataset("omniglot", "train", root=fake_omniglot.png_root, cache=False)
    assert "images_evaluation.npz" in str(info.value)


def test_omniglot_png_character_with_missing_drawing(
    fake_omniglot: FakeOmniglot, tmp_path: Path
) -> None:
    name = fake_omniglot.png_characters[0]
    source = fake_omniglot.png_root / "omniglot" / "images_background" / name
    folder = tmp_path / "omniglot" / "images_background" / name
    shutil.copytree(source, folder)
    omniglot_module._decode(tmp_path / "omniglot", [name], "one")  # complete: decodes
    sorted(folder.glob("*.png"))[-1].unlink()
    with pytest.raises(DataError, match=r"has 19 PNG files, expected 20"):
        omniglot_module._decode(tmp_path / "omniglot", [name], "one")


def test_omniglot_npz_with_wrong_row_count(tmp_path: Path) -> None:
    # e.g. images_background.npz and images_evaluation.npz swapped, or a truncated re-pack
    folder = tmp_path / "omniglot"
    folder.mkdir()
    np.savez_compressed(folder / "images_background.npz", images=np.ones((3, 20, 105, 105), bool))
    np.savez_compressed(folder / "images_evaluation.npz", images=np.ones((3, 20, 105, 105), bool))
    with pytest.raises(DataError, match=r"images_background\.npz.*\(964, 20, 105, 105\)"):
        load_dataset("omniglot", "val", root=tmp_path, cache=False)
    (folder / "images_background.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match=r"cannot read .*images_background\.npz"):
        load_dataset("omniglot", "background", root=tmp_path, cache=False)


def test_omniglot_cache_hit_and_invalidation(
    fake_omniglot: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shutil.copytree(fake_omniglot.npz_root / "omniglot", root / "omniglot")
    cache = tmp_path / "cache"
    decoded: list[str] = []
    real_decode = omniglot_module._decode

    def counting_decode(folder: Path, characters: list[str], split: str) -> np.ndarray:
        decoded.append(split)
        return real_decode(folder, characters, split)

    monkeypatch.setattr(omniglot_module, "_decode", counting_decode)
    first = load_dataset("omniglot", "val", root=root, cache=cache)
    assert decoded == ["val"] and len(list(cache.glob("*.npy"))) == 1
    second = load_dataset("omniglot", "val", root=root, cache=cache)
    assert decoded == ["val"], "decoded again although the cache holds the split"
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert first.class_names == second.class_names
    # a newer modification time of a source file makes the entry stale
    npz = root / "omniglot" / "images_background.npz"
    st = npz.stat()
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    third = load_dataset("omniglot", "val", root=root, cache=cache)
    assert decoded == ["val", "val"]
    assert torch.equal(first.images, third.images)
    assert len(list(cache.glob("*.npy"))) == 2


# ---------------------------------------------------------------------------------------------
# mini-ImageNet fixtures
# ---------------------------------------------------------------------------------------------


def wnids(split: str) -> list[str]:
    return packaged(f"mini-imagenet-ravi/{split}.json")


def mini_colour(wnid: str) -> tuple[int, int, int]:
    """A solid colour per class, from its WordNet id."""
    n = int(wnid[1:])
    return (n * 37) % 256, (n * 91) % 256, (n * 53) % 256


def jpeg_bytes(colour: tuple[int, int, int], size: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_zip(
    path: Path,
    split: str,
    classes: list[str],
    per_class: int = 2,
    first: int = 1,
    colour: Any = mini_colour,
) -> None:
    """A split zip with entries ``<split>/<wnid>/<wnid>NNNNNNNN.jpg``, as in the packed copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for wnid in classes:
            data = jpeg_bytes(colour(wnid))
            for k in range(first, first + per_class):
                z.writestr(f"{split}/{wnid}/{wnid}{k:08d}.jpg", data)


def write_jpegs(folder: Path, classes: list[str], per_class: int = 2) -> list[str]:
    """Files ``<wnid>NNNNNNNN.jpg`` (Ravi's names) in ``folder``; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for wnid in classes:
        data = jpeg_bytes(mini_colour(wnid))
        for k in range(1, per_class + 1):
            names.append(f"{wnid}{k:08d}.jpg")
            (folder / names[-1]).write_bytes(data)
    return names


def assert_class_colours(ds: FewShotDataset, tol: float = 6) -> None:
    """Every image has the colour of the class its label names (labels are consistent)."""
    means = ds.images.float().mean(dim=(2, 3))
    expected = torch.tensor([mini_colour(ds.class_names[int(y)]) for y in ds.labels]).float()
    assert torch.all((means - expected).abs() <= tol), (means - expected).abs().max()


def load_quietly(*args: Any, **kwargs: Any) -> FewShotDataset:
    """``load_dataset`` for fixtures with fewer than 600 images per class (the warning is known)."""
    with pytest.warns(UserWarning, match="images per class instead of 600"):
        return load_dataset(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# mini-ImageNet tests
# ---------------------------------------------------------------------------------------------


def test_packaged_mini_imagenet_classes() -> None:
    splits = [wnids(s) for s in ("train", "val", "test")]
    assert [len(s) for s in splits] == [64, 16, 20]
    assert all(s == sorted(s) for s in splits)
    assert len(set().union(*splits)) == 100


def test_mini_imagenet_zip_part_a_only(tmp_path: Path) -> None:
    write_zip(tmp_path / "mini-imagenet" / "train_part_a.zip", "train", wnids("train"))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("mini-imagenet", "train", root=tmp_path, image_size=16, cache=False)
    messages = [str(w.message) for w in record]
    assert any("train: zip part(s) b missing" in m for m in messages), messages
    assert any("train: 2 images per class instead of 600" in m for m in messages), messages
    assert all(w.filename == __file__ for w in record)  # attributed to the caller's line
    assert ds.name == "mini-imagenet" and ds.split == "train"
    assert ds.class_names == wnids("train") and ds.num_classes == 64
    assert tuple(ds.images.shape) == (128, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [2] * 64
    assert torch.equal(ds.labels, torch.arange(64).repeat_interleave(2))
    assert_class_colours(ds)


def test_mini_imagenet_zip_parts(tmp_path: Path) -> None:
    folder = tmp_path / "mini-imagenet"
    write_zip(folder / "val_part_b.zip", "val", wnids("val"), per_class=1, first=3)
    with pytest.warns(UserWarning, match=r"val: zip part\(s\) a missing"):
        load_quietly("mini-imagenet", "val", root=tmp_path, image_size=8, cache=False)
    write_zip(folder / "val_part_a.zip", "val", wnids("val"), per_class=2, first=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_dataset("mini-imagenet", "val", root=tmp_path, image_size=8, cache=False)
    messages = [str(w.message) for w in record]
    assert not any("zip part(s)" in m for m in messages), messages
    assert any("3 images per class instead of 600" in m for m in messages), messages
    assert ds.class_counts().tolist() == [3] * 16
    assert_class_colours(ds)
    # a whole val.zip wins over the parts
    write_zip(folder / "val.zip", "val", wnids("val"), per_class=4)
    ds = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=8, cache=False)
    assert ds.class_counts().tolist() == [4] * 16


def test_mini_imagenet_zip_missing_classes(tmp_path: Path) -> None:
    present = wnids("train")[:60]
    write_zip(tmp_path / "mini-imagenet" / "train.zip", "train", present)
    with pytest.raises(DataError, match=r"expected the 64 classes of the Ravi split, 4 have no"):
        load_dataset("mini-imagenet", "train", root=tmp_path, image_size=16, cache=False)


def test_mini_imagenet_zip_corrupt_jpeg_names_zip_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "mini-imagenet" / "test.zip"
    write_zip(path, "test", wnids("test"))
    wnid = wnids("test")[3]
    entry = f"test/{wnid}/{wnid}00000099.jpg"
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(entry, b"\xff\xd8\xff\xe0 truncated JPEG")
    with pytest.raises(DataError, match=rf"cannot read image .*test\.zip:{entry}"):
        load_quietly("mini-imagenet", "test", root=tmp_path, image_size=16, cache=False)


def test_mini_imagenet_damaged_zip_entry_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "mini-imagenet" / "test.zip"
    write_zip(path, "test", wnids("test"), colour=lambda _: (10, 20, 30))
    data = bytearray(path.read_bytes())
    data[data.index(b"\xff\xd8\xff") + 100] ^= 0xFF  # flip bits inside the first stored JPEG
    path.write_bytes(bytes(data))
    first = f"test/{wnids('test')[0]}/{wnids('test')[0]}00000001.jpg"
    with pytest.raises(DataError, match=rf"{first} from .*test\.zip.*re-copy"):
        load_quietly("mini-imagenet", "test", root=tmp_path, image_size=16, cache=False)


def test_mini_imagenet_zip_skips_macos_resource_forks(tmp_path: Path) -> None:
    path = tmp_path / "mini-imagenet" / "test.zip"
    write_zip(path, "test", wnids("test"))
    wnid = wnids("test")[0]
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"__MACOSX/test/{wnid}/._{wnid}00000001.jpg", b"\x00\x05\x16\x07 resource")
    ds = load_quietly("mini-imagenet", "test", root=tmp_path, image_size=16, cache=False)
    assert ds.class_counts().tolist() == [2] * 20
    assert_class_colours(ds)


def test_mini_imagenet_ravi_form_with_and_without_csv(tmp_path: Path) -> None:
    folder = tmp_path / "mini-imagenet"
    names = write_jpegs(folder / "images", wnids("val"))
    write_jpegs(folder / "images", wnids("train")[:3])  # other splits' files share the folder
    with open(folder / "val.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows([name, name[:9]] for name in names)
    with_csv = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=False)
    assert with_csv.class_names == wnids("val") and with_csv.num_classes == 16
    assert tuple(with_csv.images.shape) == (32, 3, 16, 16)
    assert with_csv.class_counts().tolist() == [2] * 16
    assert_class_colours(with_csv)
    (folder / "val.csv").unlink()  # now the packaged class list picks files by wnid prefix
    without = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=False)
    assert without.class_names == with_csv.class_names
    assert torch.equal(without.images, with_csv.images)
    assert torch.equal(without.labels, with_csv.labels)


def test_mini_imagenet_ravi_csv_lists_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "mini-imagenet"
    names = write_jpegs(folder / "images", wnids("val"), per_class=1)
    wnid = wnids("val")[0]
    absent = f"{wnid}00000777.jpg"
    with open(folder / "val.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows([name, name[:9]] for name in [*names, absent])
    with pytest.raises(DataError, match=rf"val\.csv lists 1 images missing .*{absent}"):
        load_dataset("mini-imagenet", "val", root=tmp_path, image_size=16, cache=False)


def test_mini_imagenet_ravi_csv_with_a_class_of_another_split(tmp_path: Path) -> None:
    folder = tmp_path / "mini-imagenet"
    names = write_jpegs(folder / "images", [*wnids("val"), wnids("test")[0]], per_class=1)
    with open(folder / "val.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows([name, name[:9]] for name in names)
    with pytest.raises(
        DataError, match=rf"lists classes outside the Ravi val split \({wnids('test')[0]}"
    ):
        load_dataset("mini-imagenet", "val", root=tmp_path, image_size=16, cache=False)


def test_mini_imagenet_split_folders(tmp_path: Path) -> None:
    folder = tmp_path / "mini-imagenet" / "test"
    for wnid in wnids("test"):
        write_jpegs(folder / wnid, [wnid])
    write_jpegs(folder / "n99999999", ["n99999999"])  # not a class of the split: ignored
    (folder / "README.txt").write_text("not a class")
    ds = load_quietly("mini-imagenet", "test", root=tmp_path, image_size=16, cache=False)
    assert ds.class_names == wnids("test") and ds.num_classes == 20
    assert tuple(ds.images.shape) == (40, 3, 16, 16)
    assert ds.class_counts().tolist() == [2] * 20
    assert_class_colours(ds)
    with pytest.raises(DataError, match=r"no images for split 'val'") as info:
        load_dataset("mini-imagenet", "val", root=tmp_path, cache=False)
    assert "{train,val,test}/<wnid>/*.jpg" in str(info.value)


def test_mini_imagenet_cache_hit_and_invalidation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mini-imagenet" / "val.zip"
    write_zip(path, "val", wnids("val"))
    cache = tmp_path / "cache"
    first = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=cache)
    real_decode = mini_module._decode_zip_items

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded again although the cache holds the split")

    monkeypatch.setattr(mini_module, "_decode_zip_items", fail)
    second = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=cache)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert first.class_names == second.class_names
    # a replaced zip (other size, other pixels) is decoded again
    write_zip(path, "val", wnids("val"), per_class=3, colour=lambda _: (0, 0, 255))
    with pytest.raises(AssertionError, match="decoded again"):
        load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=cache)
    monkeypatch.setattr(mini_module, "_decode_zip_items", real_decode)
    third = load_quietly("mini-imagenet", "val", root=tmp_path, image_size=16, cache=cache)
    assert third.class_counts().tolist() == [3] * 16
    assert torch.all((third.images[:, 2].float() - 255).abs() <= 6)
    assert len(list(cache.glob("*.npy"))) == 2


# ---------------------------------------------------------------------------------------------
# data root errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "layout", "origin"),
    [
        ("omniglot", "background", "images_background", "github.com/brendenlake/omniglot"),
        ("mini-imagenet", "train", "train,val,test}.zip", "Ravi & Larochelle CSVs"),
    ],
)
def test_missing_dataset_folder_shows_layout_and_origin(
    tmp_path: Path, name: str, split: str, layout: str, origin: str
) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, split, root=tmp_path, cache=False)
    message = str(info.value)
    assert f"no {name}/ folder under data root {tmp_path}" in message
    assert layout in message and origin in message


def test_empty_omniglot_folder_shows_layout(tmp_path: Path) -> None:
    (tmp_path / "omniglot-py").mkdir()  # torchvision's folder name is accepted too
    with pytest.raises(DataError, match="neither the npz files nor the PNG folders") as info:
        load_dataset("omniglot", "evaluation", root=tmp_path, cache=False)
    assert "images_evaluation/<Alphabet>/characterNN/XXXX_YY.png" in str(info.value)


@pytest.mark.parametrize("name", ["omniglot", "mini-imagenet"])
def test_data_root_that_does_not_exist(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"data root {re.escape(str(root))} does not exist"):
        load_dataset(name, "test", root=root, cache=False)


@pytest.mark.parametrize("name", ["omniglot", "mini-imagenet"])
def test_no_root_and_no_environment_variable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("PTX_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match=rf"{name}' needs a data root.*PTX_DATA_ROOT"):
        load_dataset(name, "test", cache=False)


# ---------------------------------------------------------------------------------------------
# real data (PTX_DATA_ROOT)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache() -> Path:
    """The session's decoded-image cache: each real split is decoded once per test session."""
    return default_cache_dir()


OMNIGLOT_SPLITS = {
    "background": 964,
    "evaluation": 659,
    "train": 1028,
    "val": 172,
    "test": 423,
    "trainval": 1200,
}


@pytest.mark.realdata
@requires_data_root
@pytest.mark.parametrize(("split", "classes"), OMNIGLOT_SPLITS.items())
def test_real_omniglot_splits(real_cache: Path, split: str, classes: int) -> None:
    ds = load_dataset("omniglot", split, root=DATA_ROOT, cache=real_cache)
    assert ds.num_classes == classes and len(ds) == 20 * classes
    assert ds.class_counts().tolist() == [20] * classes
    assert tuple(ds.images.shape) == (20 * classes, 1, 28, 28)
    assert ds.images.dtype == torch.uint8
    expected = character_csv() if split in SET_SIZES else None
    if expected is None:
        assert ds.class_names == vinyals(split)
    else:
        assert ds.class_names == [n for n, c in expected.items() if c.set == split]
    # white paper, dark ink: mostly white, every drawing has ink and paper
    pixels = ds.images.flatten(1)
    assert pixels.float().mean() > 200
    assert torch.all(pixels.min(dim=1).values < 200)
    assert torch.all(pixels.max(dim=1).values == 255)


@pytest.mark.realdata
@requires_data_root
def test_real_omniglot_character_sets(real_cache: Path) -> None:
    names = {
        s: set(load_dataset("omniglot", s, root=DATA_ROOT, cache=real_cache).class_names)
        for s in OMNIGLOT_SPLITS
    }
    assert not names["background"] & names["evaluation"]
    everything = names["background"] | names["evaluation"]
    assert len(everything) == 1623
    assert everything == names["trainval"] | names["test"] == set(character_csv())
    assert names["trainval"] == names["train"] | names["val"]
    assert not names["trainval"] & names["test"]


@pytest.mark.realdata
@requires_data_root
@pytest.mark.parametrize(
    ("split", "classes", "per_class"), [("train", 64, 300), ("val", 16, 600), ("test", 20, 600)]
)
def test_real_mini_imagenet_splits(
    real_cache: Path, split: str, classes: int, per_class: int
) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_dataset("mini-imagenet", split, root=DATA_ROOT, cache=real_cache)
    messages = [str(w.message) for w in record if "mini-imagenet" in str(w.message)]
    if per_class < 600:  # the shared copy has zip parts a and b: 300 of each class's 600
        assert messages == [
            f"mini-imagenet/{split}: 300 images per class instead of 600 "
            "(some files or zip parts are absent); loading what is there"
        ]
    else:
        assert messages == []
    assert ds.class_names == wnids(split) and ds.num_classes == classes
    assert ds.class_counts().tolist() == [per_class] * classes
    assert tuple(ds.images.shape) == (classes * per_class, 3, 84, 84)
    assert ds.images.dtype == torch.uint8


@pytest.mark.realdata
@requires_data_root
@pytest.mark.parametrize(
    ("split", "zips"), [("val", ["val.zip"]), ("train", ["train_part_a.zip", "train_part_b.zip"])]
)
def test_real_mini_imagenet_pixels_equal_pil(real_cache: Path, split: str, zips: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "mini-imagenet/train: 300 images per class")
        ds = load_dataset("mini-imagenet", split, root=DATA_ROOT, cache=real_cache)
    folder = Path(DATA_ROOT or "") / "mini-imagenet"
    c = ds.num_classes - 1
    wnid = ds.class_names[c]
    entries = []
    for name in zips:
        with zipfile.ZipFile(folder / name) as z:
            entries += [
                (Path(e).name, name, e) for e in z.namelist() if Path(e).parent.name == wnid
            ]
    entries.sort()
    indices = ds.class_indices()[c]
    assert len(entries) == len(indices)
    for j in (0, len(entries) // 2, len(entries) - 1):  # for train, the last is from part b
        _, name, entry = entries[j]
        with zipfile.ZipFile(folder / name) as z, Image.open(io.BytesIO(z.read(entry))) as im:
            assert im.size == (84, 84)
            expected = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(ds.images[indices[j]].permute(1, 2, 0).numpy(), expected)
