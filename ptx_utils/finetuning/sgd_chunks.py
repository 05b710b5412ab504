"""SGD replicas in vmapped chunks: the batched engine's main path (:mod:`.batched` dispatches).

A chunk's weights are stacked along a leading dimension and one step is
``vmap(grad(functional_call(...)))`` with SGD written out functionally (``functional_sgd``).
Frozen leading stages run once per episode (with AdaBN, episode by episode with its own
statistics). ``docs/engine.md``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ptx_utils.core.device import memory_format
from ptx_utils.data.augment import Augmentation, augment
from ptx_utils.finetuning.adapters import AdapterSpec
from ptx_utils.finetuning.bn_stats import episodes_statistics
from ptx_utils.finetuning.chunking import auto_chunk_size
from ptx_utils.finetuning.functional_sgd import sgd_step, view_as_replicas
from ptx_utils.finetuning.protocol import (
    FinetuneConfig,
    ReplicaPlan,
    check_record_within,
    is_bn,
    replica_plan,
    trainable_groups,
)
from ptx_utils.finetuning.prototype_init import PROTOTYPE_HEADS, support_prototypes, with_prototypes
from ptx_utils.finetuning.replica_bn import STAT_BUFFERS, make_replica_bn, set_bn_state
from ptx_utils.finetuning.runner import Runner, episode_inputs, grouped_prefix_output
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.spottune import SpotTuneSpec
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.finetuning.vectorize import loop_replicas, per_replica
from ptx_utils.models import Backbone, create_head
from ptx_utils.models.stages import ForwardStages

if TYPE_CHECKING:
    from ptx_utils.finetuning.batched import Replica

_BACKBONE = "backbone."
_HEAD = "head."


@dataclass(frozen=True)
class Variant:
    """What, besides the protocol, replicas batched together must share."""

    path: str  # Strategy.path: "sgd", "closed-form", "attachments", "spottune", "case", "maml"
    classifier: str | None  # a closed-form classifier, or None
    transform: str
    options: tuple[tuple[str, Any], ...]
    bn_stats: str | None  # AdaBN's images ("support", "support+query"), or None
    adapters: tuple[Any, ...] = ()  # attachments: which exist, α's init, steps; MAML's run
    head_init: str = "random"  # or "prototypes" (.prototype_init)

    @classmethod
    def of(cls, strategy: Strategy) -> Variant:
        adapters: tuple[Any, ...] = ()
        if strategy.path == "attachments":
            spec = AdapterSpec.of(strategy)
            adapters = (*spec.structure, spec.steps)
        elif strategy.path == "spottune":
            sp = SpotTuneSpec.of(strategy)
            adapters = sp.structure
        elif strategy.path == "maml":  # one checkpoint, step count and rate per group
            adapters = (strategy.loads, strategy.steps, strategy.head_lr)
        elif strategy.path == "case":  # one set of CaSE blocks and step count per group
            adapters = (strategy.loads, strategy.steps)
        return cls(
            strategy.path,
            strategy.classifier if strategy.closed_form else None,
            strategy.feature_transform,
            strategy.transform_options,
            strategy.bn_stats if strategy.adapts_bn else None,
            adapters,
            "prototypes" if strategy.classifier in PROTOTYPE_HEADS else "random",
        )


@dataclass
class _Engine:
    """Everything shared by the chunks of one :func:`finetune_batched` call."""

    runner: Runner
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
    precision: str = "fp32"
    vectorize: str = "auto"
    masters: dict[str, torch.Tensor] = field(default_factory=dict)  # float32 trained weights
    episode_stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # AdaBN
    record: tuple[int, ...] = ()  # passes after which to keep the query logits (+ the last)


def prefix_groups(
    split: ForwardStages,
    layer_lrs: Sequence[dict[str, float]],
    episodes: Sequence[int],
    frozen_prefix: bool = True,
) -> list[tuple[int, list[int]]]:
    """Replicas by the number of frozen leading stages they share (most first), each group in
    (episode, index) order: how :func:`run_engine` orders its chunks."""
    groups: dict[int, list[int]] = {}
    for i, lrs in enumerate(layer_lrs):
        groups.setdefault(split.frozen_prefix(lrs) if frozen_prefix else 0, []).append(i)
    return [
        (k, sorted(groups[k], key=lambda i: (episodes[i], i))) for k in sorted(groups, reverse=True)
    ]


def sgd_chunk_size(
    backbone: nn.Module,
    support_images: torch.Tensor,
    query_images: torch.Tensor,
    cfg: FinetuneConfig,
    n_rep: int,
) -> int:
    """Replicas per SGD chunk when none is given (:func:`~.chunking.auto_chunk_size`)."""
    images = max(3 * cfg.batch_size, query_images.shape[1])
    return auto_chunk_size(backbone, support_images[0, :1], images=images, n_rep=n_rep)


def run_engine(
    engine: _Engine, chunk_size: int | None, frozen_prefix: bool, bar: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every replica of one protocol, chunk by chunk: logits (R, Q, n_way), diverged (R,)."""
    replicas = engine.replicas
    n_rep, n_query = len(replicas), engine.query_images.shape[1]
    shape = (n_rep, len(engine.record) + 1, n_query, engine.n_way)
    logits = torch.full(shape, float("nan"), dtype=torch.float32, device=engine.device)
    diverged = torch.zeros(n_rep, dtype=torch.bool, device=engine.device)
    groups = prefix_groups(
        engine.runner.split, engine.layer_lrs, [r.episode for r in replicas], frozen_prefix
    )
    size = chunk_size or sgd_chunk_size(
        engine.runner.backbone, engine.support_images, engine.query_images, engine.cfg, n_rep
    )
    for k, members in groups:
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
    return logits, diverged


