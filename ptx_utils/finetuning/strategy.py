"""A :class:`Strategy`: a frozen, hashable, JSON-round-trip description of how to adapt.

Every adaptation method the kit compares is one: the per-layer :class:`Scheme` plus the classifier,
optimiser, attached parameters, feature transform, batch-norm statistics and meta-trained parts.
The engines implement what today's strategies use and refuse the rest with a clear error; how each
coming method maps onto the fields is written in ``docs/strategies.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ptx_utils.finetuning.feature_transform import check_transform
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.prototype_init import PROTOTYPE_HEADS
from ptx_utils.finetuning.scheme import Scheme

#: Values each field accepts: implemented by both engines, then planned (accepted, refused by
#: the engines with :class:`NotImplementedError` until their issue lands).
CLASSIFIERS = (
    "protocol", "linear", "cosine", "ncc-euclidean", "ncc-cosine", "logistic-regression", "maml",
    "zero-linear", *PROTOTYPE_HEADS,
)  # fmt: skip
PLANNED_CLASSIFIERS: tuple[str, ...] = ()
#: Classifiers fitted without gradient steps on frozen features (:mod:`.closed_form`).
CLOSED_FORM_CLASSIFIERS = ("ncc-euclidean", "ncc-cosine", "logistic-regression")
OPTIMIZERS = ("sgd", "adadelta", "adam")
PLANNED_OPTIMIZERS: tuple[str, ...] = ()
FEATURE_TRANSFORMS = ("none", "channel-importance")
PLANNED_FEATURE_TRANSFORMS = ("l2", "feature-norm")
BN_STATS = ("protocol", "eval", "train", "support", "support+query")
PLANNED_BN_STATS = ()
#: ``bn_stats`` values that re-estimate the running statistics on the episode (AdaBN).
ADAPTIVE_BN_STATS = ("support", "support+query")
#: Attachments the engines implement (TSA's α and β, :mod:`.adapters`; SpotTune's tuned copies
#: and policy, :mod:`.spottune`; UpperCaSE's meta-trained CaSE blocks, :mod:`.uppercase`), then
#: planned ones.
ATTACHMENTS = ("residual-adapter", "pre-classifier", "spottune", "case")
PLANNED_ATTACHMENTS: tuple[str, ...] = ()
#: Attachment options that act only at test time (SpotTune's sampled or argmax decisions).
TEST_TIME_OPTIONS = {"spottune": ("inference",)}


def _choice(what: str, value: str, implemented: Sequence[str], planned: Sequence[str]) -> None:
    if value not in (*implemented, *planned):
        raise ValueError(f"{what} must be one of {(*implemented, *planned)}, got {value!r}")


@dataclass(frozen=True)
class Attachment:
    """Parameters a strategy attaches to the backbone and trains (adapters, gates, blocks...).

    Attributes:
        kind: one of :data:`ATTACHMENTS` or :data:`PLANNED_ATTACHMENTS`.
        lr: its learning rate (0 = loaded and frozen).
        options: sorted ``(key, JSON value)`` pairs (e.g. ``(("init", 1e-4),)``).
    """

    kind: str
    lr: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _choice("attachment kind", self.kind, ATTACHMENTS, PLANNED_ATTACHMENTS)
        object.__setattr__(self, "lr", float(self.lr))
        pairs = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in pairs)))
        if self.lr < 0 or self.lr != self.lr:
            raise ValueError(f"attachment {self.kind!r}: lr must be >= 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lr": self.lr, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        return cls(data["kind"], data.get("lr", 0.0), tuple(dict(data.get("options", {})).items()))


@dataclass(frozen=True)
class Strategy:
    """How to adapt a pre-trained backbone to one episode's support set.

    Attributes:
        scheme: the backbone's per-layer rates (0 = frozen), which parameters train, head rate.
        classifier: ``"protocol"`` (the :class:`FinetuneConfig` head), ``"linear"``,
            ``"cosine"`` (heads trained by SGD), or fitted without gradient steps on frozen
            features (:mod:`~ptx_utils.finetuning.closed_form`; every rate 0):
            ``"ncc-euclidean"``, ``"ncc-cosine"`` (nearest centroid), ``"logistic-regression"``;
            or ``"maml"``: the backbone and head of the MAML checkpoint in ``loads``, adapted by
            its inner loop (``steps`` full-batch SGD steps at the one rate of the scheme,
            batch-statistics BN; :mod:`~ptx_utils.finetuning.maml_adapt`); or
            ``"zero-linear"``: UpperCaSE's zero-initialised linear head fitted by Adam; or
            ``"prototype-cosine"`` / ``"prototype-linear"``: that head, initialised from the
            support prototypes instead of at random, then trained by the protocol's SGD
            (:mod:`~ptx_utils.finetuning.prototype_init`).
        optimizer: ``"sgd"`` (the protocol's SGD: momentum, dampening, weight decay), or
            ``"adadelta"`` (attachments only), ``"adam"`` (UpperCaSE's head).
        attachments: extra trained or loaded parameters (:class:`Attachment`): TSA's
            ``"residual-adapter"`` (α) and ``"pre-classifier"`` (β), trained by Adadelta on the
            NCC loss (``classifier="ncc-cosine"``) with the backbone frozen
            (:mod:`~ptx_utils.finetuning.adapters`); ``"spottune"``: a tuned copy of every
            block at the attachment's lr and a routing policy, trained with the head by the
            protocol's SGD (:mod:`~ptx_utils.finetuning.spottune`); ``"case"``: meta-trained
            CaSE blocks (``loads``) set by one context pass over the support set, then the
            ``"zero-linear"`` head fitted by ``"adam"`` for ``steps`` (UpperCaSE,
            :mod:`~ptx_utils.finetuning.uppercase`).
        feature_transform: a parameter-free transform of the features before the classifier
            (``"channel-importance"``, :mod:`~ptx_utils.finetuning.feature_transform`; frozen
            backbones only);
            ``transform_options`` its settings (sorted ``(key, JSON value)`` pairs, e.g. k).
        bn_stats: ``"protocol"`` (the config's ``bn_mode``), ``"eval"``, ``"train"``, or AdaBN:
            ``"support"`` / ``"support+query"`` (transductive) re-estimate the running
            statistics on the episode before adapting, then the config's ``bn_mode``
            (:mod:`~ptx_utils.finetuning.bn_stats`).
        loads: meta-trained parts, as checkpoint references (``"path#sha256"``).
        steps: a fixed number of optimisation steps (attachments: full-batch steps, None = 40;
            SGD strategies: planned, None = the protocol's passes × batches).
        name: a label (not part of the identity).

    Example:
        >>> s = Strategy(Scheme((0, 0, 0.1, 1.0)), classifier="cosine")
        >>> Strategy.from_dict(s.to_dict()) == s
        True
    """

    scheme: Scheme
    classifier: str = "protocol"
    optimizer: str = "sgd"
    attachments: tuple[Attachment, ...] = ()
    feature_transform: str = "none"
    transform_options: tuple[tuple[str, Any], ...] = ()
    bn_stats: str = "protocol"
    loads: tuple[str, ...] = ()
    steps: int | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, Scheme):
            raise TypeError(
                f"Strategy.scheme must be a Scheme, got {type(self.scheme).__name__}; "
                "wrap per-layer rates as Scheme((...))"
            )
        _choice("classifier", self.classifier, CLASSIFIERS, PLANNED_CLASSIFIERS)
        _choice("optimizer", self.optimizer, OPTIMIZERS, PLANNED_OPTIMIZERS)
        _choice("feature_transform", self.feature_transform, FEATURE_TRANSFORMS,
                PLANNED_FEATURE_TRANSFORMS)  # fmt: skip
        _choice("bn_stats", self.bn_stats, BN_STATS, PLANNED_BN_STATS)
        object.__setattr__(self, "attachments", tuple(self.attachments))
        object.__setattr__(self, "loads", tuple(str(x) for x in self.loads))
        pairs = self.transform_options
        pairs = pairs.items() if isinstance(pairs, Mapping) else pairs
        object.__setattr__(self, "transform_options", tuple(sorted((str(k), v) for k, v in pairs)))
        if self.feature_transform in FEATURE_TRANSFORMS:
            check_transform(self.feature_transform, dict(self.transform_options))
        if self.feature_transform == "channel-importance" and self.scheme.n_trainable_layers:
            raise ValueError(
                "the channel importance transform reads frozen features (Luo et al. apply it at "
                f"test time): set every backbone rate to 0, got scheme '{self.scheme}'; its "
                "derivative near 0 is huge, so training layers through it is numerically chaotic"
            )
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be None or an int >= 0, got {self.steps!r}")
        if not self.name and self.scheme.name:
            object.__setattr__(self, "name", self.scheme.name)

    # -- the scheme's view (a strategy reads as its scheme where only rates matter) ------------

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.scheme.lrs

    @property
    def head_lr(self) -> float:
        return self.scheme.head_lr

    @property
    def n_trainable_layers(self) -> int:
        return self.scheme.n_trainable_layers

    def check(self, layer_names: Sequence[str], zoo: Sequence[float] | None = None) -> Strategy:
        """Validate the scheme against a backbone's layers (and an lr zoo); return self."""
        self.scheme.check(layer_names, zoo)
        return self

    def with_scheme(self, scheme: Scheme) -> Strategy:
        """The same strategy with other per-layer rates (how the search varies a strategy)."""
        return replace(self, scheme=scheme, name=scheme.name)

    @property
    def closed_form(self) -> bool:
        """Whether nothing trains by gradient steps: a closed-form classifier on frozen features."""
        return self.classifier in CLOSED_FORM_CLASSIFIERS and not self.attachments

    @property
    def path(self) -> str:
        """How the engines run it: ``"closed-form"``, ``"attachments"`` (TSA, LT+NCC),
        ``"spottune"``, ``"case"`` (UpperCaSE), ``"maml"``, ``"sgd"``."""
        if self.classifier == "maml":
            return "maml"
        if any(a.kind == "case" for a in self.attachments):
            return "case"
        if any(a.kind == "spottune" for a in self.attachments):
            return "spottune"
        if self.attachments:
            return "attachments"
        return "closed-form" if self.closed_form else "sgd"

    def portable(self) -> Strategy:
        """This strategy with each ``loads`` reference reduced to its hash: equal for a run
        directory moved elsewhere (the same files under another path), so saved rows still
        match it."""
        return replace(self, loads=tuple("#" + ref.rpartition("#")[2] for ref in self.loads))

    def trained_as(self) -> Strategy:
        """This strategy without its test-time-only options (:data:`TEST_TIME_OPTIONS`): two
        strategies with equal ``trained_as()`` train alike, so the engines train them once."""
        attachments = tuple(
            replace(a, options=tuple(
                (k, v) for k, v in a.options if k not in TEST_TIME_OPTIONS.get(a.kind, ())
            ))
            for a in self.attachments
        )  # fmt: skip
        return replace(self, attachments=attachments, name="")

    @property
    def adapts_bn(self) -> bool:
        """Whether the running statistics are re-estimated on the episode (AdaBN)."""
        return self.bn_stats in ADAPTIVE_BN_STATS

    # -- what the engines do -------------------------------------------------------------------

    def unimplemented(self) -> list[str]:
        """The fields whose values the engines do not implement yet (empty: runnable)."""
        out = []
        if self.classifier not in CLASSIFIERS:
            out.append(f"classifier {self.classifier!r}")
        if self.optimizer not in OPTIMIZERS:
            out.append(f"optimizer {self.optimizer!r}")
        if self.path == "maml":
            out += self._maml_unimplemented()
        elif self.path == "case":
            out += self._case_unimplemented()
        elif self.path == "spottune":  # tuned copies, policy and head by the protocol's SGD
            if len(self.attachments) != 1:
                out.append("spottune with other attachments")
            if self.classifier not in ("protocol", "linear", "cosine") or self.optimizer != "sgd":
                out.append("spottune other than by SGD with a trained head")
            if self.scheme.n_trainable_layers:
                out.append("spottune with trained layers (its copies take the attachment's lr)")
            if self.feature_transform != "none":
                out.append("spottune with a feature transform")
            if self.bn_stats not in ("protocol", "eval"):
                out.append(f"spottune with bn_stats {self.bn_stats!r} (eval-mode BN only)")
        elif self.attachments and all(a.kind in ATTACHMENTS for a in self.attachments):
            # TSA / LT+NCC: NCC loss, Adadelta, frozen backbone
            if self.classifier != "ncc-cosine" or self.optimizer != "adadelta":
                out.append("attachments trained other than by Adadelta on the NCC (cosine) loss")
            if self.scheme.n_trainable_layers:
                out.append("attachments with trained layers")
            if len({a.kind for a in self.attachments}) != len(self.attachments):
                out.append("an attachment kind given twice")
        elif self.optimizer == "adadelta":
            out.append("optimizer 'adadelta' without attachments")
        if self.path != "case" and self.classifier == "zero-linear":
            out.append("classifier 'zero-linear' without CaSE blocks")
        if self.path != "case" and self.optimizer == "adam":
            out.append("optimizer 'adam' without CaSE blocks (UpperCaSE's head)")
        if self.feature_transform not in FEATURE_TRANSFORMS:
            out.append(f"feature_transform {self.feature_transform!r}")
        if self.bn_stats not in BN_STATS:
            out.append(f"bn_stats {self.bn_stats!r}")
        out += [f"attachment {a.kind!r}" for a in self.attachments if a.kind not in ATTACHMENTS]
        if self.loads and self.path not in ("spottune", "maml", "case"):  # meta-trained parts
            out.append("meta-trained parts (loads)")
        if self.closed_form and self.scheme.n_trainable_layers:
            out.append(f"classifier {self.classifier!r} with trained layers")
        if self.steps is not None and self.path not in ("attachments", "maml", "case"):
            out.append(f"steps {self.steps}")
        return out

    def _case_unimplemented(self) -> list[str]:
        out = []
        if len(self.attachments) != 1:
            out.append("case with other attachments")
        if self.classifier != "zero-linear" or self.optimizer != "adam":
            out.append("case other than UpperCaSE's zero-linear head fitted by Adam")
        if len(self.loads) != 1 or self.steps is None:
            out.append("case without one meta-trained CaSE file in loads and its steps")
        if self.scheme.n_trainable_layers or self.feature_transform != "none":
            out.append("case with trained layers or a feature transform (frozen backbone)")
        if self.bn_stats not in ("protocol", "eval"):
            out.append(f"case with bn_stats {self.bn_stats!r} (eval-mode BN only)")
        return out

    def _maml_unimplemented(self) -> list[str]:
        out = []
        if len(self.loads) != 1:
            out.append("maml without exactly one checkpoint in loads")
        if self.steps is None:
            out.append("maml without steps")
        if self.head_lr <= 0 or any(lr != self.head_lr for lr in self.lrs):
            out.append("maml with per-layer rates (its inner loop has one rate > 0)")
        if self.attachments or self.optimizer != "sgd" or self.feature_transform != "none":
            out.append("maml with attachments, another optimiser or a feature transform")
        if self.bn_stats != "protocol":
            out.append(f"maml with bn_stats {self.bn_stats!r} (it normalises by the batch)")
        return out

    def protocol(self, cfg: FinetuneConfig) -> FinetuneConfig:
        """``cfg`` with this strategy's classifier and BN mode; refuses what is not implemented.

        Raises:
            NotImplementedError: the strategy uses a planned value (see :meth:`unimplemented`).
        """
        missing = self.unimplemented()
        if missing:
            raise NotImplementedError(
                f"strategy '{self}' uses {', '.join(missing)}, which the fine-tuning engines do "
                "not implement yet (see docs/strategies.md for the plan); use a strategy of "
                "implemented values"
            )
        if self.path not in ("sgd", "spottune"):  # the protocol's head and BN mode do not apply
            return cfg
        head = cfg.head if self.classifier == "protocol" else self.classifier
        head = PROTOTYPE_HEADS.get(head, head)
        keep = self.bn_stats in ("protocol", *ADAPTIVE_BN_STATS)
        bn_mode = cfg.bn_mode if keep else self.bn_stats
        return (
            cfg
            if (head, bn_mode) == (cfg.head, cfg.bn_mode)
            else replace(cfg, head=head, bn_mode=bn_mode)
        )

    # -- text and JSON -------------------------------------------------------------------------

    def __str__(self) -> str:
        """The scheme's text, then every non-default field (``0 0 0.1 1 | head 0.01 | cosine``)."""
        parts = [str(self.scheme)]
        if self.classifier != "protocol":
            parts.append(self.classifier)
        if self.optimizer != "sgd":
            parts.append(self.optimizer)
        parts += [f"{a.kind} {a.lr:g}" for a in self.attachments]
        if self.feature_transform != "none":
            options = "".join(f" {k}={v}" for k, v in self.transform_options)
            parts.append(self.feature_transform + options)
        if self.bn_stats != "protocol":
            parts.append(f"bn {self.bn_stats}")
        if self.loads:
            parts.append(f"loads {len(self.loads)}")
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` inverts it."""
        return {
            "scheme": self.scheme.to_dict(),
            "classifier": self.classifier,
            "optimizer": self.optimizer,
            "attachments": [a.to_dict() for a in self.attachments],
            "feature_transform": self.feature_transform,
            "transform_options": dict(self.transform_options),
            "bn_stats": self.bn_stats,
            "loads": list(self.loads),
            "steps": self.steps,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Strategy:
        """From :meth:`to_dict`'s form, or from a bare scheme's (``{"lrs": ...}``)."""
        if "lrs" in data:
            return cls(Scheme.from_dict(dict(data)))
        known = {"scheme", "classifier", "optimizer", "attachments", "feature_transform",
                 "transform_options", "bn_stats", "loads", "steps", "name"}  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown strategy field(s) {', '.join(unknown)}")
        return cls(
            scheme=Scheme.from_dict(dict(data["scheme"])),
            classifier=data.get("classifier", "protocol"),
            optimizer=data.get("optimizer", "sgd"),
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments", [])),
            feature_transform=data.get("feature_transform", "none"),
            transform_options=tuple(dict(data.get("transform_options", {})).items()),
            bn_stats=data.get("bn_stats", "protocol"),
            loads=tuple(data.get("loads", [])),
            steps=data.get("steps"),
            name=data.get("name", ""),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def as_strategy(value: Strategy | Scheme) -> Strategy:
    """A :class:`Strategy` from a strategy or a bare scheme (every scheme is a strategy)."""
    if isinstance(value, Strategy):
        return value
    if isinstance(value, Scheme):
        return Strategy(value)
    raise TypeError(
        f"expected a ptx_utils Strategy or Scheme, got {type(value).__name__}; build one with "
        "Strategy(Scheme(rates)) or a named constructor such as linear_probe(n_layers)"
    )


def check_strategies(
    strategies: Mapping[str, Strategy | Scheme],
    layer_names: Sequence[str],
    zoo: Sequence[float] | None = None,
    what: str = "strategy",
) -> dict[str, Strategy]:
    """Name -> :class:`Strategy`, each checked against the backbone's layers (and an lr zoo).

    Raises:
        ValueError: an empty mapping, a name that is not a non-empty string, or a scheme that
            does not fit ``layer_names`` (the message names the strategy).
        TypeError: a value that is neither a Strategy nor a Scheme.
    """
    if not strategies:
        raise ValueError(f"need at least one {what} (name -> Strategy)")
    out = {}
    for name, value in strategies.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} names must be non-empty strings, got {name!r}")
        try:
            strategy = as_strategy(value)
        except TypeError as e:
            raise TypeError(f"{what} {name!r}: {e}") from None
        try:
            strategy.check(layer_names, zoo)
        except ValueError as e:
            raise ValueError(f"{what} {name!r}: {e}") from None
        out[name] = strategy
    return out
