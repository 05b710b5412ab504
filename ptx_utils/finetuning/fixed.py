"""The fixed strategies every comparison includes, built for a backbone's number of layers.

Trained by SGD: linear probe (every layer frozen; the paper's), full fine-tuning (one rate
everywhere), last-k (only the last k layers train) and BN-affine (only batch-norm scales and
shifts train). Fitted on frozen features without gradient steps: nearest centroid (Euclidean or
cosine) and logistic regression. Options: AdaBN (:func:`with_adabn`), the channel importance
transform (:func:`with_channel_importance`), a prototype head (:func:`with_prototype_head`).
Adapters on a frozen backbone: TSA (:func:`tsa`) and LT+NCC (:func:`lt_ncc`); per-image routing
between frozen blocks and tuned copies: SpotTune (:func:`spottune`). Each returns a
:class:`~ptx_utils.finetuning.strategy.Strategy` whose name labels it in tables and figures.
"""

from __future__ import annotations

from dataclasses import replace

from ptx_utils.finetuning.feature_transform import CIT_K
from ptx_utils.finetuning.prototype_init import PROTOTYPE_HEADS
from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, Scheme
from ptx_utils.finetuning.spottune import POLICY_LR as SPOTTUNE_POLICY_LR
from ptx_utils.finetuning.strategy import Attachment, Strategy


