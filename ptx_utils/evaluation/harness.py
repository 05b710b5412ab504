"""The evaluation harness: fine-tune every strategy on every test episode, tabulate, write.

:func:`evaluate_strategies` runs each (strategy, episode) replica with the sequential reference or
the batched engine and returns a tidy frame, one row per (strategy, episode). The replica seed is
:func:`replica_seed` ``(seed, episode)`` — the same for every strategy — so on one episode all
strategies start from the same head initialisation and see the same mini-batch order: they differ
only by their scheme, and :func:`paired_table` compares them episode by episode.

Failures are never scored as chance: a diverged replica has ``accuracy`` NaN and ``diverged``
True. :func:`summary_table` reports the mean over the episodes that did not diverge together with
``n_diverged`` and ``mean_failed_as_zero`` (diverged episodes scored 0), so a strategy that often
diverges cannot look good. :func:`write_results` writes the CSVs, a LaTeX table and provenance.

Accuracies in the frames are fractions in [0, 1]; only the LaTeX table shows percent.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ptx_utils.data.base import FewShotDataset
from ptx_utils.core.device import resolve_device
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.models import Backbone
from ptx_utils.core.io import atomic_write_json, atomic_write_text
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning.scheme import Scheme
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


def _check_strategies(backbone: Backbone, strategies: Mapping[str, Scheme]) -> None:
    if not strategies:
        raise ValueError("evaluate_strategies needs at least one strategy (name -> Scheme)")
    for name, scheme in strategies.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"strategy names must be non-empty strings, got {name!r}")
        if not isinstance(scheme, Scheme):
            raise TypeError(f"strategy {name!r} must be a Scheme, got {type(scheme).__name__}")
        try:
            scheme.check(backbone.layer_names())
        except ValueError as e:
            raise ValueError(f"strategy {name!r}: {e}") from None


def evaluate_strategies(
    backbone: Backbone,
    strategies: Mapping[str, Scheme],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig | None = None,
    seed: int = 0,
    engine: str | None = None,
    device: str | torch.device = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Fine-tune and score every strategy on every episode.

    Args:
        backbone: the pre-trained backbone (left unchanged; copied when it must move device).
        strategies: name -> scheme, in the order the tables should list them.
        dataset: the split ``episodes`` were drawn from.
        episodes: the test episodes; row ``episode`` of the result is ``episodes`` position i.
        cfg: the fine-tuning protocol (None: the paper's :class:`FinetuneConfig` defaults).
        seed: base seed; replica (strategy, episode i) uses :func:`replica_seed` ``(seed, i)``.
        engine: ``"sequential"`` (the reference, one replica at a time), ``"batched"`` (many
            replicas at once) or None for :func:`default_engine`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        chunk_size: replicas per batched step (batched engine only; None lets it choose).
        progress: show a progress bar.
        checkpoint_dir: when given, the evaluation resumes: each strategy's rows are saved there
            (:func:`strategy_checkpoint`) as soon as it is done, and a strategy already saved for
            the same episodes, scheme, seed and fine-tuning protocol is loaded instead of run
            again — an interrupted job loses at most the strategy it was on, and the resumed
            rows equal an uninterrupted run's (each strategy is evaluated on its own either way;
            a replica's seed depends on its episode only). A saved file for other settings is
            refused.

    Returns:
        A tidy frame, one row per (strategy, episode), strategy-major, with columns
        :data:`ROW_COLUMNS`: ``accuracy`` (fraction of queries right, NaN when diverged),
        ``diverged`` (bool) and the replica ``seed``. ``attrs`` carries the run's metadata
        (engine, device, seed, episodes digest, cfg, strategies) for :func:`write_results`.
    """
    if checkpoint_dir is not None:
        options = {"engine": engine, "device": device, "chunk_size": chunk_size}
        return _evaluate_resumable(
            backbone,
            strategies,
            dataset,
            episodes,
            cfg,
            seed,
            Path(checkpoint_dir),
            options,
            progress,
        )
    cfg = FinetuneConfig() if cfg is None else cfg
    engine = default_engine() if engine is None else engine
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} or None (the default), got {engine!r}")
    _check_strategies(backbone, strategies)
    if episodes.n_query < 1:
        raise ValueError("evaluation needs query images; sample episodes with n_query >= 1")
    model, tensors = place_episodes(backbone, dataset, episodes, device)
    n_way, n_episodes = episodes.n_way, len(episodes)
    names = list(strategies)
    plan = [(name, e) for name in names for e in range(n_episodes)]
    seeds = [replica_seed(seed, e) for _, e in plan]

    accuracy, diverged = replica_accuracies(
        model,
        [strategies[name] for name, _ in plan],
        [e for _, e in plan],
        seeds,
        tensors,
        n_way,
        cfg,
        engine=engine,
        chunk_size=chunk_size,
        progress=progress,
    )

    rows = pd.DataFrame(
        {
            "strategy": [name for name, _ in plan],
            "scheme": [str(strategies[name]) for name, _ in plan],
            "episode": np.array([e for _, e in plan], dtype=np.int64),
            "n_way": n_way,
            "k_shot": episodes.k_shot,
            "n_query": episodes.n_query,
            "accuracy": accuracy,
            "diverged": diverged,
            "seed": np.array(seeds, dtype=np.int64),
        },
        columns=list(ROW_COLUMNS),
    )
    rows.attrs.update(
        {
            "engine": engine,
            "device": str(tensors[0].device),
            "seed": int(seed),
            "episodes_digest": episodes.digest(),
            "episodes_seed": episodes.seed,
            "dataset": f"{dataset.name}/{dataset.split}",
            "dataset_fingerprint": episodes.dataset_fingerprint,
            "finetune_config": asdict(cfg),
            "strategies": {name: scheme.to_dict() for name, scheme in strategies.items()},
        }
    )
    return rows


