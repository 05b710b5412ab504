"""MAML at test time as a strategy: the meta-trained backbone and head adapted per support set.

A ``classifier="maml"`` strategy names a MAML checkpoint in ``loads`` (``"best.pt#sha256"``);
both engines read it (weights only, hash checked), normalise every forward by its own batch
statistics and take ``steps`` full-batch SGD steps (no momentum) at the scheme's rate. The
batched engine runs a chunk of replicas at once (:func:`~ptx_utils.pretraining.maml.adapted_logits`
under ``vmap``, or looped on a CPU); the sequential reference uses ``torch.autograd``.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.protocol import check_record_within
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import create_head
from ptx_utils.models.checkpoint import backbone_from_checkpoint, read_reference
from ptx_utils.pretraining.maml import MamlNet, Tasks, adapt_loop, adapted_logits, maml_params


@functools.lru_cache(maxsize=4)
def load_maml(reference: str) -> dict[str, Any]:
    """The checkpoint of a ``"path#sha256"`` reference to a MAML run, its hash checked."""
    file, blob = read_reference(
        reference, "MAML checkpoint", "meta-train one with pretrain(PretrainConfig(method='maml'))"
    )
    ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if ckpt.get("meta", {}).get("method") != "maml":
        raise ValueError(f"{file} is not a MAML checkpoint (method {ckpt['meta'].get('method')!r})")
    return ckpt


def maml_reference(path: str | Path) -> str:
    """``"path#sha256"`` of a MAML checkpoint: what a ``classifier="maml"`` strategy loads."""
    return f"{path}#{hashlib.sha256(Path(path).read_bytes()).hexdigest()}"


def maml_net(
    reference: str, n_way: int, device: torch.device
) -> tuple[MamlNet, dict[str, torch.Tensor]]:
    """The checkpoint's network (batch-statistics BN) and its meta-parameters on ``device``."""
    ckpt = load_maml(reference)
    backbone, _ = backbone_from_checkpoint(ckpt, reference.rpartition("#")[0])
    outputs = int(ckpt["head"]["weight"].shape[0])
    if outputs != n_way:
        raise ValueError(
            f"the MAML head has {outputs} outputs but the episodes are {n_way}-way; "
            f"meta-train with train_way={n_way}"
        )
    head = create_head("linear", backbone.out_dim, outputs)
    head.load_state_dict(ckpt["head"])
    backbone, head = backbone.to(device), head.to(device)
    return MamlNet(backbone, head), {k: v.detach() for k, v in maml_params(backbone, head).items()}


def _checked(strategy: Strategy, record: Sequence[int]) -> tuple[float, int]:
    """The strategy's rate and steps; ``record`` points beyond the steps are refused."""
    assert strategy.path == "maml" and strategy.steps is not None
    check_record_within(tuple(record), strategy.steps, "steps")
    return strategy.head_lr, strategy.steps


def maml_sequential(
    strategy: Strategy,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    record: Sequence[int] = (),
) -> torch.Tensor:
    """One replica by ``torch.autograd``: query logits (S + 1, Q, n_way) after each of
    ``record`` steps and after all ``steps``."""
    lr, steps = _checked(strategy, record)
    device = support_images.device
    net, params = maml_net(strategy.loads[0], n_way, device)
    xs, xq = normalize(support_images), normalize(query_images)
    ys = support_labels.to(device)
    out, done = [], 0
    for n in (*record, steps):
        params = adapt_loop(net, params, xs, ys, n - done, lr)
        done = n
        with torch.no_grad():
            out.append(functional_call(net, params, (xq,)))
    return torch.stack(out)


def maml_batched(
    strategies: Sequence[Strategy],
    episodes: Sequence[int],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    vectorize: bool,
    record: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk of replicas of one strategy at once: logits (R, S + 1, Q, n_way), diverged (R,)."""
    strategy = strategies[0]  # the engine groups replicas by checkpoint, steps and rate
    lr, steps = _checked(strategy, record)
    device = support_images.device
    net, params = maml_net(strategy.loads[0], n_way, device)
    idx = torch.as_tensor(list(episodes), device=device)
    norm = [
        normalize(x[idx].flatten(0, 1)).unflatten(0, x[idx].shape[:2])
        for x in (support_images, query_images)
    ]
    unused = torch.zeros(norm[1].shape[:2], dtype=torch.long, device=device)  # query labels
    tasks = Tasks(norm[0], support_labels[idx], norm[1], unused)
    logits = adapted_logits(net, params, tasks, (*record, steps), lr, vectorize)
    diverged = ~torch.isfinite(logits).flatten(1).all(1)
    return logits, diverged
