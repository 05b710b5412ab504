"""Accuracy statistics over episodes: mean with a 95 % confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.96


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95 % CI) = (mean, 1.96 * std / sqrt(n)), std with ddof=0.

    This is the formula of the few-shot literature (CloserLook, P-Transfer) so numbers compare.
    One value gives a half-width of 0; no values is an error.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(x.mean()), float(Z95 * x.std() / math.sqrt(x.size))
