"""Accuracy statistics over episodes: mean with a 95 % confidence interval, paired comparisons.

:func:`mean_ci95` is the few-shot literature's interval; :func:`summarize` applies it to values
with failures (NaN) left out and counted; :func:`paired_difference` compares two strategies on
identical episodes (mean difference, CI, paired t test). The Student t distribution is computed
here (regularized incomplete beta by continued fraction) so SciPy is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


# --- Student t distribution (no SciPy needed) --------------------------------------------------

_BETACF_MAX_ITER = 500
_BETACF_EPS = 3e-16
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Numerical Recipes ``betacf``, Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _BETACF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _BETACF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom.

    Uses P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2). ``t = ±inf`` gives 0; NaN gives NaN.
    """
    if df <= 0:
        raise ValueError(f"Student t needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(0.5 * df, 0.5, df / (df + t * t)))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * student_t_sf2(t, df)
    return tail if t < 0 else 1.0 - tail


# --- Summaries and paired comparisons ----------------------------------------------------------

NAN_POLICIES = ("raise", "omit")


@dataclass(frozen=True)
class Summary:
    """Mean and 95 % CI half-width (the :func:`mean_ci95` convention) of the finite values.

    Attributes:
        mean, ci95: of the ``n`` finite values (NaN when there are none).
        n: how many finite values entered.
        n_missing: how many NaN values were left out.
    """

    mean: float
    ci95: float
    n: int
    n_missing: int


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """:func:`mean_ci95` over the non-NaN ``values``, with the counts of used and missing ones.

    NaN marks a failed measurement (e.g. a diverged episode); it is left out and counted. When
    every value is missing the mean and CI are NaN. Infinite values are an error.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    missing = np.isnan(x)
    if np.isinf(x).any():
        raise ValueError("summarize got infinite values; accuracies must be finite or NaN")
    kept = x[~missing]
    if kept.size == 0:
        return Summary(math.nan, math.nan, 0, int(missing.sum()))
    mean, ci = mean_ci95(kept)
    return Summary(mean, ci, int(kept.size), int(missing.sum()))


@dataclass(frozen=True)
class PairedComparison:
    """Strategy ``a`` minus strategy ``b`` on identical episodes.

    Attributes:
        mean_diff: mean of d = a - b.
        ci95: 95 % CI half-width of the mean difference, 1.96 * std(d, ddof=0) / sqrt(n).
        n: number of paired episodes.
        t: paired t statistic, mean(d) / (std(d, ddof=1) / sqrt(n)); NaN when n < 2.
        p_value: two-sided p-value of ``t`` under Student's t with n - 1 degrees of freedom.
        wins, losses, ties: episodes where a > b, a < b, a == b.
    """

    mean_diff: float
    ci95: float
    n: int
    t: float
    p_value: float
    wins: int
    losses: int
    ties: int

    @property
    def win_rate(self) -> float:
        """Fraction of episodes where a > b."""
        return self.wins / self.n

    @property
    def loss_rate(self) -> float:
        """Fraction of episodes where a < b."""
        return self.losses / self.n

    def to_dict(self) -> dict[str, float | int]:
        return {
            "mean_diff": self.mean_diff,
            "ci95": self.ci95,
            "t": self.t,
            "p_value": self.p_value,
            "n": self.n,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": self.win_rate,
            "loss_rate": self.loss_rate,
        }


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    nan_policy: str = "raise",
) -> PairedComparison:
    """Compare per-episode accuracies of two strategies measured on the SAME episodes, in order.

    The CI half-width uses the :func:`mean_ci95` convention (ddof=0, z = 1.96) so it compares with
    the per-strategy intervals; the t statistic is the textbook paired t (ddof=1) and its p-value
    is two-sided with n - 1 degrees of freedom.

    Edge cases: when every difference is the same (zero variance, judged with a relative
    tolerance of 1e-12 against float rounding) t is 0 and p is 1 if that difference is 0, else
    t is ±inf and p is 0. With a single episode t and p are NaN.

    Args:
        a, b: per-episode accuracies, position i of both being the same episode.
        nan_policy: ``"raise"`` (default): a NaN is an error; ``"omit"``: episodes where either
            value is NaN (a failed / diverged run) are dropped from both.

    Raises:
        ValueError: different lengths, no episodes, infinite values, or NaN with ``"raise"``.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"paired_difference needs the accuracies of both strategies on the same episodes; "
            f"got {x.size} and {y.size} values"
        )
    if np.isinf(x).any() or np.isinf(y).any():
        raise ValueError("paired_difference got infinite values; accuracies must be finite")
    nan = np.isnan(x) | np.isnan(y)
    if nan.any():
        if nan_policy == "raise":
            raise ValueError(
                f"{int(nan.sum())} of {x.size} episode(s) have a NaN accuracy (failed or "
                "diverged runs); drop those episodes from both strategies first, or pass "
                "nan_policy='omit'"
            )
        x, y = x[~nan], y[~nan]
    n = int(x.size)
    if n == 0:
        raise ValueError("paired_difference needs at least one episode with both accuracies")
    d = x - y
    mean = float(d.mean())
    ci = float(Z95 * d.std() / math.sqrt(n))
    if n < 2:
        t, p = math.nan, math.nan
    elif float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        # Zero variance: the t statistic is 0/0 or ±c/0; decide without dividing.
        if mean == 0.0:
            t, p, ci = 0.0, 1.0, 0.0
        else:
            t, p, ci = math.copysign(math.inf, mean), 0.0, 0.0
    else:
        t = mean / (float(d.std(ddof=1)) / math.sqrt(n))
        p = student_t_sf2(t, n - 1)
    return PairedComparison(
        mean_diff=mean,
        ci95=ci,
        n=n,
        t=t,
        p_value=p,
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
        ties=int((d == 0).sum()),
    )