def prepare(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig,
    precision: str,
    vectorize: str = "auto",
    variant: Variant = Variant("sgd", None, "none", (), None),
    record: tuple[int, ...] = (),
) -> _Engine:
    device = next(backbone.parameters()).device

    model = copy.deepcopy(backbone).to(memory_format=memory_format(precision))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    head = create_head(cfg.head, model.out_dim, n_way).to(device)
    for p in head.parameters():
        p.requires_grad_(False)
    runner = Runner(model, head, (variant.transform, dict(variant.options)))
    # AdaBN: from the float32 copy, before any bf16 cast (both engines alike)
    episode_stats = episodes_statistics(
        model, [r.episode for r in replicas], support_images, query_images, variant.bn_stats,
        precision,
    )  # fmt: skip
    masters = {name: p.detach().clone() for name, p in runner.named_parameters()}
    prototypes = {}
    if variant.head_init == "prototypes":  # from the float32 copy too, episode by episode
        transform = (variant.transform, dict(variant.options))
        prototypes = {
            e: support_prototypes(
                model, support_images[e], support_labels[e], n_way, transform,
                episode_stats.get(e), precision,
            )
            for e in sorted({r.episode for r in replicas})
        }  # fmt: skip
    if precision == "bf16":  # bf16 backbone; batch norm and the head stay float32
        model.to(torch.bfloat16)
        for m in model.modules():
            if is_bn(m):
                m.float()

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
                    if is_bn(m):
                        qual = _BACKBONE + _qualified_name(model, m)
                        bn_layer[qual] = layer
                        make_replica_bn(m, qual + ".")
    if precision == "bf16":  # every batch norm takes bf16 activations with float32 statistics
        for qual, m in model.named_modules():
            if is_bn(m) and _BACKBONE + qual not in bn_layer:
                make_replica_bn(m, _BACKBONE + qual + ".")

    n_support = support_images.shape[1]
    plans = [replica_plan(r.seed, n_support, n_way, model.out_dim, cfg) for r in replicas]
    if prototypes:
        plans = [
            with_prototypes(p, prototypes[r.episode], cfg.head)
            for p, r in zip(plans, replicas, strict=True)
        ]
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
        precision=precision,
        vectorize=vectorize,
        masters=masters,
        episode_stats=episode_stats,
        record=check_record_within(record, cfg.passes, "passes"),
    )


