"""Classifiers fitted on frozen features without gradient steps, batched over episodes.

Nearest centroid (``"ncc-euclidean"``, ``"ncc-cosine"``; ProtoNet's classifier) and logistic
regression (``"logistic-regression"``, RFS / SimpleShot: L2-normalised features, the objective
``0.5 ||W||² + C Σ CE`` with C = 1, bias unpenalised, fitted to convergence). The batched fit is a
damped Newton method in the span of the support features; :func:`logistic_regression_reference`
is the sequential reference (``torch.optim.LBFGS`` on W); the problem is strictly convex in W,
so they agree. Settings and deviations: ``docs/strategies.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ptx_utils.finetuning.bn_stats import episode_statistics, load_statistics, statistics_images
from ptx_utils.finetuning.feature_transform import apply_transform
from ptx_utils.models.features import extract_features
from ptx_utils.models.heads import prototype_logits

#: RFS's inverse regularisation strength (scikit-learn's ``C``).
LR_C = 1.0
#: Gradient norm at which the fits stop (float64).
LR_TOL = 1e-9
LR_MAX_ITER = 100
#: Step sizes the batched line search tries, largest first.
_STEPS = tuple(0.5**i for i in range(12))


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean feature of each class: features (E, N, D), labels (E, N) -> (E, n_way, D)."""
    classes = torch.arange(n_way, device=labels.device)
    onehot = (labels.unsqueeze(-1) == classes).to(features.dtype)  # (E, N, C); vmap-safe
    counts = onehot.sum(1).clamp_min(1).unsqueeze(-1)  # (E, C, 1)
    return onehot.transpose(1, 2) @ features / counts


def nearest_centroid_logits(
    support: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    metric: str = "cosine",
) -> torch.Tensor:
    """Nearest-centroid logits: support (E, N, D), labels (E, N), query (E, Q, D) -> (E, Q, n_way).

    Example:
        >>> s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]); y = torch.tensor([[0, 1]])
        >>> nearest_centroid_logits(s, y, torch.tensor([[[2.0, 0.1]]]), 2).argmax(-1)
        tensor([[0]])
    """
    return prototype_logits(query, class_means(support, labels, n_way), metric)


@dataclass(frozen=True)
class LogisticFit:
    """Fitted heads of E episodes.

    Attributes:
        weight: float64 (E, n_way, D); bias: float64 (E, n_way), mean 0 over classes.
        grad_norm: float64 (E,) the final gradient norm of the objective in (W, b).
        iterations: Newton iterations (or L-BFGS function evaluations) taken.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    grad_norm: torch.Tensor
    iterations: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Features (E, Q, D) (L2-normalised as in the fit) -> logits float64 (E, Q, n_way)."""
        return features.double() @ self.weight.transpose(1, 2) + self.bias.unsqueeze(1)


