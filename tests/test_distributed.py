"""Replicas spread over workers give the local numbers: the chunk plan, and a local Ray runtime
(search and evaluation, Ray vs here, exactly equal)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from ptx_utils.core.runtime import Executor, Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    finetune_batched,
    full_finetune,
    linear_probe,
    lt_ncc,
    nearest_centroid,
    spottune,
)
from ptx_utils.finetuning.batched import chunk_plan
from ptx_utils.search import SearchConfig, search

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = FinetuneConfig(head="cosine", passes=1)
STRATEGIES = [
    linear_probe(4), Scheme((0, 0, 0.01, 0.1)), full_finetune(4), nearest_centroid(4),
    lt_ncc(4, steps=3), spottune(4),
]  # fmt: skip


def test_each_planned_chunk_alone_gives_the_full_runs_numbers(conv4, tiny_episodes) -> None:
    eb: EpisodeBatch = tiny_episodes[1]
    replicas = [Replica(s, e, 7 + e) for e in (1, 0) for s in STRATEGIES]
    args = (eb.support_images, eb.support_labels, eb.query_images, 5, CFG)
    full = finetune_batched(conv4, replicas, *args, chunk_size=2, progress=False)
    plan = chunk_plan(conv4, replicas, eb.support_images, eb.query_images, CFG, chunk_size=2)
    assert sorted(i for chunk in plan for i in chunk) == list(range(len(replicas)))
    for chunk in plan:
        alone = finetune_batched(
            conv4, [replicas[i] for i in chunk], *args, chunk_size=2, progress=False
        )
        assert torch.equal(alone.logits, full.logits[chunk]), [replicas[i].strategy for i in chunk]


def test_executor_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="executor must be one of"):
        Runtime(executor="dask")
    with pytest.raises(ValueError, match="workers must be"):
        Executor("ray", workers=0)
    assert Runtime(executor="ray", ray_address="auto").where() == Executor("ray", "auto")


def test_a_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptx_utils.finetuning import ray_executor

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'ptx-kit\[ray\]'"):
        ray_executor.connect()


@pytest.mark.slow
def test_on_a_local_ray_runtime(
    conv4, synthetic_test: FewShotDataset, tmp_path, monkeypatch
) -> None:
    """One Ray runtime of 2 CPUs (started once: it is the costly part) for the three checks."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ptx-kit[ray]')")
    from ptx_utils.finetuning import ray_executor

    ray_executor.connect(num_cpus=2)
    try:
        _evaluation_and_search_equal_local(conv4, synthetic_test)
        _a_search_started_on_ray_resumes_here(conv4, synthetic_test, tmp_path)
        _a_killed_worker_is_replaced(ray, conv4, synthetic_test, monkeypatch)
    finally:
        ray_executor.shutdown()


HERE = Runtime(progress=False, precision="fp32", chunk_size=2)
THERE = Runtime(progress=False, precision="fp32", chunk_size=2, executor="ray", ray_workers=2)


def _evaluation_and_search_equal_local(conv4, synthetic_test: FewShotDataset) -> None:
    eps = sample_episodes(synthetic_test, 5, 1, 3, 2, seed=2)
    named = {f"s{i}": s for i, s in enumerate(STRATEGIES)}
    local = evaluate_strategies(conv4, named, synthetic_test, eps, CFG, HERE).rows
    remote = evaluate_strategies(conv4, named, synthetic_test, eps, CFG, THERE).rows
    np.testing.assert_array_equal(remote["accuracy"].to_numpy(), local["accuracy"].to_numpy())
    config = SearchConfig(population=3, generations=2, top_k=2, seed=0)
    found = {
        name: search(conv4, synthetic_test, eps, config, CFG, runtime=runtime)
        for name, runtime in (("local", HERE), ("ray", THERE))
    }
    assert found["ray"].best.scheme == found["local"].best.scheme
    assert [c.fitness for c in found["ray"].candidates] == [
        c.fitness for c in found["local"].candidates
    ]


def _a_search_started_on_ray_resumes_here(conv4, synthetic_test, tmp_path) -> None:
    """The driver keeps the state: a search stopped after one generation on Ray and finished
    here (as after a driver killed, on another cluster) equals one run here."""
    eps = sample_episodes(synthetic_test, 5, 1, 3, 2, seed=5)
    short, full = (SearchConfig(population=3, generations=g, top_k=2, seed=1) for g in (1, 2))
    search(conv4, synthetic_test, eps, short, CFG, tmp_path / "split", runtime=THERE)
    resumed = search(conv4, synthetic_test, eps, full, CFG, tmp_path / "split", runtime=HERE)
    whole = search(conv4, synthetic_test, eps, full, CFG, tmp_path / "whole", runtime=HERE)
    assert [c.fitness for c in resumed.candidates] == [c.fitness for c in whole.candidates]
    assert resumed.best.scheme == whole.best.scheme


def _a_killed_worker_is_replaced(ray, conv4, synthetic_test, monkeypatch) -> None:
    """A worker killed while its chunks are pending is restarted; the numbers hold."""
    import os
    import signal

    from ptx_utils.finetuning import ray_executor

    eps = sample_episodes(synthetic_test, 5, 1, 3, 4, seed=3)
    named = {"full": full_finetune(4), "probe": linear_probe(4)}
    local = evaluate_strategies(conv4, named, synthetic_test, eps, CFG, HERE).rows
    pids = [ray.get(w.pid.remote()) for w in ray_executor.workers(ray, 2)]
    real_wait, killed = ray.wait, []

    def wait_after_killing(*args, **kwargs):  # the chunks are submitted: kill a busy worker
        if not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait_after_killing)
    remote = evaluate_strategies(conv4, named, synthetic_test, eps, CFG, THERE).rows
    monkeypatch.setattr(ray, "wait", real_wait)
    assert killed
    np.testing.assert_array_equal(remote["accuracy"].to_numpy(), local["accuracy"].to_numpy())
    after = [ray.get(w.pid.remote()) for w in ray_executor.workers(ray, 2)]
    assert after[0] != pids[0] and after[1] == pids[1]  # the killed worker was restarted
