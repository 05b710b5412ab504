"""Datasets by name, from local files only: ``load_dataset(name, split, root=..., image_size=...)``.

Registered datasets: ``synthetic`` (embedded, generated, with a domain-shift dial), ``omniglot``,
``mini-imagenet``, ``cub``, ``cifar-fs``, ``fc100`` and ``folder`` (any folder of class
sub-folders). Real data lives under a data root (``root=`` or ``$PTX_DATA_ROOT``); decoded images
are cached on disk (``$PTX_CACHE_DIR``) and memory-mapped.
"""

from ptx_utils.data import (  # noqa: F401  (importing a loader module registers it)
    cifar,
    cub,
    folder,
    mini_imagenet,
    omniglot,
    synthetic,
)
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.check import check_dataset, format_report
from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import DatasetSpec, get_dataset_spec, list_datasets, load_dataset

__all__ = [
    "DataError",
    "DatasetSpec",
    "FewShotDataset",
    "check_dataset",
    "format_report",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
]
