"""n-way k-shot q-query episodes, a pure function of (dataset, split, n_way, k_shot, n_query, seed).

Episode ``i`` is drawn from its own random stream, ``SeedSequence(seed, spawn_key=(dataset
fingerprint, i))`` feeding PCG64, using only the bit generator's raw output and a stable argsort —
algorithms that NumPy fixes across versions and platforms. So the list of episodes is the same in
any process, on any machine, in any order of access, and episode ``i`` does not depend on how many
episodes were asked for. The global random state is never touched.

Within an episode, position ``j`` of ``classes`` is the episode label ``j``; support and query
images of one class never overlap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.errors import DataError


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes as stacked tensors, ready for batching.

    Attributes:
        support_images: uint8 (E, n_way * k_shot, C, H, W), class-major (label 0's shots first).
        support_labels: int64 (E, n_way * k_shot), values in [0, n_way).
        query_images: uint8 (E, n_way * n_query, C, H, W), class-major.
        query_labels: int64 (E, n_way * n_query).
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor


@dataclass(frozen=True)
class Episodes:
    """A fixed list of E episodes over one dataset split (indices only; no pixels).

    Attributes:
        classes: int64 (E, n_way): dataset class ids; column j is episode label j.
        support: int64 (E, n_way, k_shot): dataset image indices.
        query: int64 (E, n_way, n_query): dataset image indices.
        dataset_fingerprint: :meth:`FewShotDataset.fingerprint` of the split they index.
        seed: the seed they were drawn from.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    dataset_fingerprint: str
    seed: int

    @property
    def n_way(self) -> int:
        return int(self.classes.shape[1])

    @property
    def k_shot(self) -> int:
        return int(self.support.shape[2])

    @property
    def n_query(self) -> int:
        return int(self.query.shape[2])

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def __getitem__(self, index: int | slice) -> Episodes:
        """A sub-list (an int gives a list of one episode), same seed and fingerprint."""
        sel = slice(index, index + 1) if isinstance(index, int) else index
        if isinstance(index, int) and not -len(self) <= index < len(self):
            raise IndexError(f"episode {index} out of range for {len(self)} episodes")
        return Episodes(
            self.classes[sel],
            self.support[sel],
            self.query[sel],
            self.dataset_fingerprint,
            self.seed,
        )

    def digest(self) -> str:
        """SHA-256 of the index arrays: equal digests mean identical episodes."""
        h = hashlib.sha256()
        for a in (self.classes, self.support, self.query):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()

    def labels(self, per_class: int) -> torch.Tensor:
        """Episode labels for a class-major block: int64 (n_way * per_class,)."""
        return torch.arange(self.n_way).repeat_interleave(per_class)

    def tensors(self, dataset: FewShotDataset) -> EpisodeBatch:
        """Gather the images of these episodes from ``dataset`` (the split they were drawn from)."""
        if dataset.fingerprint() != self.dataset_fingerprint:
            raise DataError(
                f"these episodes were drawn from another dataset split (fingerprint "
                f"{self.dataset_fingerprint}), not {dataset.name}/{dataset.split} "
                f"({dataset.fingerprint()}); sample episodes from the split you pass"
            )
        e = len(self)

        def gather(idx: np.ndarray) -> torch.Tensor:
            flat = torch.from_numpy(idx.reshape(-1))
            return dataset.images[flat].reshape(
                e, idx.shape[1] * idx.shape[2], *dataset.images.shape[1:]
            )

        return EpisodeBatch(
            support_images=gather(self.support),
            support_labels=self.labels(self.k_shot).expand(e, -1).clone(),
            query_images=gather(self.query),
            query_labels=self.labels(self.n_query).expand(e, -1).clone(),
        )


def check_episode_parameters(
    dataset: FewShotDataset,
    n_way: int,
    k_shot: int,
    n_query: int,
    names: tuple[str, str, str] = ("n_way", "k_shot", "n_query"),
) -> None:
    """Raise a :class:`DataError` saying what to change when the split cannot supply episodes;
    ``names``: what the caller calls the three numbers (e.g. a config's fields)."""
    way, shot, query = names
    if n_way < 1 or k_shot < 1 or n_query < 0:
        raise DataError(
            f"need {way} >= 1, {shot} >= 1, {query} >= 0; got {n_way}, {k_shot}, {n_query}"
        )
    where = f"{dataset.name}/{dataset.split}"
    if dataset.num_classes < n_way:
        raise DataError(
            f"{where} has {dataset.num_classes} classes, fewer than {way}={n_way}; "
            f"lower {way} or use a split with more classes"
        )
    counts = dataset.class_counts()
    small = np.flatnonzero(counts < k_shot + n_query)
    if len(small):
        listed = ", ".join(f"{dataset.class_names[c]} ({counts[c]})" for c in small[:5])
        raise DataError(
            f"{where}: {len(small)} class(es) have fewer than {shot} + {query} = "
            f"{k_shot + n_query} images: {listed}{' ...' if len(small) > 5 else ''}; the "
            f"smallest has {counts.min()}, so {shot} + {query} must be at most {counts.min()} "
            "(or remove those classes)"
        )


def _first_m_of_permutation(bits: np.random.PCG64, n: int, m: int) -> np.ndarray:
    """The first ``m`` entries of a uniformly random permutation of range(n), version-stable."""
    keys = bits.random_raw(n)
    return np.argsort(keys, kind="stable")[:m]


def sample_episodes(
    dataset: FewShotDataset,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    n_episodes: int = 600,
    seed: int = 0,
) -> Episodes:
    """Draw ``n_episodes`` n-way k-shot q-query episodes from ``dataset``, deterministically.

    Returns:
        :class:`Episodes` with classes (E, n_way), support (E, n_way, k_shot) and query
        (E, n_way, n_query) index arrays.
    """
    check_episode_parameters(dataset, n_way, k_shot, n_query)
    if n_episodes < 1:
        raise DataError(f"n_episodes must be >= 1, got {n_episodes}")
    fingerprint = dataset.fingerprint()
    stream = int(fingerprint, 16)
    per_class = dataset.class_indices()
    classes = np.empty((n_episodes, n_way), dtype=np.int64)
    chosen = np.empty((n_episodes, n_way, k_shot + n_query), dtype=np.int64)
    for i in range(n_episodes):
        bits = np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(stream, i)))
        classes[i] = _first_m_of_permutation(bits, dataset.num_classes, n_way)
        for j, c in enumerate(classes[i]):
            members = per_class[c]
            chosen[i, j] = members[_first_m_of_permutation(bits, len(members), k_shot + n_query)]
    return Episodes(classes, chosen[:, :, :k_shot], chosen[:, :, k_shot:], fingerprint, int(seed))


@dataclass(frozen=True)
class EpisodeSetting:
    """An episode protocol: ``n_way`` classes, ``k_shot`` support and ``n_query`` query images
    per class, ``n_episodes`` episodes.

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> test = load_dataset("synthetic", "test", image_size=16, images_per_class=20)
        >>> len(EpisodeSetting(n_way=5, k_shot=1, n_query=15, n_episodes=3).sample(test, seed=0))
        3
    """

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    n_episodes: int = 600

    def sample(self, dataset: FewShotDataset, seed: int = 0) -> Episodes:
        """:func:`sample_episodes` of this setting."""
        return sample_episodes(
            dataset, self.n_way, self.k_shot, self.n_query, self.n_episodes, seed
        )

    def with_shot(self, k_shot: int) -> EpisodeSetting:
        """The same setting with ``k_shot`` support images per class."""
        return replace(self, k_shot=int(k_shot))
