"""Replicas on a Ray cluster: the batched engine's chunks spread over worker actors.

Each worker actor (one per GPU, else one per CPU core) holds the backbone and the episode tensors
once, from the object store; the driver splits the replicas into the chunks
:func:`~ptx_utils.finetuning.batched.chunk_plan` gives — those the local engine trains — and
gathers the results in order, so a run on Ray gives the local numbers. Workers restart and their
tasks are retried when a worker dies. Ray is optional (``pip install 'ptx-kit[ray]'``).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ptx_utils.finetuning.batched import Replica, chunk_plan
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import Backbone

#: What to do when Ray is missing.
INSTALL_HINT = "Ray is not installed: pip install 'ptx-kit[ray]' (or pip install ray)"
#: How many backbones and episode sets the driver keeps in the object store, and each worker.
KEEP = 4
_POOL: dict[str, Any] = {}
_REFS: OrderedDict[tuple[int, ...], Any] = OrderedDict()


def _remember(cache: OrderedDict, key: Any, make: Any) -> Any:
    """``cache[key]``, made by ``make()`` when missing; only the newest :data:`KEEP` stay."""
    if key not in cache:
        cache[key] = make()
        while len(cache) > KEEP:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"executor 'ray' needs Ray. {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Attach to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``)
    or, with None, start a local Ray runtime (``num_cpus`` of them); return the ``ray`` module.

    Raises:
        ConnectionError: the cluster cannot be reached (the message names the address).
    """
    ray = _ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=address, num_cpus=num_cpus if address is None else None,
            include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
        )  # fmt: skip
    except ConnectionError as exc:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); start one with `ray start "
            "--head` or give executor='local'"
        ) from None
    return ray


def shutdown() -> None:
    """Forget the worker pool and the object-store copies, and stop Ray (when it runs)."""
    _POOL.clear()
    _REFS.clear()
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


class _Worker:
    """One worker: keeps the backbone and the episode tensors it was sent, by object id."""

    def __init__(self) -> None:
        torch.set_num_threads(int(os.environ.get("PTX_WORKER_THREADS", "1")))
        self.cache: OrderedDict[str, Any] = OrderedDict()
        gpus = _ray().get_gpu_ids()
        self.device = torch.device("cuda", 0) if gpus else torch.device("cpu")

    def _get(self, holder: list[Any]) -> Any:
        ref = holder[0]  # wrapped in a list so Ray passes the reference, not the value

        def fetch() -> Any:
            value = _ray().get(ref)
            if isinstance(value, tuple):
                return tuple(t.to(self.device) for t in value)
            return value.to(self.device)

        return _remember(self.cache, ref.hex(), fetch)

    def pid(self) -> int:
        return os.getpid()

    def run(
        self, model: list[Any], tensors: list[Any], work: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        from ptx_utils.finetuning.replicas import _run_replicas

        logits, diverged, recorded = _run_replicas(
            self._get(model), work["strategies"], work["episodes"], work["seeds"],
            self._get(tensors), work["n_way"], work["cfg"], work["engine"], work["chunk_size"],
            False, "", work["precision"], work["record"],
        )  # fmt: skip
        cpu = None if recorded is None else recorded.cpu()
        return logits.cpu(), diverged.cpu(), cpu


def workers(ray: Any, n: int | None = None) -> list[Any]:
    """The pool's actors (created once): ``n``, else one per GPU, else one per CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    count = n or gpus or max(1, int(resources.get("CPU", 1)))
    key = f"{count}:{gpus}"
    if key not in _POOL:
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                            max_restarts=-1, max_task_retries=-1)(_Worker)  # fmt: skip
        _POOL.clear()
        _POOL[key] = [remote.remote() for _ in range(count)]
    return _POOL[key]


def _put(ray: Any, obj: Any) -> list[Any]:
    """The object-store reference of ``obj`` (a backbone or a tensor tuple), put once."""
    key = (id(obj),) if not isinstance(obj, tuple) else tuple(id(t) for t in obj)

    def put() -> tuple[Any, Any]:
        value = tuple(t.cpu() for t in obj) if isinstance(obj, tuple) else _cpu_copy(obj)
        return obj, ray.put(value)  # obj kept alive with its entry, so its id is not reused

    return [_remember(_REFS, key, put)[1]]


def _cpu_copy(model: Backbone) -> Backbone:
    import copy

    first = next(model.parameters())
    return model if first.device.type == "cpu" else copy.deepcopy(model).cpu()


def run_replicas_ray(
    model: Backbone,
    strategies: Sequence[Strategy],
    episode_index: Sequence[int],
    seeds: Sequence[int],
    episode_tensors: tuple[torch.Tensor, ...],
    n_way: int,
    cfg: FinetuneConfig,
    engine: str,
    chunk_size: int | None,
    progress: bool,
    desc: str,
    precision: str,
    record: Sequence[int] | None = None,
    address: str | None = None,
    n_workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`~ptx_utils.finetuning.replicas.replica_accuracies`' engines on Ray workers, chunk
    by chunk: (logits (R, Q, n_way), diverged (R,), recorded or None) on the tensors' device."""
    ray = connect(address)
    pool = workers(ray, n_workers)
    dev = episode_tensors[3].device
    triples = zip(strategies, episode_index, seeds, strict=True)
    replicas = [Replica(s, e, sd) for s, e, sd in triples]
    support, _, query, _ = episode_tensors
    chunks = (
        chunk_plan(model, replicas, support, query, cfg, chunk_size)
        if engine == "batched"
        else [[i] for i in range(len(replicas))]
    )
    model_ref, tensor_ref = _put(ray, model), _put(ray, tuple(episode_tensors))
    pending = {}
    for j, idx in enumerate(chunks):
        work = {
            "strategies": [strategies[i] for i in idx], "episodes": [episode_index[i] for i in idx],
            "seeds": [seeds[i] for i in idx], "n_way": n_way, "cfg": cfg, "engine": engine,
            "chunk_size": chunk_size, "precision": precision,
            "record": None if record is None else list(record),
        }  # fmt: skip
        pending[pool[j % len(pool)].run.remote(model_ref, tensor_ref, work)] = j
    results: dict[int, Any] = {}
    bar = tqdm(total=len(replicas), desc=f"{desc} (Ray, {len(pool)} workers)", unit="replica",
               disable=not progress)  # fmt: skip
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            j = pending.pop(done[0])
            results[j] = ray.get(done[0])
            bar.update(len(chunks[j]))
    finally:
        bar.close()
    n = len(replicas)
    logits = torch.full((n, query.shape[1], n_way), float("nan"))
    diverged = torch.zeros(n, dtype=torch.bool)
    recorded = (
        None if record is None else torch.full((n, len(record), query.shape[1], n_way), math.nan)
    )
    for j, idx in enumerate(chunks):
        out, div, rec = results[j]
        sel = torch.tensor(idx, dtype=torch.long)
        logits[sel], diverged[sel] = out, div
        if recorded is not None:
            recorded[sel] = rec
    return logits.to(dev), diverged.to(dev), None if recorded is None else recorded.to(dev)
