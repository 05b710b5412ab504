"""Input checks shared by every config: unknown keys are refused with the list of known ones."""

from __future__ import annotations

from collections.abc import Iterable


def refuse_unknown(keys: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the unknown ``keys`` and every known one.

    Example:
        >>> refuse_unknown(["epochs"], ["epochs", "seed"], "pre-training parameter")
    """
    known = set(known)
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(
            f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
