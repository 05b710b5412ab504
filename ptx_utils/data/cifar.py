"""Datasets ``"cifar-fs"`` and ``"fc100"``: few-shot splits of CIFAR-100 (python version).

Details: ``docs/data-formats.md``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from ptx_utils.data.base import FewShotDataset, packaged_split_file, resize_uint8
from ptx_utils.data.cache import cached_dataset, files_fingerprint
from ptx_utils.data.errors import DataError
from ptx_utils.data.folder import reject_options
from ptx_utils.data.registry import DatasetSpec, missing_data_error, register_dataset

LOADER_VERSION = 1
SPLITS = ("train", "val", "test")
NATIVE_SIZE = 32
PIXELS = 3 * NATIVE_SIZE * NATIVE_SIZE
NUM_FINE, NUM_COARSE = 100, 20
CANDIDATES = (Path("cifar-100-python"), Path("cifar100") / "cifar-100-python")
BATCH_FILES = ("train", "test")
META_FILE = "meta"

LAYOUT = """\
<root>/cifar-100-python/     (or <root>/cifar100/cifar-100-python/)
    train                    pickle, 50,000 images
    test                     pickle, 10,000 images
    meta                     pickle, fine and coarse label names"""

ORIGIN = (
    "CIFAR-100, 'CIFAR-100 python version' (cifar-100-python.tar.gz), from Alex Krizhevsky's "
    "page 'The CIFAR-10 and CIFAR-100 datasets' (University of Toronto). Extract the archive "
    "under the data root."
)


# ---------------------------------------------------------------------------------------------
# restricted unpickling
# ---------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., np.ndarray]:
    """numpy's array-unpickling helper, without importing the deprecated ``numpy.core``."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_RECONSTRUCT = _numpy_reconstruct()

#: The only globals CIFAR-100's pickles reference: what numpy needs to rebuild a uint8 array.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses everything else."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: not CIFAR-100's format "
                "(it only holds numpy arrays, lists and strings). Re-download "
                "cifar-100-python.tar.gz from the official CIFAR page."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"refusing to unpickle a persistent id from {self.path}: not CIFAR-100's format"
        )


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`CifarUnpickler`; any failure is a DataError naming it."""
    try:
        with path.open("rb") as f:
            return CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean the same
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}. It is not a complete CIFAR-100 "
            "python pickle; re-download and extract cifar-100-python.tar.gz."
        ) from exc


# ---------------------------------------------------------------------------------------------
# validation of the unpickled content
# ---------------------------------------------------------------------------------------------


def _field(obj: Any, key: str, path: Path) -> Any:
    """``obj[key]`` for a dict with bytes (Python 2 pickle) or str keys; DataError if absent."""
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict (CIFAR-100 python format), got {type(obj).__name__}"
        )
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise DataError(
        f"{path}: key {key!r} is missing (keys present: "
        f"{', '.join(repr(k) for k in list(obj)[:8])}); is this CIFAR-100 (not CIFAR-10)?"
    )


def _labels(value: Any, key: str, count: int, upper: int, path: Path) -> np.ndarray:
    """A label list as int64 (count,), every value in [0, upper)."""
    try:
        labels = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {key!r} must be a list of integers") from exc
    if labels.shape != (count,):
        raise DataError(
            f"{path}: {key!r} has shape {labels.shape}, expected ({count},) like 'data'"
        )
    if count and (labels.min() < 0 or labels.max() >= upper):
        raise DataError(f"{path}: {key!r} values must lie in [0, {upper})")
    return labels


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CIFAR-100 batch file.

    Returns:
        data uint8 (N, 3072), fine labels int64 (N,) in [0, 100), coarse labels int64 (N,) in
        [0, 20).
    """
    obj = read_pickle(path)
    data = _field(obj, "data", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS
    ):
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, {PIXELS}), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}"
        )
    n = data.shape[0]
    fine = _labels(_field(obj, "fine_labels", path), "fine_labels", n, NUM_FINE, path)
    coarse = _labels(_field(obj, "coarse_labels", path), "coarse_labels", n, NUM_COARSE, path)
    return data, fine, coarse


