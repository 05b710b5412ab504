"""Batched fine-tuning: many (scheme, episode, seed) replicas in one vmapped computation.

The protocol is :mod:`ptx_utils.finetuning.protocol`'s; :func:`finetune_batched` gives, replica by replica,
the query logits :func:`~ptx_utils.finetuning.protocol.finetune_sequential` gives (up to floating point),
but trains a whole chunk of replicas at once: every replica's weights are stacked along a leading
dimension and one step of all of them is ``vmap(grad(functional_call(...)))``. Each replica keeps
its own weights, support set (gathered from its episode), mini-batch order and head
initialisation (both from :func:`~ptx_utils.finetuning.protocol.replica_plan`, so identical to the
reference) and per-layer learning rates. SGD is written out functionally and matches
``torch.optim.SGD``: ``g = grad + wd * p``; first step ``buf = g``, later
``buf = momentum * buf + (1 - dampening) * g``; ``p = p - lr * buf``. A parameter whose rate is
0 in a replica never changes there (no weight decay, no momentum: the reference leaves it out of
its optimizer); a parameter frozen in every replica of a chunk is not stacked at all.

Savings beyond batching:

- **Frozen prefix**: the backbone's forward is split into *stages* (ConvNet blocks, ResNet stem
  and residual blocks; any other backbone is one stage). When the first ``k`` stages are frozen in
  every replica of a chunk, their output is computed once per episode (no grad) and the steps run
  only the rest. Replicas are grouped into chunks by their frozen prefix so the saving applies.
  Frozen layers keep batch norm in eval mode in both BN modes, so the prefix is exact in both.
- **Chunks**: ``chunk_size=None`` sizes chunks from free GPU memory (a fixed
  :data:`CPU_CHUNK_SIZE` on CPU); on a CUDA out-of-memory error the chunk size halves and the
  chunk is retried.

Batch norm: ``bn_mode="eval"`` uses the running statistics; ``"train"`` normalises layers with a
non-zero rate with batch statistics and updates per-replica running statistics (batch norm
modules of the engine's private copy get a forward that returns the new statistics instead of
writing them in place, so it works under ``vmap``). Augmentation is supported: each replica's
mini-batch is augmented with its own generator, exactly as in the reference.

Divergence: a replica whose loss becomes NaN or infinite stops (its updates are masked with
``torch.where`` from then on, so nothing leaks into other replicas), is marked diverged, and its
query logits are NaN.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.finetuning.protocol import FinetuneConfig, ReplicaPlan, replica_plan, trainable_groups
from ptx_utils.models import Backbone, create_head
from ptx_utils.models.conv import ConvNet
from ptx_utils.models.resnet import ResNet, ResNet12
from ptx_utils.finetuning.scheme import Scheme

#: Replicas per chunk on CPU when ``chunk_size`` is None.
CPU_CHUNK_SIZE = 32
#: Fraction of free GPU memory the automatic chunk size plans to use.
GPU_MEMORY_FRACTION = 0.5

_BACKBONE = "backbone."
_HEAD = "head."


@dataclass(frozen=True)
class Replica:
    """One fine-tuning run: a scheme on one episode with one seed.

    Attributes:
        scheme: per-layer learning rates.
        episode: index into the stacked episode tensors passed to :func:`finetune_batched`.
        seed: the replica's seed for :func:`~ptx_utils.finetuning.protocol.replica_plan`.
    """

    scheme: Scheme
    episode: int
    seed: int = 0


@dataclass(frozen=True)
class BatchedResult:
    """Query logits float32 (R, Q, n_way), NaN for diverged replicas, and diverged bool (R,)."""

    logits: torch.Tensor
    diverged: torch.Tensor


# -- forward stages -----------------------------------------------------------------------------

StageFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Stage:
    """A piece of the backbone's forward: ``run(backbone, x)``, covering whole layers."""

    run: StageFn
    layers: tuple[str, ...]


def _submodule(name: str) -> StageFn:
    return lambda bb, x: bb.get_submodule(name)(x)


def _resnet_stem(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))


