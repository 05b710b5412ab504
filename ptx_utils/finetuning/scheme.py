"""A :class:`Scheme`: one learning rate per backbone layer (0 = frozen) plus the head's.

What Partial Transfer searches for, and the backbone part of every
:class:`~ptx_utils.finetuning.strategy.Strategy`. Schemes print readably
(``0 0 0.01 0.1 | head 0.01``), hash (a search never evaluates one twice) and round-trip through
JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The learning rates the search draws from (the paper's zoo).
DEFAULT_LR_ZOO: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
DEFAULT_HEAD_LR = 0.01
PARAM_KINDS = ("all", "bn")


@dataclass(frozen=True)
class Scheme:
    """Per-layer learning rates for fine-tuning one backbone.

    Attributes:
        lrs: one learning rate per backbone layer, input side first; 0 freezes the layer.
        head_lr: learning rate of the new classification head.
        params: ``"all"`` trains every parameter of a layer with a non-zero rate; ``"bn"`` trains
            only its batch-norm weights and biases (BN-affine fine-tuning).
        name: optional label of a named strategy (not part of the identity).
    """

    lrs: tuple[float, ...]
    head_lr: float = DEFAULT_HEAD_LR
    params: str = "all"
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        object.__setattr__(self, "head_lr", float(self.head_lr))
        if not self.lrs:
            raise ValueError("a scheme needs one learning rate per layer; got none")
        if any(x < 0 or x != x for x in (*self.lrs, self.head_lr)):
            raise ValueError(f"learning rates must be >= 0, got {self}")
        if self.params not in PARAM_KINDS:
            raise ValueError(f"params must be one of {PARAM_KINDS}, got {self.params!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scheme) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def key(self) -> tuple[Any, ...]:
        """The identity of the scheme (the name is only a label)."""
        return (self.lrs, self.head_lr, self.params)

    def __str__(self) -> str:
        body = " ".join(f"{x:g}" for x in self.lrs) + f" | head {self.head_lr:g}"
        return body + (" [bn only]" if self.params == "bn" else "")

    @property
    def n_trainable_layers(self) -> int:
        return sum(x > 0 for x in self.lrs)

    @property
    def frozen_prefix(self) -> int:
        """How many layers from the input side are frozen (rate 0) before the first trained one."""
        for i, x in enumerate(self.lrs):
            if x > 0:
                return i
        return len(self.lrs)

    def check(self, layer_names: Sequence[str], zoo: Sequence[float] | None = None) -> Scheme:
        """Validate against a backbone's layers (and optionally an lr zoo); return self."""
        if len(self.lrs) != len(layer_names):
            raise ValueError(
                f"scheme '{self}' has {len(self.lrs)} learning rates but the backbone has "
                f"{len(layer_names)} layers ({', '.join(layer_names)}); give one rate per layer"
            )
        if zoo is not None:
            outside = sorted({x for x in self.lrs if x not in set(check_lr_zoo(zoo))})
            if outside:
                raise ValueError(
                    f"scheme '{self}' uses rates {outside} outside the lr zoo {tuple(zoo)}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` inverts it."""
        return {
            "lrs": list(self.lrs),
            "head_lr": self.head_lr,
            "params": self.params,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scheme:
        unknown = sorted(set(data) - {"lrs", "head_lr", "params", "name"})
        if unknown:
            raise ValueError(f"unknown scheme field(s) {', '.join(unknown)}")
        return cls(
            tuple(data["lrs"]),
            data.get("head_lr", DEFAULT_HEAD_LR),
            data.get("params", "all"),
            data.get("name", ""),
        )


def check_lr_zoo(zoo: Sequence[float], what: str = "lr zoo") -> tuple[float, ...]:
    """The zoo as a tuple of floats; it must hold distinct learning rates >= 0.

    Raises:
        ValueError: an empty zoo, a repeated rate, or a negative or NaN one.
    """
    rates = tuple(float(x) for x in zoo)
    if not rates or len(set(rates)) != len(rates) or any(x < 0 or x != x for x in rates):
        raise ValueError(f"{what} must hold distinct learning rates >= 0, got {tuple(zoo)}")
    return rates