def linear_probe(n_layers: int, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Every backbone layer frozen; only the new head trains.

    Example:
        >>> str(linear_probe(4))
        '0 0 0 0 | head 0.01'
    """
    return Strategy(Scheme((0.0,) * n_layers, head_lr, name="linear probe"))


def full_finetune(n_layers: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Every layer trains with the same rate."""
    return Strategy(Scheme((lr,) * n_layers, head_lr, name=f"full fine-tune {lr:g}"))


def last_k(n_layers: int, k: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Only the last ``k`` layers train (the manual partial transfer of earlier work)."""
    if not 0 <= k <= n_layers:
        raise ValueError(f"k must lie in [0, {n_layers}], got {k}")
    lrs = (0.0,) * (n_layers - k) + (lr,) * k
    return Strategy(Scheme(lrs, head_lr, name=f"last-{k} {lr:g}"))


def bn_affine(n_layers: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Only batch-norm weights and biases train, in every layer."""
    return Strategy(Scheme((lr,) * n_layers, head_lr, params="bn", name=f"BN-affine {lr:g}"))


def nearest_centroid(n_layers: int, metric: str = "cosine") -> Strategy:
    """Nothing trains: each query goes to the nearest class mean of the support features.

    Example:
        >>> str(nearest_centroid(4, "euclidean"))
        '0 0 0 0 | head 0 | ncc-euclidean'
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    name = f"nearest centroid ({'cos' if metric == 'cosine' else 'euc'})"
    return Strategy(Scheme((0.0,) * n_layers, 0.0), classifier=f"ncc-{metric}", name=name)


def logistic_regression(n_layers: int) -> Strategy:
    """Frozen backbone; L2-normalised features; logistic regression fitted to convergence (C = 1).

    Example:
        >>> logistic_regression(4).closed_form
        True
    """
    scheme = Scheme((0.0,) * n_layers, 0.0)
    return Strategy(scheme, classifier="logistic-regression", name="logistic regression")


def with_adabn(strategy: Strategy, transductive: bool = False) -> Strategy:
    """``strategy`` after re-estimating the BN statistics on the support set (and the queries).

    Example:
        >>> with_adabn(linear_probe(4)).name
        'linear probe + AdaBN'
    """
    stats, label = (
        ("support+query", "AdaBN (transductive)") if transductive else ("support", "AdaBN")
    )
    return replace(strategy, bn_stats=stats, name=f"{strategy.name} + {label}")


def with_prototype_head(strategy: Strategy, head: str = "cosine") -> Strategy:
    """``strategy`` with its new head (``"cosine"`` or ``"linear"``) initialised from the
    support prototypes (:mod:`.prototype_init`) instead of at random; trained as before.

    Example:
        >>> str(with_prototype_head(linear_probe(4, 0.01)))
        '0 0 0 0 | head 0.01 | prototype-cosine'
    """
    classifier = f"prototype-{head}"
    if classifier not in PROTOTYPE_HEADS:
        raise ValueError(f"a prototype head is 'cosine' or 'linear', got {head!r}")
    if strategy.path != "sgd" or strategy.classifier not in ("protocol", "cosine", "linear"):
        raise ValueError(
            f"a prototype head replaces the new head of a strategy trained by the protocol's "
            f"SGD; '{strategy}' has none"
        )
    return replace(strategy, classifier=classifier, name=f"{strategy.name} (prototype head)")


def with_channel_importance(strategy: Strategy, k: float = CIT_K) -> Strategy:
    """``strategy`` with the channel importance transform φ_k before its classifier.

    Example:
        >>> str(with_channel_importance(nearest_centroid(4)))
        '0 0 0 0 | head 0 | ncc-cosine | channel-importance k=1.3'
    """
    return replace(
        strategy,
        feature_transform="channel-importance",
        transform_options=(("k", float(k)),),
        name=f"{strategy.name} + CIT",
    )


def tsa(n_layers: int, alpha_lr: float = 0.5, beta_lr: float = 1.0, steps: int = 40) -> Strategy:
    """TSA: residual adapters α beside every 3×3 conv and a pre-classifier map β, trained by
    Adadelta on the NCC loss (cosine × 10) for 40 steps; the backbone frozen. The rates are URL's
    for unseen domains (seen: 0.05 / 0.1).

    Example:
        >>> str(tsa(4)).split(" | ")[2:]
        ['ncc-cosine', 'adadelta', 'residual-adapter 0.5', 'pre-classifier 1', '40 steps']
    """
    return Strategy(
        Scheme((0.0,) * n_layers, 0.0),
        classifier="ncc-cosine",
        optimizer="adadelta",
        attachments=(
            Attachment("residual-adapter", alpha_lr),
            Attachment("pre-classifier", beta_lr),
        ),
        steps=steps,
        name="TSA",
    )


def lt_ncc(n_layers: int, beta_lr: float = 1.0, steps: int = 40) -> Strategy:
    """LT+NCC (URL's pre-classifier alignment): β alone on the frozen features, as TSA's β.

    Example:
        >>> lt_ncc(4).attachments[0].kind
        'pre-classifier'
    """
    return Strategy(
        Scheme((0.0,) * n_layers, 0.0),
        classifier="ncc-cosine",
        optimizer="adadelta",
        attachments=(Attachment("pre-classifier", beta_lr),),
        steps=steps,
        name="LT+NCC",
    )


def spottune(
    n_layers: int,
    lr: float = 0.01,
    head_lr: float = DEFAULT_HEAD_LR,
    policy_lr: float | None = None,
    global_k: int | None = None,
    inference: str = "sample",
    policy: str | None = None,
) -> Strategy:
    """SpotTune: a tuned copy of every block at ``lr`` beside the frozen one, a routing policy
    per image (``global_k=None``) or one gate pair per block pulled to ``global_k`` tuned blocks;
    test-time decisions drawn (``"sample"``, as the paper) or ``"argmax"``; ``policy`` a
    meta-trained policy's ``"path#sha256"`` (:mod:`~ptx_utils.finetuning.spottune_meta`), kept
    fixed unless ``policy_lr`` is given (default: 0.1 for a new policy, 0 for a loaded one).

    Example:
        >>> spottune(4, global_k=2, inference="argmax").name
        'SpotTune global-2 (argmax)'
    """
    if policy_lr is None:  # a loaded policy stays as meta-trained; a new one trains
        policy_lr = 0.0 if policy is not None else SPOTTUNE_POLICY_LR
    options = {"policy_lr": float(policy_lr), "global_k": global_k, "inference": inference}
    label = "SpotTune" if global_k is None else f"SpotTune global-{global_k}"
    label += " meta" if policy is not None else ""
    return Strategy(
        Scheme((0.0,) * n_layers, head_lr),
        attachments=(Attachment("spottune", lr, options),),
        loads=(policy,) if policy is not None else (),
        name=label + (" (argmax)" if inference == "argmax" else ""),
    )


def maml(reference: str, n_layers: int, lr: float = 0.01, steps: int = 100) -> Strategy:
    """MAML's test-time adaptation of its meta-trained backbone and head (``reference``:
    ``"best.pt#sha256"``, :func:`~ptx_utils.finetuning.maml_adapt.maml_reference`): ``steps``
    full-batch SGD steps at ``lr`` on every layer and the head (CloserLook's further adaptation:
    100; the inner loop it was trained with: 5).

    Example:
        >>> maml("runs/maml/best.pt#" + "0" * 64, 4, steps=5).path
        'maml'
    """
    return Strategy(
        Scheme((lr,) * n_layers, lr),
        classifier="maml",
        loads=(reference,),
        steps=steps,
        name=f"MAML ({steps} steps)",
    )


def uppercase(reference: str, n_layers: int, steps: int = 500) -> Strategy:
    """UpperCaSE: meta-trained CaSE blocks (``reference``: ``"case.pt#sha256"``,
    :func:`~ptx_utils.finetuning.case_meta.meta_train_case`) set by one context pass over the
    support set, then a zero-initialised linear head fitted by Adam for ``steps`` iterations.

    Example:
        >>> uppercase("case.pt#" + "0" * 64, 4).path
        'case'
    """
    return Strategy(
        Scheme((0.0,) * n_layers, 0.0),
        classifier="zero-linear",
        optimizer="adam",
        attachments=(Attachment("case"),),
        loads=(reference,),
        steps=steps,
        name="UpperCaSE",
    )
