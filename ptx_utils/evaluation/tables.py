"""Per-strategy summaries and paired differences of the tidy per-episode rows.

Failures are never scored as chance: a diverged replica has ``accuracy`` NaN and ``diverged`` True;
summaries count them and also report the mean with them scored 0. Accuracies are fractions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ptx_utils.core.stats import paired_difference, summarize

#: Columns of the tidy per-episode frame :func:`evaluate_strategies` returns.
ROW_COLUMNS = (
    "strategy",
    "scheme",
    "episode",
    "n_way",
    "k_shot",
    "n_query",
    "accuracy",
    "diverged",
    "seed",
)
#: The episode setting; rows of different settings are summarised and paired separately.
SETTING_COLUMNS = ("n_way", "k_shot", "n_query")
SUMMARY_COLUMNS = (
    "strategy",
    "scheme",
    *SETTING_COLUMNS,
    "n_episodes",
    "n",
    "n_diverged",
    "mean",
    "ci95",
    "mean_failed_as_zero",
    "ci95_failed_as_zero",
)
PAIRED_COLUMNS = (
    "strategy",
    "reference",
    *SETTING_COLUMNS,
    "mean_diff",
    "ci95",
    "t",
    "p_value",
    "n",
    "wins",
    "losses",
    "ties",
    "n_excluded",
)


def _setting_keys(rows: pd.DataFrame) -> list[str]:
    return [c for c in SETTING_COLUMNS if c in rows.columns]


def _check_rows(rows: pd.DataFrame, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise ValueError(
            f"rows lack column(s) {', '.join(missing)}; pass the frame evaluate_strategies returns"
        )
    keys = ["strategy", *_setting_keys(rows), "episode"]
    dup = rows.duplicated(keys)
    if dup.any():
        first = rows.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(
            f"{int(dup.sum())} duplicate (strategy, setting, episode) row(s), e.g. {first}; "
            "each strategy must have one row per episode"
        )


def _failed(rows: pd.DataFrame) -> pd.Series:
    """Diverged, or no accuracy (NaN)."""
    failed = rows["accuracy"].isna()
    if "diverged" in rows.columns:
        failed = failed | rows["diverged"].astype(bool)
    return failed


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per strategy (and episode setting): accuracy mean and 95 % CI, with divergences counted.

    Choice on diverged episodes: ``mean`` / ``ci95`` (the :func:`~ptx_utils.core.stats.mean_ci95`
    convention) are over the ``n`` episodes that did NOT diverge, and ``n_diverged`` says how many
    did; ``mean_failed_as_zero`` / ``ci95_failed_as_zero`` score diverged episodes as accuracy 0
    over all ``n_episodes`` — the conservative number to quote when ``n_diverged > 0``. When a
    strategy diverged everywhere its ``mean`` and ``ci95`` are NaN.

    Returns:
        One row per (strategy, n_way, k_shot, n_query) in order of first appearance, columns
        :data:`SUMMARY_COLUMNS` (those of the settings present in ``rows``).
    """
    _check_rows(rows, ("strategy", "episode", "accuracy"))
    setting = _setting_keys(rows)
    out = []
    for key, group in rows.groupby(["strategy", *setting], sort=False):
        fail = _failed(group).to_numpy()  # from the group: no index labels shared across frames
        acc = group["accuracy"].to_numpy(dtype=np.float64)
        ok = summarize(np.where(fail, math.nan, acc))
        as_zero = summarize(np.where(fail, 0.0, acc))
        record: dict[str, Any] = dict(zip(["strategy", *setting], key, strict=True))
        if "scheme" in group.columns:
            record["scheme"] = group["scheme"].iloc[0]
        record.update(
            n_episodes=len(group),
            n=ok.n,
            n_diverged=int(fail.sum()),
            mean=ok.mean,
            ci95=ok.ci95,
            mean_failed_as_zero=as_zero.mean,
            ci95_failed_as_zero=as_zero.ci95,
        )
        out.append(record)
    columns = [c for c in SUMMARY_COLUMNS if c in (out[0] if out else {})] or list(SUMMARY_COLUMNS)
    return pd.DataFrame(out, columns=columns)


def paired_table(
    rows: pd.DataFrame, reference: str, strategies: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every other strategy (or those of ``strategies``) minus ``reference``, episode by episode
    (per episode setting).

    Only episodes where neither strategy diverged enter (``n``); ``n_excluded`` counts the rest.
    ``mean_diff`` and ``ci95`` follow the :func:`~ptx_utils.core.stats.mean_ci95` convention,
    ``t`` and ``p_value`` are the paired t test (two-sided); ``wins`` / ``losses`` / ``ties``
    count episodes where the strategy beat / lost to / tied the reference. With no usable episode
    the statistics are NaN and ``n`` is 0.

    Raises:
        ValueError: ``reference`` (or one of ``strategies``) is not a strategy of ``rows``, or
            rows are duplicated.
    """
    _check_rows(rows, ("strategy", "episode", "accuracy"))
    names = list(dict.fromkeys(rows["strategy"]))
    for name in [reference, *(strategies or [])]:
        if name not in names:
            raise ValueError(
                f"strategy {name!r} is not among the results' strategies: {', '.join(names)}"
            )
    setting = _setting_keys(rows)
    frame = rows.assign(_acc=rows["accuracy"].where(~_failed(rows)), _row=True)
    out = []
    groups = frame.groupby(setting, sort=False) if setting else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        here = list(dict.fromkeys(group["strategy"]))
        columns = list(dict.fromkeys([*here, reference]))  # a reference absent here: all NaN
        wide = {
            v: group.pivot(index="episode", columns="strategy", values=v).reindex(columns=columns)
            for v in ("_acc", "_row")
        }
        acc, present = wide["_acc"], wide["_row"].notna()
        wanted = [
            n for n in (here if strategies is None else strategies) if n in here and n != reference
        ]
        for name in wanted:
            a, b = (acc[n].to_numpy(np.float64) for n in (name, reference))
            has_row = (present[name] | present[reference]).to_numpy()
            usable = ~(np.isnan(a) | np.isnan(b))
            record: dict[str, Any] = {"strategy": name, "reference": reference}
            record.update(zip(setting, key, strict=True))
            if usable.any():
                record.update(paired_difference(a[usable], b[usable]).to_dict())
            else:
                record.update(
                    mean_diff=math.nan, ci95=math.nan, t=math.nan, p_value=math.nan, n=0,
                    wins=0, losses=0, ties=0,
                )  # fmt: skip
            record["n_excluded"] = int(has_row.sum() - usable.sum())
            out.append(record)
    columns = [c for c in PAIRED_COLUMNS if c not in SETTING_COLUMNS or c in setting]
    return pd.DataFrame(out, columns=columns)