def _qualified_name(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise RuntimeError("module not found in its backbone")  # pragma: no cover


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
    precision = engine.precision
    stats = [engine.episode_stats[e] for e in episodes] if engine.episode_stats else None
    s_in = None if cfg.augment else episode_inputs(runner, s_img, start, precision, stats)
    q_in = episode_inputs(runner, q_img, start, precision, stats)

    # Stacked trainable tensors: backbone parameters some replica trains, and the head.
    lr_of: dict[str, torch.Tensor] = {}
    params = dict(runner.named_parameters())
    trained = sorted({name for i in idx for name in engine.lrs[i]}, key=list(params).index)
    for name in trained:
        lr_of[name] = torch.tensor([engine.lrs[i].get(name, 0.0) for i in idx], device=dev)
    head_lr = torch.tensor([r.scheme.head_lr for r in reps], device=dev)
    tp: dict[str, torch.Tensor] = {
        name: engine.masters[name].expand(n, *params[name].shape).clone() for name in trained
    }
    tp[_HEAD + "weight"] = torch.stack([p.head_weight for p in plans]).to(dev)
    lr_of[_HEAD + "weight"] = head_lr
    if getattr(runner.head, "bias", None) is not None:
        tp[_HEAD + "bias"] = torch.stack([p.head_bias for p in plans]).to(dev)
        lr_of[_HEAD + "bias"] = head_lr

    # AdaBN: every replica's running statistics are its episode's.
    bufs: dict[str, torch.Tensor] = {}
    if stats is not None:
        for name in stats[0]:
            bufs[_BACKBONE + name] = torch.stack(
                [engine.episode_stats[r.episode][name] for r in reps]
            )

    # Batch norm in train mode: per-replica flags and running statistics.
    static_flags: dict[str, bool] = {}
    flags: dict[str, torch.Tensor] = {}
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
            for suffix in STAT_BUFFERS:
                b = buffers.get(f"{bn}.{suffix}")
                if b is not None and f"{bn}.{suffix}" not in bufs:
                    bufs[f"{bn}.{suffix}"] = b.expand(n, *b.shape).clone()

    # bf16: the float32 weights are cast on the way in (autocast does not reach inside vmap).
    dtypes = {name: p.dtype for name, p in params.items()}
    act = torch.bfloat16 if precision == "bf16" else torch.float32

    def run(tp: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        weights = {k: v.to(dtypes[k]) for k, v in tp.items()}
        return functional_call(runner, {**weights, **bufs}, (x.to(act), start))

    def loss_fn(
        tp: dict[str, torch.Tensor],
        bufs: dict[str, torch.Tensor],
        flags: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        collect: dict[str, torch.Tensor] = {}
        set_bn_state(runner, engine.bn_layer, {**static_flags, **flags}, collect)
        try:
            logits = run(tp, bufs, x)
        finally:
            set_bn_state(runner, engine.bn_layer, {}, None)
        return F.cross_entropy(logits.float(), y), collect

    single = grad_and_value(loss_fn, has_aux=True)
    pixels = q_in.shape[-1] * q_in.shape[-2] if q_in.ndim == 5 else 0
    loop = loop_replicas(engine.vectorize, dev, [params[name] for name in trained], pixels)
    step_fn = per_replica(single, channels_last=True) if loop else vmap(single)

    batches = torch.stack([p.batches for p in plans]).to(dev)  # (n, steps, batch)
    n_steps = batches.shape[1]
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    momentum_buf: dict[str, torch.Tensor] = {}
    aug = Augmentation()
    forward = per_replica(run, channels_last=True) if loop else vmap(run)

    def query_logits() -> torch.Tensor:
        with torch.no_grad():
            return _masked(forward(tp, bufs, q_in[ep]).float(), alive)

    per_pass = n_steps // cfg.passes if cfg.passes else 0
    at = {p * per_pass: j for j, p in enumerate(engine.record)}
    recorded: list[torch.Tensor | None] = [None] * len(engine.record)
    if 0 in at:
        recorded[at[0]] = query_logits()
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
            if start:  # replica r's images with its episode's statistics (AdaBN)
                per = [stats[int(ep[r])] for r in range(n)] if stats is not None else None
                x = grouped_prefix_output(runner, x, start, precision, per)
        else:
            assert s_in is not None
            x = s_in[ep.unsqueeze(1), b_idx]
        grads, (loss, new_bufs) = step_fn(tp, bufs, flags, x, y)
        alive = alive & torch.isfinite(loss)
        sgd_step(tp, grads, momentum_buf, lr_of, alive, step, cfg)
        for name, b in new_bufs.items():
            bufs[name] = torch.where(view_as_replicas(alive, b), b, bufs[name])
        if step + 1 in at:
            recorded[at[step + 1]] = query_logits()
        if bar is not None and (step % 10 == 9 or step == n_steps - 1):
            bar.set_postfix_str(f"chunk of {n}: step {step + 1}/{n_steps}")

    logits = query_logits()
    diverged = ~alive | ~torch.isfinite(logits).flatten(1).all(1)
    return torch.stack([*recorded, _masked(logits, ~diverged)], 1), diverged


def _masked(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``logits`` (r, ...) with NaN rows where ``keep`` (r,) is False or a logit is not finite."""
    keep = keep & torch.isfinite(logits).flatten(1).all(1)
    return torch.where(view_as_replicas(keep, logits), logits, torch.full_like(logits, math.nan))
