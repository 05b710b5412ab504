"""UpperCaSE at test time (Patacchiola et al., NeurIPS 2022): one context pass, then a linear head.

The meta-trained CaSE blocks (:mod:`.case`, ``loads``) see the support set once in context mode;
the support features (inference mode, no gradient) then fit a zero-initialised linear head with
Adam (lr 1e-3 falling linearly to 1e-5, weight decay 1e-5, mini-batches of 128 drawn with
replacement) for ``steps`` iterations, as the released ``models/uppercase.py``. The batched
engine fits a chunk's heads at once (a hand-written Adam on stacked heads); the sequential
reference uses ``torch.optim.Adam``. Draws come from the replica's generator.
"""

from __future__ import annotations

import copy
import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.case import CaSENetwork
from ptx_utils.finetuning.protocol import check_record_within
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import read_reference

HEAD_LR = (1e-3, 1e-5)  # Adam's rate, linearly from the first to the second over the steps
HEAD_WEIGHT_DECAY = 1e-5
HEAD_BATCH = 128
BETAS, EPS = (0.9, 0.999), 1e-8


@functools.lru_cache(maxsize=4)
def load_case(reference: str) -> dict[str, torch.Tensor]:
    """The CaSE blocks' parameters of a ``"case.pt#sha256"`` reference, its hash checked."""
    _, blob = read_reference(
        reference, "meta-trained CaSE blocks",
        "meta-train them with ptx_utils.finetuning.case_meta.meta_train_case",
    )  # fmt: skip
    return dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["blocks"])


def case_network(backbone: Backbone, reference: str) -> CaSENetwork:
    """A frozen copy of ``backbone`` with the meta-trained CaSE blocks, on its device."""
    net = CaSENetwork(copy.deepcopy(backbone))
    net.blocks.load_state_dict(load_case(reference))
    return net.to(next(backbone.parameters()).device).eval()


@torch.no_grad()
def adapted_features(
    net: CaSENetwork, support_images: torch.Tensor, query_images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query features (N, D), (Q, D) after one context pass over the support set."""
    support = normalize(support_images)
    with net.context():
        net(support)
    return net(support).float(), net(normalize(query_images)).float()


def head_rates(steps: int) -> np.ndarray:
    """Adam's rate at each of ``steps`` iterations (the released code's ``np.linspace``)."""
    return np.linspace(HEAD_LR[0], HEAD_LR[1], num=steps, endpoint=True)


def fit_head_sequential(
    feats: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    steps: int,
    generator: torch.Generator,
    query: torch.Tensor | None = None,
    record: Sequence[int] = (),
) -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    """The head fitted on features (N, D) by ``torch.optim.Adam``; query logits at ``record``."""
    head = torch.nn.Linear(feats.shape[1], n_way, device=feats.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=HEAD_LR[0], weight_decay=HEAD_WEIGHT_DECAY)
    recorded = []
    points = set(record)
    for step, lr in enumerate(head_rates(steps)):
        if step in points and query is not None:
            recorded.append(head(query).detach())
        idx = torch.randint(len(feats), (HEAD_BATCH,), generator=generator).to(feats.device)
        for group in opt.param_groups:
            group["lr"] = float(lr)
        opt.zero_grad()
        F.cross_entropy(head(feats[idx]), labels[idx]).backward()
        opt.step()
    if steps in points and query is not None:
        recorded.append(head(query).detach())
    return head, recorded


def fit_heads_batched(
    feats: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    steps: int,
    generators: Sequence[torch.Generator],
    record: Sequence[int] = (),
) -> torch.Tensor:
    """R heads at once on features (R, N, D), labels (R, N): query logits (R, S + 1, Q, n_way)
    at each of ``record`` and after ``steps``; Adam written out as ``torch.optim.Adam``."""
    r, _, d = feats.shape
    w = torch.zeros(r, n_way, d, device=feats.device, requires_grad=True)
    b = torch.zeros(r, n_way, device=feats.device, requires_grad=True)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    rows = torch.arange(r, device=feats.device)[:, None]

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(b[:, None], x, w.transpose(1, 2))

    out, points = [], set(record)
    for step, lr in enumerate(head_rates(steps)):
        if step in points:
            out.append(logits(query).detach())
        idx = torch.stack(
            [torch.randint(feats.shape[1], (HEAD_BATCH,), generator=g) for g in generators]
        ).to(feats.device)
        pred = logits(feats[rows, idx])
        loss = F.cross_entropy(pred.flatten(0, 1), labels[rows, idx].flatten(), reduction="none")
        grads = torch.autograd.grad(loss.view(r, -1).mean(1).sum(), (w, b))
        with torch.no_grad():
            for p, g, (m, v) in zip((w, b), grads, state, strict=True):
                g = g.add(p, alpha=HEAD_WEIGHT_DECAY)
                m.lerp_(g, 1 - BETAS[0])
                v.mul_(BETAS[1]).addcmul_(g, g.conj(), value=1 - BETAS[1])
                c1, c2 = 1 - BETAS[0] ** (step + 1), 1 - BETAS[1] ** (step + 1)
                denom = (v.sqrt() / c2**0.5).add_(EPS)
                p.addcdiv_(m, denom, value=-float(lr) / c1)
    final = logits(query).detach()
    out += [final, final] if steps in points else [final]  # a record point at the last step
    return torch.stack(out, 1)


def _steps(strategy: Strategy, record: Sequence[int]) -> int:
    assert strategy.path == "case" and strategy.steps is not None
    check_record_within(tuple(record), strategy.steps, "steps")
    return strategy.steps


def uppercase_sequential(
    backbone: Backbone,
    strategy: Strategy,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    seed: int,
    record: Sequence[int] = (),
) -> torch.Tensor:
    """One replica: query logits (S + 1, Q, n_way) at each of ``record`` and after the steps."""
    steps = _steps(strategy, record)
    net = case_network(backbone, strategy.loads[0])
    s_feats, q_feats = adapted_features(net, support_images, query_images)
    generator = torch.Generator().manual_seed(seed)
    labels = support_labels.to(s_feats.device)
    head, recorded = fit_head_sequential(s_feats, labels, n_way, steps, generator, q_feats, record)
    with torch.no_grad():
        return torch.stack([*recorded, head(q_feats)])


def uppercase_batched(
    backbone: Backbone,
    strategies: Sequence[Strategy],
    episodes: Sequence[int],
    seeds: Sequence[int],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    record: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk of one strategy's replicas: logits (R, S + 1, Q, n_way), diverged (R,)."""
    strategy = strategies[0]  # the engine groups replicas by blocks and steps
    steps = _steps(strategy, record)
    net = case_network(backbone, strategy.loads[0])
    feats = {e: adapted_features(net, support_images[e], query_images[e]) for e in set(episodes)}
    s_feats = torch.stack([feats[e][0] for e in episodes])
    q_feats = torch.stack([feats[e][1] for e in episodes])
    index = torch.as_tensor(list(episodes), device=support_labels.device)
    labels = support_labels[index].to(s_feats.device)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    logits = fit_heads_batched(s_feats, labels, q_feats, n_way, steps, generators, record)
    return logits, ~torch.isfinite(logits).flatten(1).all(1)
