"""Shared fixtures: a private decoded-image cache, small datasets, and the real-data switch.

Under pytest-xdist (``make test`` runs ``pytest -n auto --dist worksteal``) every worker, and
every notebook kernel it starts, uses one torch thread: two workers of two threads each on a
2-core machine would wait on each other at every kernel call. The tests marked ``slow`` are
spread over the workers' first shares (:func:`pytest_collection_modifyitems`); the tests that
only read the shared smoke run (:func:`smoke_run`, marker ``smoke_reader``) follow the test
that makes it on the same worker, so none waits for it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported, and for the kernels
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.models import Backbone, create_backbone

DATA_ROOT = os.environ.get("PTX_DATA_ROOT")
requires_data_root = pytest.mark.skipif(
    not DATA_ROOT, reason="PTX_DATA_ROOT is not set: real-data tests need the shared data folder"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests first. Under ``-n N --dist worksteal`` (which hands worker i the i-th
    of N equal contiguous parts of the collection, then lets idle workers steal from the tail of
    busy ones) the slow tests are dealt round-robin to the heads of the N parts, so every worker
    starts on its share of them; the other tests keep their order and fill the parts. The first
    part starts with the test that makes the shared smoke run (:func:`smoke_run`) and then the
    ones that only read it (``smoke_reader``): one worker runs them in turn, none waits, and
    the other slow tests go to the other workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    readers = [item for item in items if item.get_closest_marker("smoke_reader")]
    makers = [
        item
        for item in items
        if "smoke_run" in getattr(item, "fixturenames", ()) and item not in readers
    ]
    first = makers + readers
    rest = [item for item in items if item not in first]
    slow = [item for item in rest if item.get_closest_marker("slow")]
    fast = [item for item in rest if not item.get_closest_marker("slow")]
    # the smoke chain is the longest block: the other slow tests go to the other workers first
    dealt = [p for p in range(workers) if not (first and workers > 1 and p == 0)]
    parts: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for n, item in enumerate(slow):
        parts[dealt[n % len(dealt)]].append(item)
    parts[0][:0] = first
    left = len(items)
    for i, part in enumerate(parts):
        size = left // (workers - i)  # what worksteal sends worker i first
        take = max(0, size - len(part))
        part.extend(fast[:take])
        del fast[:take]
        left -= len(part)
    parts[-1].extend(fast)
    items[:] = [item for part in parts for item in part]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``ptx run --preset smoke`` on the synthetic data, made once per test session
    and shared by the xdist workers (a file lock; the first to ask runs it). Read it only: a
    test that changes a run works on a copy (:func:`copy_run`). ``$PTX_TEST_SMOKE_RUN`` names
    a finished smoke run to use instead (quicker when working on the tests that read it)."""
    if given := os.environ.get("PTX_TEST_SMOKE_RUN"):
        return Path(given)

    from filelock import FileLock

    from ptx_utils.running.cli import main

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-smoke"
    root.mkdir(exist_ok=True)
    # the run alone in its runs root, so notebook 05 finds only it
    run_dir, done = root / "runs" / "smoke-run", root / "smoke-run.done"
    with FileLock(str(root / "smoke-run.lock")):
        if not done.exists():
            if run_dir.exists():
                pytest.fail(f"the shared smoke run in {run_dir} failed earlier in this session")
            assert main(["run", "--preset", "smoke", "--run-dir", str(run_dir)]) == 0
            done.touch()
    return run_dir


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of a run directory (file times kept) that a test may change."""
    return Path(shutil.copytree(run_dir, to, symlinks=True))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never write the user's ~/.cache during tests (unless PTX_CACHE_DIR says where)."""
    if "PTX_CACHE_DIR" not in os.environ:
        os.environ["PTX_CACHE_DIR"] = str(tmp_path_factory.mktemp("ptx-cache"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): its batches
    are tiny, and on a 2-core machine shared with another busy process torch's multi-threaded
    kernels wait for a core on every call, many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def conv4() -> Backbone:
    """A randomly initialised RGB Conv4 for 16x16 images (seed 0): the engines' test backbone."""
    torch.manual_seed(0)
    return create_backbone("conv4", in_channels=3, image_size=16)


@pytest.fixture(scope="session")
def synthetic_test() -> FewShotDataset:
    """The synthetic novel split at 16x16 with 30 images per class (fast to render)."""
    return load_dataset("synthetic", "test", image_size=16, images_per_class=30)


@pytest.fixture(scope="session")
def tiny_episodes(synthetic_test: FewShotDataset) -> dict[int, EpisodeBatch]:
    """Two 5-way episodes with 3 queries per class, 1- and 5-shot, as stacked tensors."""
    return {
        shot: sample_episodes(synthetic_test, 5, shot, 3, 2, seed=4).tensors(synthetic_test)
        for shot in (1, 5)
    }


def make_dataset(counts: list[int], size: int = 8, name: str = "toy") -> FewShotDataset:
    """A dataset whose class ``c`` has ``counts[c]`` images; pixel value = image index % 256."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = (torch.arange(len(labels)) % 256).to(torch.uint8)
    images = images.view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()
    return FewShotDataset(images, labels, [f"class{c}" for c in range(len(counts))], name, "test")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
