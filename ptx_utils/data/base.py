"""The in-memory form every loader returns, and the image helpers loaders share.

A :class:`FewShotDataset` is one split of one dataset, fully decoded: a uint8 image tensor (possibly
memory-mapped from the decoded-image cache) plus integer labels and class names. Everything later
(episodes, pre-training, fine-tuning) indexes into it; nothing decodes an image twice.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ptx_utils.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class FewShotDataset:
    """One split of a dataset, decoded.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W) with H == W == image_size; C is 1 or 3.
        labels: int64 tensor of shape (N,), values in [0, num_classes).
        class_names: the name of class ``c`` is ``class_names[c]``; every class has an image.
        name: registry name of the dataset (e.g. ``"mini-imagenet"``).
        split: split name (e.g. ``"train"``).
        source: where the images came from (a path or a generator description).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    split: str
    source: str = ""
    _class_indices: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}/{self.split}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.images.shape[1] not in (1, 3) or self.images.shape[2] != self.images.shape[3]:
            raise DataError(
                f"{self.name}/{self.split}: images must have 1 or 3 channels and be square, "
                f"got shape {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise DataError(
                f"{self.name}/{self.split}: labels must lie in [0, {len(self.class_names)})"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return (image uint8 (C, H, W), label)."""
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def class_indices(self) -> list[np.ndarray]:
        """Indices of each class's images, ascending: ``class_indices()[c]`` is int64 (n_c,)."""
        if self._class_indices is None:
            labels = self.labels.numpy()
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(self.num_classes + 1))
            self._class_indices = [
                order[bounds[c] : bounds[c + 1]].astype(np.int64) for c in range(self.num_classes)
            ]
        return self._class_indices

    def class_counts(self) -> np.ndarray:
        """Number of images per class, shape (num_classes,)."""
        return np.bincount(self.labels.numpy(), minlength=self.num_classes)

    def fingerprint(self) -> str:
        """A short hash of the dataset's identity: name, split, class names and per-class counts.

        Episodes are a function of this (not of pixel values), so two machines that hold the same
        files draw the same episodes.
        """
        h = hashlib.sha256()
        h.update(f"{self.name}\0{self.split}\0".encode())
        h.update("\0".join(self.class_names).encode())
        h.update(self.class_counts().astype("<i8").tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        """Classes, images per class (min/max), image size and channels, as a plain dict."""
        counts = self.class_counts()
        return {
            "dataset": self.name,
            "split": self.split,
            "classes": self.num_classes,
            "images": len(self),
            "images_per_class_min": int(counts.min()) if len(counts) else 0,
            "images_per_class_max": int(counts.max()) if len(counts) else 0,
            "image_size": self.image_size,
            "channels": self.channels,
            "source": self.source,
        }

    def to_rgb(self) -> FewShotDataset:
        """The same dataset with 3 channels (grayscale repeated; a view, no copy for RGB input)."""
        if self.channels == 3:
            return self
        return FewShotDataset(
            self.images.expand(-1, 3, -1, -1),
            self.labels,
            self.class_names,
            self.name,
            self.split,
            self.source,
        )


def check_split_name(dataset: str, split: str, splits: Sequence[str]) -> None:
    """Raise a :class:`DataError` naming the known splits when ``split`` is not one of them."""
    if split not in splits:
        raise DataError(f"{dataset} has no split {split!r}; known splits: {', '.join(splits)}")


def decode_image(
    data: bytes | Path, image_size: int, channels: int, what: str | None = None
) -> np.ndarray:
    """Decode one image file (path or bytes) to uint8 (image_size, image_size, channels).

    Non-square images are resized on their shorter side and centre-cropped, so the aspect ratio is
    kept. A file that cannot be decoded raises :class:`DataError` naming it (``what`` or the path).
    """
    name = what or str(data)
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (image_size, image_size):
                w, h = im.size
                scale = image_size / min(w, h)
                nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(im, dtype=np.uint8)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:
        raise DataError(
            f"cannot read image {name}: {exc}. The file is corrupt or not an image; "
            "re-extract or re-download it, or delete it from the dataset folder."
        ) from exc
    return arr.reshape(image_size, image_size, channels)


def resize_uint8(images: torch.Tensor, image_size: int, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, image_size, image_size), bilinear, anti-aliased."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    out = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        y = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files (``.*``) are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


SPLITS_DIR = Path(__file__).resolve().parent / "splits"


def packaged_split_file(relative: str) -> Path:
    """Path of a split file shipped with ptx-kit, e.g. ``"cifar-fs/train.json"``.

    The files and their origin are listed in ``ptx_utils/data/splits/SOURCE.md``.
    """
    path = SPLITS_DIR / relative
    if not path.is_file():
        raise DataError(f"split file {relative} is missing from the installed package ({path})")
    return path
