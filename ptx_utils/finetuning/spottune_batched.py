"""SpotTune's batched path: replicas' copies, heads and policies stacked and stepped by the
functional SGD under ``vmap`` (or the CPU loop), equal to :func:`.spottune.spottune_sequential`.
Replicas that differ only in their test-time decisions train once. ``docs/strategies.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.finetuning.functional_sgd import sgd_step
from ptx_utils.finetuning.protocol import FinetuneConfig, check_record_within, replica_plan
from ptx_utils.finetuning.spottune import (
    SpotTuneSpec,
    build_net,
    gate_penalty,
    gumbel_noise,
    inference_generator,
    trained_names,
)
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.finetuning.vectorize import loop_replicas, per_replica
from ptx_utils.models import Backbone


def spottune_batched(
    backbone: Backbone,
    strategies: Sequence[Strategy],
    episodes: Sequence[int],
    seeds: Sequence[int],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig,
    vectorize: str = "auto",
    record: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replicas of one structure trained together by the functional SGD, as the reference.

    Replica i is ``strategies[i]`` on episode ``episodes[i]`` with seed ``seeds[i]``; replicas
    that differ only in ``inference`` train once. Images uint8 (E, N | Q, C, H, W).

    Returns:
        (logits float32 (R, S, Q, n_way) after each ``record`` pass then the last, NaN where a
        replica had diverged; diverged bool (R,); decisions float32 (R, Q, L) at the end).
    """
    specs = [SpotTuneSpec.of(s) for s in strategies]
    if len({s.structure for s in specs}) != 1:
        raise ValueError(
            "spottune_batched needs replicas of one structure (global_k, tau, penalty, force, "
            "loaded policy)"
        )
    net = build_net(backbone, specs[0], n_way, cfg)
    dev = next(net.parameters()).device
    keys = [
        (sp.training, st.head_lr, e, s)
        for sp, st, e, s in zip(specs, strategies, episodes, seeds, strict=True)
    ]
    unique = list(dict.fromkeys(keys))
    of = [unique.index(k) for k in keys]
    n = len(unique)
    first = [keys.index(k) for k in unique]  # a replica of each unique training run
    plans = [
        replica_plan(seeds[i], support_images.shape[1], n_way, net.frozen.out_dim, cfg)
        for i in first
    ]
    params = dict(net.named_parameters())
    groups = trained_names(net)
    rate = {
        "tuned": [specs[i].lr for i in first],
        "head": [strategies[i].head_lr for i in first],
        "policy": [specs[i].policy_lr for i in first],
    }
    tp = {k: params[k].detach().expand(n, *params[k].shape).clone() for k in groups}
    tp["head.weight"] = torch.stack([p.head_weight for p in plans]).to(dev)
    if "head.bias" in tp:
        tp["head.bias"] = torch.stack([p.head_bias for p in plans]).to(dev)
    lr_of = {k: torch.tensor(rate[g], device=dev) for k, g in groups.items()}

    ep = torch.tensor([episodes[i] for i in first], device=support_images.device)
    s_img, s_lab = support_images[ep].to(dev), support_labels[ep].to(dev)
    x_q = normalize(query_images[ep].flatten(0, 1)).unflatten(0, (n, -1)).to(dev)
    spec = specs[0]

    def loss_fn(tp, x, noise, y):
        logits, _ = functional_call(net, tp, (x, noise))
        return F.cross_entropy(logits, y) + gate_penalty(tp.get("gates"), spec).to(x.device)

    def predict(tp, x, noise):
        return functional_call(net, tp, (x, noise))

    pixels = x_q.shape[-1] * x_q.shape[-2]
    copies = [params[k] for k in groups if k.startswith("tuned")]  # a module's, not stacked
    loop = loop_replicas(vectorize, dev, copies, pixels)
    single = grad_and_value(loss_fn)
    step_fn = per_replica(single, channels_last=True) if loop else vmap(single)
    forward = per_replica(predict, channels_last=True) if loop else vmap(predict)
    zeros = torch.zeros(n, x_q.shape[1], net.n_blocks, 2, device=dev)
    sampled = torch.stack(
        [gumbel_noise(zeros.shape[1:], inference_generator(seeds[i])) for i in first]
    ).to(dev)
    modes = [specs[i].inference for i in range(len(specs))]

    def query() -> tuple[torch.Tensor, torch.Tensor]:
        """Per output replica: logits (R, Q, n_way) masked by ``alive``, decisions (R, Q, L)."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for mode in set(modes):
                out[mode] = forward(tp, x_q, sampled if mode == "sample" else zeros)
        rows = [out[m][0][u] for m, u in zip(modes, of, strict=True)]
        logits = torch.stack(rows).float()
        keep = alive[torch.tensor(of, device=dev)] & torch.isfinite(logits).flatten(1).all(1)
        logits = torch.where(keep[:, None, None], logits, torch.full_like(logits, float("nan")))
        return logits, torch.stack([out[m][1][u] for m, u in zip(modes, of, strict=True)])

    batches = torch.stack([p.batches for p in plans]).to(dev)
    n_steps = batches.shape[1]
    per_pass = n_steps // cfg.passes if cfg.passes else 0
    check_record_within(record, cfg.passes, "passes")
    at = {p * per_pass: j for j, p in enumerate(record)}
    recorded: list[torch.Tensor | None] = [None] * len(record)
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    momentum: dict[str, torch.Tensor] = {}
    aug = Augmentation()
    if 0 in at:
        recorded[at[0]] = query()[0]
    for step in range(n_steps):
        b_idx = batches[:, step]
        width = int((b_idx[0] >= 0).sum())
        b_idx = b_idx[:, :width]
        y = s_lab.gather(1, b_idx)
        if cfg.augment:
            x = torch.stack(
                [augment(s_img[r][b_idx[r]], aug, plans[r].generator) for r in range(n)]
            )
        else:
            x = normalize(s_img.flatten(0, 1)).unflatten(0, s_img.shape[:2])[
                torch.arange(n)[:, None], b_idx
            ]
        noise = torch.stack([gumbel_noise((width, net.n_blocks, 2), p.generator) for p in plans])
        trained = {k: tp[k] for k in groups}
        grads, loss = step_fn(trained, x, noise.to(dev), y)
        alive = alive & torch.isfinite(loss)
        sgd_step(tp, grads, momentum, lr_of, alive, step, cfg)
        if step + 1 in at:
            recorded[at[step + 1]] = query()[0]
    logits, decisions = query()
    diverged = ~torch.isfinite(logits).flatten(1).all(1)
    decisions = torch.where(diverged[:, None, None], torch.nan, decisions)
    return torch.stack([*recorded, logits], 1), diverged, decisions