def strategy_checkpoint(checkpoint_dir: str | Path, episodes: Episodes, strategy: str) -> Path:
    """Where :func:`evaluate_strategies` keeps one strategy's rows: ``<n>way_<k>shot_<q>query_
    <strategy>.csv`` (and its metadata beside it, same stem, ``.json``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", strategy).strip("-")
    stem = f"{episodes.n_way}way_{episodes.k_shot}shot_{episodes.n_query}query_{slug}"
    return Path(checkpoint_dir) / f"{stem}.csv"


#: The metadata a saved strategy must share with the evaluation that would reuse it.
_RESUME_KEYS = ("episodes_digest", "dataset_fingerprint", "seed", "finetune_config")


def _evaluate_resumable(
    backbone: Backbone,
    strategies: Mapping[str, Scheme],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig | None,
    seed: int,
    checkpoint_dir: Path,
    options: Mapping[str, Any],
    progress: bool,
) -> pd.DataFrame:
    """:func:`evaluate_strategies` one strategy at a time, saving or reusing each one."""
    cfg = FinetuneConfig() if cfg is None else cfg
    _check_strategies(backbone, strategies)
    expected = {
        "episodes_digest": episodes.digest(),
        "dataset_fingerprint": episodes.dataset_fingerprint,
        "seed": int(seed),
        "finetune_config": json.loads(json.dumps(asdict(cfg))),
    }
    frames, metas = [], []
    for name, scheme in strategies.items():
        path = strategy_checkpoint(checkpoint_dir, episodes, name)
        meta_path = path.with_suffix(".json")
        if meta_path.exists():  # written after the CSV: its presence means the strategy is done
            meta = json.loads(meta_path.read_text())
            saved = {k: meta.get(k) for k in _RESUME_KEYS}
            saved_scheme = meta.get("strategies", {}).get(name)
            if saved != expected or saved_scheme != json.loads(json.dumps(scheme.to_dict())):
                raise ValueError(
                    f"{meta_path} holds strategy {name!r} for other settings (episodes, seed, "
                    "fine-tuning protocol or scheme differ); use another checkpoint directory or "
                    "remove that file to evaluate again"
                )
            rows = pd.read_csv(path, keep_default_na=False, na_values=[""])
            rows["accuracy"] = rows["accuracy"].astype(float)
            rows["diverged"] = rows["diverged"].astype(bool)
        else:
            rows = evaluate_strategies(
                backbone, {name: scheme}, dataset, episodes, cfg, seed, progress=progress, **options
            )
            meta = json.loads(json.dumps(rows.attrs, default=str))
            atomic_write_text(path, rows.to_csv(index=False))
            atomic_write_json(meta_path, meta)
        frames.append(rows[list(ROW_COLUMNS)])
        metas.append(meta)
    rows = pd.concat(frames, ignore_index=True)
    rows.attrs.update({**metas[0], **expected})
    rows.attrs["device"] = ", ".join(dict.fromkeys(m["device"] for m in metas))
    rows.attrs["engine"] = ", ".join(dict.fromkeys(m["engine"] for m in metas))
    rows.attrs["strategies"] = {name: scheme.to_dict() for name, scheme in strategies.items()}
    return rows


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
    failed = _failed(rows)
    out = []
    for key, group in rows.groupby(["strategy", *setting], sort=False):
        fail = failed.loc[group.index].to_numpy()
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


def paired_table(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every other strategy minus ``reference``, episode by episode (per episode setting).

    Only episodes where neither strategy diverged enter (``n``); ``n_excluded`` counts the rest.
    ``mean_diff`` and ``ci95`` follow the :func:`~ptx_utils.core.stats.mean_ci95` convention, ``t`` and
    ``p_value`` are the paired t test (two-sided); ``wins`` / ``losses`` / ``ties`` count episodes
    where the strategy beat / lost to / tied the reference. With no usable episode the statistics
    are NaN and ``n`` is 0.

    Raises:
        ValueError: ``reference`` is not a strategy of ``rows``, or rows are duplicated.
    """
    _check_rows(rows, ("strategy", "episode", "accuracy"))
    names = list(dict.fromkeys(rows["strategy"]))
    if reference not in names:
        raise ValueError(
            f"reference strategy {reference!r} is not among the results' strategies: "
            f"{', '.join(names)}"
        )
    setting = _setting_keys(rows)
    frame = rows.assign(_acc=rows["accuracy"].where(~_failed(rows)))
    out = []
    groups = frame.groupby(setting, sort=False) if setting else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        ref = group.loc[group["strategy"] == reference].set_index("episode")["_acc"]
        for name in dict.fromkeys(group["strategy"]):
            if name == reference:
                continue
            other = group.loc[group["strategy"] == name].set_index("episode")["_acc"]
            both = pd.concat([other.rename("a"), ref.rename("b")], axis=1, join="outer")
            usable = both.dropna()
            record: dict[str, Any] = {"strategy": name, "reference": reference}
            record.update(zip(setting, key, strict=True))
            if len(usable):
                record.update(
                    paired_difference(usable["a"].to_numpy(), usable["b"].to_numpy()).to_dict()
                )
            else:
                record.update(
                    mean_diff=math.nan, ci95=math.nan, t=math.nan, p_value=math.nan, n=0,
                    wins=0, losses=0, ties=0,
                )  # fmt: skip
            record["n_excluded"] = len(both) - len(usable)
            out.append(record)
    columns = [c for c in PAIRED_COLUMNS if c not in SETTING_COLUMNS or c in setting]
    return pd.DataFrame(out, columns=columns)