def _names(value: Any, key: str, count: int, path: Path) -> list[str]:
    """A list of ``count`` distinct label names (bytes or str) as str."""
    if not isinstance(value, list) or len(value) != count:
        raise DataError(f"{path}: {key!r} must be a list of {count} names")
    try:
        names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {key!r} holds a name that is not text") from exc
    if len(set(names)) != count:
        raise DataError(f"{path}: {key!r} holds duplicate names")
    return names


def read_meta(path: Path) -> tuple[list[str], list[str]]:
    """The ``meta`` file: (100 fine label names, 20 coarse label names), index = label."""
    obj = read_pickle(path)
    fine = _names(_field(obj, "fine_label_names", path), "fine_label_names", NUM_FINE, path)
    coarse = _names(_field(obj, "coarse_label_names", path), "coarse_label_names", NUM_COARSE, path)
    return fine, coarse


# ---------------------------------------------------------------------------------------------
# CIFAR-100 in memory
# ---------------------------------------------------------------------------------------------


class Cifar100:
    """Train and test pickles together: data uint8 (60000, 3072), fine/coarse labels (60000,)."""

    def __init__(self, folder: Path, desc: str) -> None:
        self.folder = folder
        parts = [read_batch(folder / f) for f in tqdm(BATCH_FILES, desc=desc, leave=False)]
        self.data = np.concatenate([p[0] for p in parts])
        self.fine = np.concatenate([p[1] for p in parts])
        self.coarse = np.concatenate([p[2] for p in parts])
        self.fine_names, self.coarse_names = read_meta(folder / META_FILE)
        self.coarse_of_fine = self._coarse_of_fine()

    def _coarse_of_fine(self) -> np.ndarray:
        """Superclass of each fine class, int64 (100,); DataError if a class has none or two."""
        coarse_of = np.full(NUM_FINE, -1, dtype=np.int64)
        for f in range(NUM_FINE):
            values = np.unique(self.coarse[self.fine == f])
            if len(values) != 1:
                what = "no images" if len(values) == 0 else f"superclasses {values.tolist()}"
                raise DataError(
                    f"{self.folder}: fine class {self.fine_names[f]!r} has {what}; CIFAR-100 has "
                    "600 images per class, each with one superclass. Re-download the data."
                )
            coarse_of[f] = values[0]
        return coarse_of

    def fine_id(self, name: str, split_file: str) -> int:
        """Fine label of class ``name``; DataError when CIFAR-100's meta does not list it."""
        if name not in self.fine_names:
            raise DataError(
                f"class {name!r} of {split_file} is not among the fine label names in "
                f"{self.folder / META_FILE}; the folder does not hold CIFAR-100"
            )
        return self.fine_names.index(name)

    def coarse_name(self, fine_id: int) -> str:
        """Superclass name of fine class ``fine_id``."""
        return self.coarse_names[int(self.coarse_of_fine[fine_id])]

    def subset(self, fine_ids: list[int], name: str, split: str, image_size: int) -> FewShotDataset:
        """Images of ``fine_ids`` (sorted by fine label): uint8 (N, 3, S, S), S = image_size."""
        ordered = sorted(fine_ids)
        lookup = np.full(NUM_FINE, -1, dtype=np.int64)
        lookup[ordered] = np.arange(len(ordered))
        labels = lookup[self.fine]
        keep = labels >= 0
        images = self.data[keep].reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
        return FewShotDataset(
            resize_uint8(torch.from_numpy(np.ascontiguousarray(images)), image_size),
            torch.from_numpy(labels[keep]),
            [self.fine_names[f] for f in ordered],
            name,
            split,
            str(self.folder.resolve()),
        )


def cifar_fs_fine_ids(cifar: Cifar100, split: str) -> list[int]:
    """Fine labels of the CIFAR-FS ``split``; the packaged superclass of each must match."""
    relative = f"cifar-fs/{split}.json"
    ids = []
    for superclass, cls in json.loads(packaged_split_file(relative).read_text()):
        fine = cifar.fine_id(cls, relative)
        if cifar.coarse_name(fine) != superclass:
            raise DataError(
                f"class {cls!r}: {relative} puts it in superclass {superclass!r} but the data in "
                f"{cifar.folder} labels it {cifar.coarse_name(fine)!r}; the data is not CIFAR-100"
            )
        ids.append(fine)
    return ids