def _flatten(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


def _pool_flatten(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(bb.avgpool(x), 1)


def _whole(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return bb._forward(x)


def _identity(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def forward_stages(backbone: Backbone) -> tuple[list[_Stage], StageFn]:
    """Split ``backbone``'s forward into stages at layer boundaries, plus a parameter-free tail.

    ``tail(bb, stage_n(... stage_1(x)))`` equals ``backbone._forward(x)``. Known architectures
    (:class:`ConvNet`, :class:`ResNet`, :class:`ResNet12` with their own ``_forward``) split at
    every block; any other backbone, or a layer table that does not line up with the blocks, is
    a single stage.
    """
    spec: list[tuple[StageFn, tuple[str, ...]]] | None = None
    tail: StageFn = _identity
    kind = type(backbone)
    if isinstance(backbone, ConvNet) and kind._forward is ConvNet._forward:
        spec = [(_submodule(f"block{i + 1}"), (f"block{i + 1}",)) for i in range(backbone.depth)]
        tail = _flatten
    elif isinstance(backbone, ResNet12) and kind._forward is ResNet12._forward:
        names = [n for n, _ in backbone.named_children() if n.startswith("block")]
        spec = [(_submodule(n), (n,)) for n in names]
        tail = _pool_flatten
    elif isinstance(backbone, ResNet) and kind._forward is ResNet._forward:
        spec = [(_resnet_stem, ("conv1", "bn1", "relu", "maxpool"))]
        for stage in range(len(backbone.blocks)):
            for j in range(backbone.blocks[stage]):
                spec.append((_submodule(f"layer{stage + 1}.{j}"), (f"layer{stage + 1}.{j}",)))
        tail = _pool_flatten
    stages = _stages_from_spec(backbone, spec) if spec is not None else None
    if stages is None:
        return [_Stage(_whole, tuple(backbone.layer_names()))], _identity
    return stages, tail


def _stages_from_spec(
    backbone: Backbone, spec: list[tuple[StageFn, tuple[str, ...]]]
) -> list[_Stage] | None:
    """Stages with the layers their modules hold; None unless they tile the layers in order."""
    owner = {**backbone.param_layer_map(), **backbone.buffer_layer_map()}
    order = backbone.layer_names()
    stages = []
    for run, modules in spec:
        layers = {
            layer for name, layer in owner.items() if any(name.startswith(m + ".") for m in modules)
        }
        stages.append(_Stage(run, tuple(sorted(layers, key=order.index))))
    flat = [layer for s in stages for layer in s.layers]
    return stages if flat == order else None


def frozen_stages(stages: Sequence[_Stage], lr_of_layer: dict[str, float]) -> int:
    """How many leading stages have only frozen (rate 0) layers."""
    k = 0
    for stage in stages:
        if any(lr_of_layer[layer] != 0 for layer in stage.layers):
            break
        k += 1
    return k


# -- batch norm under vmap ----------------------------------------------------------------------


class _ReplicaBatchNorm:
    """Mixin for the engine's batch-norm modules (``bn_mode="train"``).

    ``_ptx_flag`` (set per call) is False (eval: running statistics), True (batch statistics)
    or a per-replica 0-d bool tensor (either, per replica). In batch mode the new running
    statistics are not written in place (impossible under ``vmap`` / ``grad``) but stored in
    ``_ptx_collect`` under the buffers' qualified names, to be returned by the step function.
    """

    _ptx_flag: Any = False
    _ptx_collect: dict[str, torch.Tensor] | None = None
    _ptx_key: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: Any = self
        flag = bn._ptx_flag

        def eval_out() -> torch.Tensor:
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )

        if flag is False:
            return eval_out()
        out = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        dims = [0, *range(2, x.ndim)]
        xd = x.detach()
        mean = xd.mean(dims)
        var = xd.var(dims, correction=1)
        tracked = bn.num_batches_tracked + 1
        factor: Any = bn.momentum if bn.momentum is not None else 1.0 / tracked.double()
        new_mean = bn.running_mean * (1 - factor) + mean * factor
        new_var = bn.running_var * (1 - factor) + var * factor
        new_mean, new_var = new_mean.to(bn.running_mean.dtype), new_var.to(bn.running_var.dtype)
        if flag is not True:
            out = torch.where(flag, out, eval_out())
            new_mean = torch.where(flag, new_mean, bn.running_mean)
            new_var = torch.where(flag, new_var, bn.running_var)
            tracked = torch.where(flag, tracked, bn.num_batches_tracked)
        if bn._ptx_collect is not None:
            bn._ptx_collect[bn._ptx_key + "running_mean"] = new_mean
            bn._ptx_collect[bn._ptx_key + "running_var"] = new_var
            bn._ptx_collect[bn._ptx_key + "num_batches_tracked"] = tracked
        return out


_BN_CLASSES: dict[type, type] = {}


def _make_replica_bn(module: nn.Module, key: str) -> None:
    cls = type(module)
    if cls not in _BN_CLASSES:
        _BN_CLASSES[cls] = type(f"Replica{cls.__name__}", (_ReplicaBatchNorm, cls), {})
    module.__class__ = _BN_CLASSES[cls]
    module._ptx_key = key  # type: ignore[assignment]


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


# -- the model the engine runs ------------------------------------------------------------------


class _Runner(nn.Module):
    """Backbone stages ``start:`` plus head; parameters named ``backbone.*`` and ``head.*``."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.stages, self.tail = forward_stages(backbone)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        for stage in self.stages[start:]:
            x = stage.run(self.backbone, x)
        return self.head(self.tail(self.backbone, x))

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        for stage in self.stages[:stop]:
            x = stage.run(self.backbone, x)
        return x


def _run_prefix(runner: _Runner, x: torch.Tensor, stop: int) -> torch.Tensor:
    """The output of the first ``stop`` stages (frozen, eval-mode BN), without grad."""
    with torch.no_grad():
        return runner.prefix(x, stop)


@dataclass
class _Engine:
    """Everything shared by the chunks of one :func:`finetune_batched` call."""

    runner: _Runner
    cfg: FinetuneConfig
    n_way: int
    device: torch.device
    replicas: Sequence[Replica]
    plans: list[ReplicaPlan]
    lrs: list[dict[str, float]]  # per replica: backbone parameter name (runner's) -> lr
    bn_layer: dict[str, str]  # BN module name (runner's) -> its layer
    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    layer_lrs: list[dict[str, float]] = field(default_factory=list)


# -- public entry point -------------------------------------------------------------------------


def finetune_batched(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig = FinetuneConfig(),  # noqa: B008  (frozen dataclass)
    chunk_size: int | None = None,
    progress: bool = True,
    frozen_prefix: bool = True,
    desc: str = "fine-tune replicas",
) -> BatchedResult:
    """Fine-tune many replicas at once; the query logits of each, as the sequential reference.

    Args:
        backbone: the pre-trained backbone (left unchanged); its device is used.
        replicas: the (scheme, episode, seed) runs.
        support_images: uint8 (E, N, C, H, W); support_labels: int64 (E, N) in [0, n_way).
        query_images: uint8 (E, Q, C, H, W).
        n_way: classes per episode.
        cfg: the fine-tuning protocol.
        chunk_size: replicas per chunk; None = found from free GPU memory (fixed on CPU).
        progress: show a progress bar.
        frozen_prefix: compute a chunk's frozen leading stages once per episode (set False
            only to check that it makes no difference).
        desc: the progress bar's label.

    Returns:
        :class:`BatchedResult`: logits float32 (R, Q, n_way) on the backbone's device, NaN rows
        for diverged replicas, and diverged bool (R,).
    """
    engine = _prepare(backbone, replicas, support_images, support_labels, query_images, n_way, cfg)
    n_rep, n_query = len(replicas), query_images.shape[1]
    logits = torch.full(
        (n_rep, n_query, n_way), float("nan"), dtype=torch.float32, device=engine.device
    )
    diverged = torch.zeros(n_rep, dtype=torch.bool, device=engine.device)
    if n_rep == 0:
        return BatchedResult(logits, diverged)

    stages = engine.runner.stages
    groups: dict[int, list[int]] = {}
    for i in range(n_rep):
        k = frozen_stages(stages, engine.layer_lrs[i]) if frozen_prefix else 0
        groups.setdefault(k, []).append(i)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    size = chunk_size or _auto_chunk_size(engine, n_rep)

    bar = tqdm(total=n_rep, desc=desc, unit="replica", disable=not progress)
    try:
        for k in sorted(groups, reverse=True):
            members = sorted(groups[k], key=lambda i: (replicas[i].episode, i))
            pos = 0
            while pos < len(members):
                idx = members[pos : pos + size]
                try:
                    out, div = _run_chunk(engine, idx, k, bar)
                except torch.cuda.OutOfMemoryError:
                    if len(idx) == 1:
                        raise
                    size = max(1, len(idx) // 2)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    bar.set_postfix_str(f"out of memory: chunk size {size}")
                    continue
                sel = torch.tensor(idx, device=engine.device)
                logits[sel] = out
                diverged[sel] = div
                pos += len(idx)
                bar.update(len(idx))
    finally:
        bar.close()
    return BatchedResult(logits, diverged)


def _prepare(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig,
) -> _Engine:
    if support_images.ndim != 5 or query_images.ndim != 5 or support_labels.ndim != 2:
        raise ValueError(
            "expected stacked episodes: support_images (E, N, C, H, W), support_labels (E, N), "
            f"query_images (E, Q, C, H, W); got {tuple(support_images.shape)}, "
            f"{tuple(support_labels.shape)}, {tuple(query_images.shape)}"
        )
    n_ep = support_images.shape[0]
    if support_labels.shape != support_images.shape[:2] or query_images.shape[0] != n_ep:
        raise ValueError(
            f"episode tensors disagree: support_images {tuple(support_images.shape)}, "
            f"support_labels {tuple(support_labels.shape)}, query_images "
            f"{tuple(query_images.shape)}"
        )
    bad = [r.episode for r in replicas if not 0 <= r.episode < n_ep]
    if bad:
        raise ValueError(f"replica episode indices {bad[:5]} out of range for {n_ep} episodes")
    device = next(backbone.parameters()).device

    model = copy.deepcopy(backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    head = create_head(cfg.head, model.out_dim, n_way).to(device)
    for p in head.parameters():
        p.requires_grad_(False)
    runner = _Runner(model, head)

    names = {id(p): _BACKBONE + n for n, p in model.named_parameters()}
    cache: dict[Scheme, tuple[dict[str, float], dict[str, float]]] = {}
    lrs, layer_lrs = [], []
    for r in replicas:
        if r.scheme not in cache:
            groups = trainable_groups(model, r.scheme)  # also checks the scheme
            per_param = {
                names[id(p)]: float(g["lr"])  # type: ignore[arg-type]
                for g in groups
                for p in g["params"]  # type: ignore[attr-defined]
            }
            per_layer = dict(zip(model.layer_names(), r.scheme.lrs, strict=True))
            cache[r.scheme] = (per_param, per_layer)
        lrs.append(cache[r.scheme][0])
        layer_lrs.append(cache[r.scheme][1])

    bn_layer: dict[str, str] = {}
    if cfg.bn_mode == "train":
        for layer, mods in model.layer_modules().items():
            for top in mods:
                for m in top.modules():
                    if _is_bn(m):
                        qual = _BACKBONE + _qualified_name(model, m)
                        bn_layer[qual] = layer
                        _make_replica_bn(m, qual + ".")

    n_support = support_images.shape[1]
    plans = [replica_plan(r.seed, n_support, n_way, model.out_dim, cfg) for r in replicas]
    return _Engine(
        runner=runner,
        cfg=cfg,
        n_way=n_way,
        device=device,
        replicas=replicas,
        plans=plans,
        lrs=lrs,
        bn_layer=bn_layer,
        support_images=support_images,
        support_labels=support_labels,
        query_images=query_images,
        layer_lrs=layer_lrs,
    )


def _qualified_name(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise RuntimeError("module not found in its backbone")  # pragma: no cover


def _auto_chunk_size(engine: _Engine, n_rep: int) -> int:
    """Replicas per chunk: fixed on CPU; on CUDA, what fits in part of the free memory."""
    if engine.device.type != "cuda":
        return min(n_rep, CPU_CHUNK_SIZE)
    free, _ = torch.cuda.mem_get_info(engine.device)
    model = engine.runner.backbone
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    act = _activation_bytes_per_image(engine)
    images = max(3 * engine.cfg.batch_size, engine.query_images.shape[1])
    per_replica = 4 * param_bytes + act * images
    return max(1, min(n_rep, int(GPU_MEMORY_FRACTION * free / max(per_replica, 1))))


def _activation_bytes_per_image(engine: _Engine) -> int:
    """Bytes of every module output for one image (a rough activation footprint)."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    model = engine.runner.backbone
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        x = normalize(engine.support_images[0, :1].to(engine.device))
        with torch.no_grad():
            engine.runner.prefix(x, len(engine.runner.stages))
    finally:
        for h in handles:
            h.remove()
    return total


# -- one chunk ----------------------------------------------------------------------------------


def _run_chunk(
    engine: _Engine, idx: list[int], start: int, bar: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-tune replicas ``idx`` together (stages ``< start`` frozen in all of them).

    Returns:
        logits float32 (r, Q, n_way) with NaN rows for diverged replicas, diverged bool (r,).
    """
    cfg, dev, runner = engine.cfg, engine.device, engine.runner
    n = len(idx)
    reps = [engine.replicas[i] for i in idx]
    plans = [engine.plans[i] for i in idx]

    # Episodes of the chunk; replica -> local episode index.
    episodes = sorted({r.episode for r in reps})
    local = {e: j for j, e in enumerate(episodes)}
    ep = torch.tensor([local[r.episode] for r in reps], device=dev)
    ep_sel = torch.tensor(episodes)
    s_img = engine.support_images[ep_sel].to(dev)
    s_lab = engine.support_labels[ep_sel].to(dev)
    q_img = engine.query_images[ep_sel].to(dev)
    s_in = None if cfg.augment else _inputs(runner, s_img, start)
    q_in = _inputs(runner, q_img, start)

    # Stacked trainable tensors: backbone parameters some replica trains, and the head.
    lr_of: dict[str, torch.Tensor] = {}
    params = dict(runner.named_parameters())
    trained = sorted({name for i in idx for name in engine.lrs[i]}, key=list(params).index)
    for name in trained:
        lr_of[name] = torch.tensor([engine.lrs[i].get(name, 0.0) for i in idx], device=dev)
    head_lr = torch.tensor([r.scheme.head_lr for r in reps], device=dev)
    tp: dict[str, torch.Tensor] = {
        name: params[name].detach().expand(n, *params[name].shape).clone() for name in trained
    }
    tp[_HEAD + "weight"] = torch.stack([p.head_weight for p in plans]).to(dev)
    lr_of[_HEAD + "weight"] = head_lr
    if getattr(runner.head, "bias", None) is not None:
        tp[_HEAD + "bias"] = torch.stack([p.head_bias for p in plans]).to(dev)
        lr_of[_HEAD + "bias"] = head_lr

    # Batch norm in train mode: per-replica flags and running statistics.
    static_flags: dict[str, bool] = {}
    flags: dict[str, torch.Tensor] = {}
    bufs: dict[str, torch.Tensor] = {}
    buffers = dict(runner.named_buffers())
    for bn, layer in engine.bn_layer.items():
        on = torch.tensor([engine.layer_lrs[i][layer] > 0 for i in idx], device=dev)
        if bool(on.all()):
            static_flags[bn] = True
        elif not bool(on.any()):
            static_flags[bn] = False
        else:
            flags[bn] = on
        if bool(on.any()):
            for suffix in ("running_mean", "running_var", "num_batches_tracked"):
                b = buffers.get(f"{bn}.{suffix}")
                if b is not None:
                    bufs[f"{bn}.{suffix}"] = b.expand(n, *b.shape).clone()

    def loss_fn(
        tp: dict[str, torch.Tensor],
        bufs: dict[str, torch.Tensor],
        flags: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        collect: dict[str, torch.Tensor] = {}
        _set_bn_state(runner, engine.bn_layer, {**static_flags, **flags}, collect)
        try:
            logits = functional_call(runner, {**tp, **bufs}, (x, start))
        finally:
            _set_bn_state(runner, engine.bn_layer, {}, None)
        return F.cross_entropy(logits, y), collect

    step_fn = vmap(grad_and_value(loss_fn, has_aux=True), in_dims=(0, 0, 0, 0, 0))

    batches = torch.stack([p.batches for p in plans]).to(dev)  # (n, steps, batch)
    n_steps = batches.shape[1]
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    momentum_buf: dict[str, torch.Tensor] = {}
    aug = Augmentation()
    for step in range(n_steps):
        valid = batches[:, step] >= 0
        width = int(valid[0].sum())
        if not bool((valid.sum(1) == width).all()) or not bool(valid[:, :width].all()):
            raise RuntimeError(
                "replica plans disagree on the mini-batch layout"
            )  # pragma: no cover
        b_idx = batches[:, step, :width]
        y = s_lab[ep.unsqueeze(1), b_idx]
        if cfg.augment:
            x = torch.stack(
                [augment(s_img[ep[r]][b_idx[r]], aug, plans[r].generator) for r in range(n)]
            )
            if start:
                x = _run_prefix(runner, x.flatten(0, 1), start).unflatten(0, (n, width))
        else:
            assert s_in is not None
            x = s_in[ep.unsqueeze(1), b_idx]
        grads, (loss, new_bufs) = step_fn(tp, bufs, flags, x, y)
        alive = alive & torch.isfinite(loss)
        _sgd_step(tp, grads, momentum_buf, lr_of, alive, step, cfg)
        for name, b in new_bufs.items():
            bufs[name] = torch.where(_view(alive, b), b, bufs[name])
        if bar is not None and (step % 10 == 9 or step == n_steps - 1):
            bar.set_postfix_str(f"chunk of {n}: step {step + 1}/{n_steps}")

    with torch.no_grad():
        eval_fn = vmap(
            lambda tp, bufs, x: functional_call(runner, {**tp, **bufs}, (x, start)),
            in_dims=(0, 0, 0),
        )
        logits = eval_fn(tp, bufs, q_in[ep]).float()
    diverged = ~alive | ~torch.isfinite(logits).flatten(1).all(1)
    logits = torch.where(_view(diverged, logits), torch.full_like(logits, float("nan")), logits)
    return logits, diverged


def _sgd_step(
    tp: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    momentum_buf: dict[str, torch.Tensor],
    lr_of: dict[str, torch.Tensor],
    alive: torch.Tensor,
    step: int,
    cfg: FinetuneConfig,
) -> None:
    """One ``torch.optim.SGD`` step of every stacked tensor, in place of the dict entries.

    Replica ``r`` of tensor ``name`` moves only where it is alive and ``lr_of[name][r] > 0``;
    elsewhere parameter and momentum buffer stay exactly as they were (``torch.where``, so a
    NaN gradient of a diverged replica never reaches the others).
    """
    all_alive = bool(alive.all())
    for name, p in tp.items():
        lr = lr_of[name]
        masked = not (all_alive and bool((lr > 0).all()))
        on = _view(alive & (lr > 0), p) if masked else None
        g = grads[name]
        if cfg.weight_decay != 0:
            g = g.add_(p, alpha=cfg.weight_decay)
        if cfg.momentum != 0:
            if step == 0:
                buf = g
                if on is not None:
                    momentum_buf[name] = torch.where(on, buf, torch.zeros_like(buf))
                else:
                    momentum_buf[name] = buf
            else:
                old = momentum_buf[name]
                buf = old.mul(cfg.momentum).add_(g, alpha=1 - cfg.dampening)
                momentum_buf[name] = buf if on is None else torch.where(on, buf, old)
            g = buf
        new = p.addcmul(_view(lr, p), g, value=-1)
        tp[name] = new if on is None else torch.where(on, new, p)


def _inputs(runner: _Runner, images: torch.Tensor, start: int) -> torch.Tensor:
    """Normalised images (E, M, ...) of a chunk's episodes, through the frozen prefix if any."""
    e, m = images.shape[:2]
    x = normalize(images.flatten(0, 1))
    if start:
        x = _run_prefix(runner, x, start)
    return x.unflatten(0, (e, m))


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, ..., 1) broadcasting against ``like`` (n, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def _set_bn_state(
    runner: _Runner,
    bn_layer: dict[str, str],
    flags: dict[str, Any],
    collect: dict[str, torch.Tensor] | None,
) -> None:
    for name in bn_layer:
        m: Any = runner.get_submodule(name)
        m._ptx_flag = flags.get(name, False)
        m._ptx_collect = collect


__all__ = ["BatchedResult", "Replica", "finetune_batched", "forward_stages"]