def _span_terms(
    theta: torch.Tensor, phi: torch.Tensor, gram: torch.Tensor, y: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective (E,), probabilities (E, N, n_way) and the penalty's gradient of the span form.

    ``theta`` (E, n_way, N + 1) holds ``[A | b]``; ``phi`` (E, N, N + 1) is ``[K | 1]``.
    """
    a = theta[..., :-1]
    z = phi @ theta.transpose(1, 2)  # (E, N, n_way) logits of the support set
    ce = F.cross_entropy(z.transpose(1, 2), y, reduction="none").sum(1)
    ak = a @ gram  # (E, n_way, N)
    return c * ce + 0.5 * (ak * a).sum((1, 2)), torch.softmax(z, -1), ak


def primal_gradient_norm(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    c: float = LR_C,
) -> torch.Tensor:
    """‖∇‖ of ``0.5 ||W||² + C Σ CE`` at (W, b): features (E, N, D) -> float64 (E,)."""
    x = features.double()
    p = torch.softmax(x @ weight.transpose(1, 2) + bias.unsqueeze(1), -1)
    r = p - F.one_hot(labels, weight.shape[1]).double()  # (E, N, C)
    g_w = c * r.transpose(1, 2) @ x + weight
    g_b = c * r.sum(1)
    return torch.sqrt(g_w.pow(2).sum((1, 2)) + g_b.pow(2).sum(1))


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    c: float = LR_C,
    tol: float = LR_TOL,
    max_iter: int = LR_MAX_ITER,
) -> LogisticFit:
    """Multinomial logistic regression on each episode's (already normalised) support features.

    Args:
        features: (E, N, D) support features; labels: int64 (E, N) in [0, n_way).
        c: inverse regularisation strength (objective ``0.5 ||W||² + c Σ_i CE_i``).
        tol: stop when every episode's gradient norm is below it.
        max_iter: at most this many Newton iterations.

    Returns:
        :class:`LogisticFit` (float64, on ``features``' device).

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = F.normalize(torch.randn(3, 10, 8, generator=gen), dim=-1)
        >>> y = torch.arange(5).repeat(2).expand(3, 10)
        >>> bool((fit_logistic_regression(x, y, 5).grad_norm < 1e-8).all())
        True
    """
    if not c > 0:
        raise ValueError(f"logistic regression needs C > 0, got {c!r}")
    x = features.double()
    e, n, _ = x.shape
    gram = x @ x.transpose(1, 2)
    phi = torch.cat([gram, gram.new_ones(e, n, 1)], -1)  # (E, N, N + 1)
    onehot = F.one_hot(labels, n_way).double()
    theta = x.new_zeros(e, n_way, n + 1)
    size = n_way * (n + 1)
    eye = torch.eye(size, dtype=x.dtype, device=x.device)
    # The penalty's Hessian: K on each class's A block, 0 on the bias.
    pen = torch.zeros(e, n + 1, n + 1, dtype=x.dtype, device=x.device)
    pen[:, :n, :n] = gram
    pen_h = torch.einsum("ab,ejk->eajbk", torch.eye(n_way, dtype=x.dtype, device=x.device), pen)
    steps = torch.tensor(_STEPS, dtype=x.dtype, device=x.device)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (reported)
        f0, p, ak = _span_terms(theta, phi, gram, labels, c)
        w, b = _primal(theta, x)
        if bool((primal_gradient_norm(x, labels, w, b, c) < tol).all()):
            break
        g = c * (p - onehot).transpose(1, 2) @ phi  # (E, n_way, N + 1)
        g[..., :-1] += ak
        s_ = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (E, N, C, C)
        h = c * torch.einsum("enab,enj,enk->eajbk", s_, phi, phi) + pen_h
        h = h.reshape(e, size, size)
        damp = 1e-10 * h.diagonal(dim1=1, dim2=2).abs().amax(1).clamp_min(1.0)
        d = -torch.linalg.solve(h + damp[:, None, None] * eye, g.reshape(e, size, 1))
        d = d.reshape(e, n_way, n + 1)
        slope = (g * d).sum((1, 2))
        # Backtracking: the largest step of _STEPS with sufficient decrease (Armijo), per episode.
        t = torch.zeros_like(f0)
        for step in reversed(steps):
            value = _span_terms(theta + step * d, phi, gram, labels, c)[0]
            t = torch.where(value <= f0 + 1e-4 * step * slope, step, t)
        theta = theta + t[:, None, None] * d
        if not bool((t > 0).any()):  # no episode can decrease further: at float64's floor
            break
    w, b = _primal(theta, x)
    return LogisticFit(w, b, primal_gradient_norm(x, labels, w, b, c), iterations)


def _primal(theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Span coefficients ``[A | b]`` -> (W = A X (E, n_way, D), centred b (E, n_way))."""
    b = theta[..., -1]
    return theta[..., :-1] @ x, b - b.mean(1, keepdim=True)


def logistic_regression_reference(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    c: float = LR_C,
    tol: float = LR_TOL,
    max_iter: int = 2000,
) -> LogisticFit:
    """The sequential reference: one episode (N, D), :class:`torch.optim.LBFGS` on (W, b), float64.

    Returns:
        :class:`LogisticFit` with a leading episode dimension of 1.
    """
    x = features.double()
    w = x.new_zeros(n_way, x.shape[1], requires_grad=True)
    b = x.new_zeros(n_way, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, tolerance_grad=tol / 10, tolerance_change=0.0,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = c * F.cross_entropy(x @ w.T + b, labels, reduction="sum") + 0.5 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    evals = int(opt.state[opt._params[0]].get("func_evals", 0))
    weight = w.detach().unsqueeze(0)
    bias = (b.detach() - b.detach().mean()).unsqueeze(0)
    norm = primal_gradient_norm(x.unsqueeze(0), labels.unsqueeze(0), weight, bias, c)
    return LogisticFit(weight, bias, norm, evals)


def closed_form_logits(
    classifier: str,
    support: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    transform: str = "none",
    transform_options: Mapping[str, Any] | None = None,
    reference: bool = False,
) -> torch.Tensor:
    """Query logits float32 (E, Q, n_way) of a closed-form classifier on frozen features.

    Args:
        classifier: ``"ncc-euclidean"``, ``"ncc-cosine"`` or ``"logistic-regression"``.
        support: (E, N, D) support features; labels int64 (E, N); query (E, Q, D).
        transform: the feature transform applied to support and query first.
        reference: fit logistic regression with the per-episode L-BFGS reference (the
            sequential engine) instead of the batched Newton solver.
    """
    options = dict(transform_options or {})
    support = apply_transform(support.float(), transform, options)
    query = apply_transform(query.float(), transform, options)
    if classifier in ("ncc-euclidean", "ncc-cosine"):
        metric = classifier.removeprefix("ncc-")
        return nearest_centroid_logits(support, labels, query, n_way, metric).float()
    if classifier != "logistic-regression":
        raise ValueError(
            f"closed-form classifiers are ncc-euclidean, ncc-cosine, logistic-regression; got "
            f"{classifier!r}"
        )
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    if reference:
        pairs = zip(support, labels, strict=True)
        fits = [logistic_regression_reference(s, y, n_way) for s, y in pairs]
        weight = torch.cat([f.weight for f in fits])
        bias = torch.cat([f.bias for f in fits])
        fit = LogisticFit(weight, bias, torch.cat([f.grad_norm for f in fits]), 0)
    else:
        fit = fit_logistic_regression(support, labels, n_way)
    return fit.logits(query).float()


def frozen_features(
    model: torch.nn.Module,
    episodes: list[int],
    support_images: torch.Tensor,
    query_images: torch.Tensor,
    bn_stats: str | None,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support (E, N, D) and query (E, Q, D) float32 features of ``episodes``.

    Without AdaBN every image goes through in batches of 256; with it, episode by episode, each
    with its own statistics.
    """
    device = next(model.parameters()).device
    sel = torch.tensor(episodes, device=support_images.device)
    s_img, q_img = support_images[sel], query_images[sel]
    e, n, q = len(episodes), s_img.shape[1], q_img.shape[1]
    if bn_stats is None:
        feats = extract_features(model, torch.cat([s_img.flatten(0, 1), q_img.flatten(0, 1)]),
                                 device, precision=precision)  # fmt: skip
        return feats[: e * n].unflatten(0, (e, n)), feats[e * n :].unflatten(0, (e, q))
    saved = {k: v.clone() for k, v in model.named_buffers()}
    s_out, q_out = [], []
    try:
        for s, qq in zip(s_img, q_img, strict=True):
            load_statistics(model, episode_statistics(model, statistics_images(s, qq, bn_stats),
                                                      precision))  # fmt: skip
            feats = extract_features(model, torch.cat([s, qq]), device, precision=precision)
            s_out.append(feats[:n])
            q_out.append(feats[n:])
    finally:
        load_statistics(model, saved)
    return torch.stack(s_out), torch.stack(q_out)