def fc100_fine_ids(cifar: Cifar100, split: str) -> list[int]:
    """Fine labels of every class whose superclass is in the packaged FC100 ``split``."""
    relative = f"fc100/{split}.json"
    wanted = []
    for superclass in json.loads(packaged_split_file(relative).read_text()):
        if superclass not in cifar.coarse_names:
            raise DataError(
                f"superclass {superclass!r} of {relative} is not among the coarse label names in "
                f"{cifar.folder / META_FILE}; the folder does not hold CIFAR-100"
            )
        wanted.append(cifar.coarse_names.index(superclass))
    return [f for f in range(NUM_FINE) if int(cifar.coarse_of_fine[f]) in wanted]


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def find_cifar_dir(root: Path, spec: DatasetSpec) -> Path:
    """The ``cifar-100-python`` folder under ``root`` holding train, test and meta."""
    for candidate in CANDIDATES:
        folder = root / candidate
        if folder.is_dir():
            missing = [f for f in (*BATCH_FILES, META_FILE) if not (folder / f).is_file()]
            if missing:
                raise missing_data_error(spec, root, f"{folder} lacks {', '.join(missing)}")
            return folder
    raise missing_data_error(spec, root, "no cifar-100-python folder")


def load_cifar_split(
    spec: DatasetSpec,
    select: Callable[[Cifar100, str], list[int]],
    split: str,
    root: Path,
    image_size: int,
    cache: bool | str | Path,
    options: dict[str, Any],
) -> FewShotDataset:
    """Load ``split`` of a CIFAR-100 few-shot dataset; ``select`` picks its fine labels.

    Returns:
        images uint8 (N, 3, image_size, image_size); labels int64 (N,).
    """
    reject_options(spec.name, options)
    folder = find_cifar_dir(root, spec)
    key = {
        "dataset": spec.name,
        "split": split,
        "image_size": image_size,
        "version": LOADER_VERSION,
        "source": files_fingerprint([folder / f for f in (*BATCH_FILES, META_FILE)]),
    }

    def build() -> FewShotDataset:
        cifar = Cifar100(folder, desc=f"decode {spec.name}/{split}")
        return cifar.subset(select(cifar, split), spec.name, split, image_size)

    return cached_dataset(key, build, cache)


def load_cifar_fs(
    split: str, root: Path, image_size: int, cache: bool | str | Path, **options: Any
) -> FewShotDataset:
    """CIFAR-FS ``split`` (64/16/20 classes): images uint8 (N, 3, S, S), labels int64 (N,)."""
    return load_cifar_split(
        CIFAR_FS_SPEC, cifar_fs_fine_ids, split, root, image_size, cache, options
    )


def load_fc100(
    split: str, root: Path, image_size: int, cache: bool | str | Path, **options: Any
) -> FewShotDataset:
    """FC100 ``split`` (60/20/20 classes): images uint8 (N, 3, S, S), labels int64 (N,)."""
    return load_cifar_split(FC100_SPEC, fc100_fine_ids, split, root, image_size, cache, options)


CIFAR_FS_SPEC = register_dataset(
    DatasetSpec(
        name="cifar-fs",
        loader=load_cifar_fs,
        splits=SPLITS,
        default_image_size=NATIVE_SIZE,
        layout=LAYOUT,
        origin=ORIGIN,
        description="CIFAR-FS (Bertinetto et al. 2019): CIFAR-100, 64/16/20 classes",
    )
)

FC100_SPEC = register_dataset(
    DatasetSpec(
        name="fc100",
        loader=load_fc100,
        splits=SPLITS,
        default_image_size=NATIVE_SIZE,
        layout=LAYOUT,
        origin=ORIGIN,
        description="FC100 (Oreshkin et al. 2018): CIFAR-100 by superclass, 60/20/20 classes",
    )
)