# --- LaTeX ----------------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _setting_label(record: Mapping[str, Any], setting: list[str]) -> str:
    parts = {
        "n_way": lambda v: f"{int(v)}-way",
        "k_shot": lambda v: f"{int(v)}-shot",
        "n_query": lambda v: f"{int(v)} queries",
    }
    return " ".join(parts[c](record[c]) for c in setting) or "Accuracy"


def summary_latex(summary: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs table of a :func:`summary_table`: strategies as rows, settings as columns.

    Cells are ``xx.xx $\\pm$ y.yy`` in percent (mean and 95 % CI half-width over non-diverged
    episodes); a strategy that diverged on some episodes gets ``(k/n div.)`` appended; a missing
    setting or a strategy that always diverged shows ``--``. Needs ``\\usepackage{booktabs}``.
    """
    setting = [c for c in ("n_way", "k_shot") if c in summary.columns]
    if "n_query" in summary.columns and summary["n_query"].nunique() > 1:
        setting.append("n_query")
    labels = [_setting_label(r, setting) for r in summary.to_dict("records")]
    columns = list(dict.fromkeys(labels))
    strategies = list(dict.fromkeys(summary["strategy"]))
    cells: dict[tuple[str, str], str] = {}
    for label, r in zip(labels, summary.to_dict("records"), strict=True):
        if r["n"] == 0 or not np.isfinite(r["mean"]):
            cell = "--"
        else:
            cell = f"{100 * r['mean']:.2f} $\\pm$ {100 * r['ci95']:.2f}"
        if r["n_diverged"]:
            cell += f" ({int(r['n_diverged'])}/{int(r['n_episodes'])} div.)"
        cells[(r["strategy"], label)] = cell
    lines = []
    if caption is not None:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines += [
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
        " & ".join(["Strategy", *(latex_escape(c) for c in columns)]) + " \\\\",
        "\\midrule",
    ]
    for name in strategies:
        row = [latex_escape(name), *(cells.get((name, c), "--") for c in columns)]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption is not None:
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# --- Writing ----------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def write_results(
    run_dir: str | Path,
    rows: pd.DataFrame,
    name: str = "test",
    reference: str | None = None,
    overwrite: bool = False,
    **extra: Any,
) -> dict[str, Path]:
    """Write the results of one evaluation under ``run_dir/results/``, every file atomically.

    Files: ``<name>_episodes.csv`` (the tidy rows), ``<name>_summary.csv``
    (:func:`summary_table`), ``<name>_summary.tex`` (:func:`summary_latex`),
    ``<name>_paired.csv`` (:func:`paired_table`, only when ``reference`` is given) and
    ``<name>_provenance.json`` (:func:`~ptx_utils.core.io.provenance` plus ``rows.attrs``, the
    reference and ``extra``).

    Existing files are never replaced silently: if any target exists, nothing is written and a
    :class:`FileExistsError` says so, unless ``overwrite=True``.

    Returns:
        kind (``episodes``, ``summary``, ``summary_tex``, ``paired``, ``provenance``) -> path.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"result name {name!r} must be a plain file-name stem (letters, digits, . _ -)"
        )
    summary = summary_table(rows)
    paired = paired_table(rows, reference) if reference is not None else None
    results = Path(run_dir) / "results"
    targets = {
        "episodes": results / f"{name}_episodes.csv",
        "summary": results / f"{name}_summary.csv",
        "summary_tex": results / f"{name}_summary.tex",
    }
    if paired is not None:
        targets["paired"] = results / f"{name}_paired.csv"
    targets["provenance"] = results / f"{name}_provenance.json"
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"results {name!r} already exist ({', '.join(existing)}); choose another name, a new "
            "run directory, or pass overwrite=True"
        )
    atomic_write_text(targets["episodes"], rows.to_csv(index=False))
    atomic_write_text(targets["summary"], summary.to_csv(index=False))
    atomic_write_text(targets["summary_tex"], summary_latex(summary))
    if paired is not None:
        atomic_write_text(targets["paired"], paired.to_csv(index=False))
    meta: dict[str, Any] = {
        **rows.attrs,
        "name": name,
        "reference": reference,
        "files": {k: p.name for k, p in targets.items()},
        "n_rows": len(rows),
        **extra,
    }
    seed, device = meta.pop("seed", None), meta.pop("device", None)
    payload = provenance(seed=seed, device=device, evaluation_device=device, **meta)
    atomic_write_json(targets["provenance"], payload)
    return targets
