"""Episodes: determinism (in process, across processes, pinned digest), structure, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_dataset

from ptx_utils.data import DataError, FewShotDataset, load_dataset
from ptx_utils.data.episodes import sample_episodes

# Pinned digest of sample_episodes(synthetic test split, 5, 1, 15, 600, seed=0). The episodes
# depend only on class names and per-class counts, so this must hold on every machine and
# version; a change here changes every published number.
PINNED_SYNTHETIC_DIGEST = "6690d07835e6f24e4b8ff32c54c9423f82b984a0767e2f6798e859779506e4bb"


def test_same_seed_same_episodes_different_seed_different(synthetic_test: FewShotDataset) -> None:
    a = sample_episodes(synthetic_test, 5, 1, 15, 50, seed=3)
    b = sample_episodes(synthetic_test, 5, 1, 15, 50, seed=3)
    c = sample_episodes(synthetic_test, 5, 1, 15, 50, seed=4)
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()
    assert not np.array_equal(a.classes, c.classes)


def test_episode_i_does_not_depend_on_how_many_were_asked(synthetic_test: FewShotDataset) -> None:
    short = sample_episodes(synthetic_test, 5, 5, 15, 10, seed=0)
    long = sample_episodes(synthetic_test, 5, 5, 15, 100, seed=0)
    assert short.digest() == long[:10].digest()
    assert long[7].digest() == short[7].digest()


def test_structure(synthetic_test: FewShotDataset) -> None:
    eps = sample_episodes(synthetic_test, n_way=5, k_shot=3, n_query=7, n_episodes=40, seed=1)
    assert eps.classes.shape == (40, 5)
    assert eps.support.shape == (40, 5, 3) and eps.query.shape == (40, 5, 7)
    labels = synthetic_test.labels.numpy()
    for i in range(len(eps)):
        assert len(set(eps.classes[i])) == 5  # distinct classes
        for j, c in enumerate(eps.classes[i]):
            s, q = eps.support[i, j], eps.query[i, j]
            assert (labels[s] == c).all() and (labels[q] == c).all()
            assert len(set(s) | set(q)) == 3 + 7  # support and query never overlap
    # every class of the split is used, roughly uniformly
    counts = np.bincount(eps.classes.ravel(), minlength=synthetic_test.num_classes)
    assert counts.min() > 0


def test_tensors_are_stacked_and_labelled(synthetic_test: FewShotDataset) -> None:
    eps = sample_episodes(synthetic_test, 5, 2, 4, 6, seed=0)
    batch = eps.tensors(synthetic_test)
    assert batch.support_images.shape == (6, 10, 3, 16, 16)
    assert batch.query_images.shape == (6, 20, 3, 16, 16)
    assert batch.support_images.dtype == torch.uint8
    assert batch.support_labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_labels.shape == (6, 20)
    # the images are those of the indexed dataset rows, class-major
    e, j = 4, 3
    expected = synthetic_test.images[torch.from_numpy(eps.support[e, j])]
    assert torch.equal(batch.support_images[e, 2 * j : 2 * j + 2], expected)


def test_tensors_refuse_another_split(synthetic_test: FewShotDataset) -> None:
    eps = sample_episodes(synthetic_test, 5, 1, 5, 2, seed=0)
    other = make_dataset([30] * 20)
    with pytest.raises(DataError, match="another dataset split"):
        eps.tensors(other)


def test_digest_pinned_and_identical_in_a_separate_process() -> None:
    code = (
        "from ptx_utils.data import load_dataset;"
        "from ptx_utils.data.episodes import sample_episodes;"
        "ds = load_dataset('synthetic', 'test', image_size=16, images_per_class=100);"
        "print(sample_episodes(ds, 5, 1, 15, 600, seed=0).digest())"
    )
    digests = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert digests[0] == digests[1] == PINNED_SYNTHETIC_DIGEST


def test_episodes_are_the_same_across_shift_levels(synthetic_test: FewShotDataset) -> None:
    shifted = load_dataset("synthetic", "test", image_size=16, images_per_class=30, shift=1.0)
    assert not torch.equal(shifted.images, synthetic_test.images)
    same = [sample_episodes(ds, 5, 1, 5, 20, seed=0).digest() for ds in (synthetic_test, shifted)]
    assert same[0] == same[1]


def test_too_few_classes_is_a_clear_error() -> None:
    ds = make_dataset([30] * 4)
    with pytest.raises(DataError, match=r"toy/test has 4 classes, fewer than n_way=5"):
        sample_episodes(ds, n_way=5, k_shot=1, n_query=15)


def test_class_with_too_few_images_is_named() -> None:
    ds = make_dataset([30, 30, 12, 30, 30, 30])
    with pytest.raises(DataError, match=r"fewer than k_shot \+ n_query = 20 images: class2 \(12\)"):
        sample_episodes(ds, n_way=5, k_shot=5, n_query=15)


@pytest.mark.parametrize(("n_way", "k_shot", "n_query"), [(0, 1, 15), (5, 0, 15), (5, 1, -1)])
def test_nonsense_parameters(n_way: int, k_shot: int, n_query: int) -> None:
    with pytest.raises(DataError, match="need n_way >= 1"):
        sample_episodes(make_dataset([30] * 6), n_way, k_shot, n_query)
