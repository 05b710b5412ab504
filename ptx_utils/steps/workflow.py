"""The steps of notebooks 02-04 as functions: what a notebook does, a test can call.

Each notebook reads what the one before it wrote into the run directory; :func:`require` turns a
missing file into an error that names the notebook that writes it. The run directory holds::

    pretrain/best.pt                              01_pretrain
    search/<n>way_<k>shot_<method>/               02_search (state.json, history.csv, ...)
    results/search_summary.csv                    02_search
    results/transfer_*.csv|tex|json               03_transfer
    shift/<target>/ + results/domain_shift_*      04_domain_shift

Accuracies in every frame are fractions in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.convert import match_format
from ptx_utils.core.device import resolve_device
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation.harness import (
    evaluate_strategies,
    paired_table,
    summary_table,
    write_results,
)
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.models import Backbone
from ptx_utils.core.io import atomic_write_json, atomic_write_text
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning.fixed import bn_affine, full_finetune, last_k, linear_probe
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.search.loop import SearchConfig, SearchResult, search

#: Validation episodes use ``seed + VAL_SEED_OFFSET`` so they never coincide with test episodes.
VAL_SEED_OFFSET = 10_000
#: Columns of ``search_summary.csv`` (:func:`search_summary`).
SEARCH_SUMMARY_COLUMNS = (
    "n_way",
    "k_shot",
    "method",
    "best_scheme",
    "best_lrs",
    "n_trainable",
    "best_fitness",
    "n_evaluated",
    "generations",
    "seconds",
)
#: Columns of ``domain_shift_summary.csv`` (:func:`run_domain_shift`).
SHIFT_SUMMARY_COLUMNS = (
    "target",
    "order",
    "shift",
    "strategy",
    "scheme",
    "n_trainable",
    "n_way",
    "k_shot",
    "n_episodes",
    "n",
    "n_diverged",
    "mean",
    "ci95",
)
#: Columns of ``domain_shift_schemes.csv``: the searched scheme per target, one row per layer.
SHIFT_SCHEME_COLUMNS = (
    "target",
    "order",
    "shift",
    "layer",
    "layer_index",
    "lr",
    "n_trainable",
    "fitness",
)


class RunInputError(FileNotFoundError):
    """A file an earlier notebook writes is missing from the run directory."""


def require(run_dir: str | Path, relative: str | Path, notebook: str) -> Path:
    """``run_dir / relative`` if it exists; else a :class:`RunInputError` naming ``notebook``."""
    path = Path(run_dir) / relative
    if not path.exists():
        raise RunInputError(
            f"{path} is missing: notebook {notebook} writes it. Run {notebook} first with the same "
            f"run_dir ({Path(run_dir)}), or run the whole pipeline with `ptx run`."
        )
    return path


def finetune_config(settings: Mapping[str, Any], pretrain_method: str) -> FinetuneConfig:
    """The fine-tuning protocol: ``settings`` (keys of FinetuneConfig) over the pre-training's head.

    A Baseline backbone gets a new linear head per episode, Baseline++ and ProtoNet a cosine one
    (the classifier they were trained with), unless ``settings`` names ``head``.
    """
    head = "linear" if pretrain_method == "baseline" else "cosine"
    try:
        return FinetuneConfig(**{"head": head, **settings})
    except TypeError as exc:
        raise ValueError(f"finetune parameters {dict(settings)}: {exc}") from None


def load_pretrained(
    run_dir: str | Path, backbone: str, device: str = "auto"
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone notebook 01 pre-trained (``pretrain/best.pt``), on ``device``, in eval mode."""
    path = require(run_dir, "pretrain/best.pt", "01_pretrain")
    model, meta = load_backbone(path, backbone=backbone)
    return model.to(resolve_device(device)).eval(), meta


def val_seed(seed: int) -> int:
    """The seed of the validation episodes the searches score on."""
    return int(seed) + VAL_SEED_OFFSET


# --- 02: search -----------------------------------------------------------------------------------


def search_dir(run_dir: str | Path, n_way: int, k_shot: int, method: str) -> Path:
    """Where the ``method`` search of the ``n_way``-way ``k_shot``-shot protocol lives."""
    return Path(run_dir) / "search" / f"{n_way}way_{k_shot}shot_{method}"


def search_config(settings: Mapping[str, Any], method: str, seed: int) -> SearchConfig:
    """A :class:`SearchConfig` from a preset's ``search`` dict, for ``method`` and ``seed``."""
    return SearchConfig.from_dict({**settings, "method": method, "seed": seed})


def run_searches(
    backbone: Backbone,
    dataset: FewShotDataset,
    n_way: int,
    k_shot: int,
    n_query: int,
    n_episodes: int,
    settings: Mapping[str, Any],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    methods: Sequence[str] = ("evolution", "random"),
    seed: int = 0,
    device: str = "auto",
    callback: Callable[[str], Any] | None = None,
) -> dict[str, SearchResult]:
    """Run (or resume) one search per method on the same validation episodes.

    Args:
        callback: ``method -> search callback`` (e.g. a :class:`~ptx_utils.plots.figures.LiveSearchPlot`
            factory), or None.

    Returns:
        method -> finished search, each written under :func:`search_dir`.
    """
    episodes = sample_episodes(dataset, n_way, k_shot, n_query, n_episodes, val_seed(seed))
    results = {}
    for method in methods:
        results[method] = search(
            backbone,
            dataset,
            episodes,
            search_config(settings, method, seed),
            cfg,
            out_dir=search_dir(run_dir, n_way, k_shot, method),
            device=device,
            callback=callback(method) if callback else None,
        )
    return results


def search_summary(results: Mapping[tuple[int, int, str], SearchResult]) -> pd.DataFrame:
    """One row per search, ``(n_way, k_shot, method) -> result``; columns
    :data:`SEARCH_SUMMARY_COLUMNS`."""
    rows = []
    for (n_way, k_shot, method), result in results.items():
        best = result.best
        rows.append(
            {
                "n_way": n_way,
                "k_shot": k_shot,
                "method": method,
                "best_scheme": str(best.scheme),
                "best_lrs": " ".join(f"{lr:g}" for lr in best.scheme.lrs),
                "n_trainable": best.scheme.n_trainable_layers,
                "best_fitness": best.fitness,
                "n_evaluated": len(result.candidates),
                "generations": result.generations_done,
                "seconds": round(result.elapsed_seconds, 2),
            }
        )
    return pd.DataFrame(rows, columns=list(SEARCH_SUMMARY_COLUMNS))


def write_search_summary(
    run_dir: str | Path, results: Mapping[tuple[int, int, str], SearchResult]
) -> pd.DataFrame:
    """:func:`search_summary` written to ``run_dir/results/search_summary.csv`` (atomically; it
    is derived from the searches' own state, so writing it again gives the same file)."""
    table = search_summary(results)
    atomic_write_text(Path(run_dir) / "results" / "search_summary.csv", table.to_csv(index=False))
    return table


def load_search(run_dir: str | Path, n_way: int, k_shot: int, method: str) -> SearchResult:
    """The search notebook 02 wrote for this protocol and method."""
    out = search_dir(run_dir, n_way, k_shot, method)
    require(run_dir, out.relative_to(run_dir) / "state.json", "02_search")
    return SearchResult.load(out)


# --- 03: transfer ---------------------------------------------------------------------------------


def fixed_strategies(
    n_layers: int, head_lr: float, lr: float = 0.01, last: int = 1
) -> dict[str, Scheme]:
    """The fixed strategies every comparison lists: linear probe, full fine-tune at ``lr``,
    last-``last`` at ``lr`` and BN-affine at ``lr``."""
    return {
        "linear probe": linear_probe(n_layers, head_lr),
        "full fine-tune": full_finetune(n_layers, lr, head_lr),
        f"last-{last}": last_k(n_layers, last, lr, head_lr),
        "BN-affine": bn_affine(n_layers, lr, head_lr),
    }


def transfer_strategies(searched: Scheme, head_lr: float | None = None) -> dict[str, Scheme]:
    """``searched`` first, then :func:`fixed_strategies` with the searched scheme's head lr."""
    head = searched.head_lr if head_lr is None else head_lr
    return {"searched": searched, **fixed_strategies(len(searched.lrs), head)}


def evaluate_shots(
    backbone: Backbone,
    strategies: Mapping[int, Mapping[str, Scheme]],
    dataset: FewShotDataset,
    n_way: int,
    n_query: int,
    n_episodes: int,
    cfg: FinetuneConfig,
    seed: int = 0,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
) -> pd.DataFrame:
    """:func:`~ptx_utils.evaluation.harness.evaluate_strategies` for each ``k_shot -> strategies``.

    Episodes of each shot are ``sample_episodes(dataset, n_way, k_shot, n_query, n_episodes,
    seed)`` — those notebook 01 lists. With ``checkpoint_dir`` every (shot, strategy) is saved
    there when done and an interrupted call resumes (see ``evaluate_strategies``). Returns the
    rows of all shots, one frame; ``attrs["evaluations"]`` keeps each evaluation's metadata by
    shot.
    """
    frames, meta = [], {}
    for k_shot, named in strategies.items():
        episodes = sample_episodes(dataset, n_way, k_shot, n_query, n_episodes, seed)
        rows = evaluate_strategies(
            backbone, named, dataset, episodes, cfg, seed, device=device,
            checkpoint_dir=checkpoint_dir,
        )  # fmt: skip
        meta[str(k_shot)] = dict(rows.attrs)
        frames.append(rows)
    rows = pd.concat(frames, ignore_index=True)
    rows.attrs = {"evaluations": meta, "finetune_config": asdict(cfg)}
    return rows


def searched_differences(rows: pd.DataFrame, searched: str = "searched") -> pd.DataFrame:
    """``searched`` minus every other strategy, episode by episode (per setting).

    Columns as :func:`~ptx_utils.evaluation.harness.paired_table` with ``strategy`` = ``searched`` and
    ``reference`` = the other strategy: ``wins`` counts episodes the searched scheme won. Rows:
    per (n_way, k_shot), the other strategies in the order they appear in ``rows``.
    """
    others = [s for s in dict.fromkeys(rows["strategy"]) if s != searched]
    if searched not in set(rows["strategy"]) or not others:
        raise ValueError(
            f"rows need the strategy {searched!r} and at least one other; "
            f"got {sorted(set(rows['strategy']))}"
        )
    tables = [paired_table(rows, ref) for ref in others]
    differences = pd.concat([t[t["strategy"] == searched] for t in tables], ignore_index=True)
    # One block per setting, the references in the order of the strategies (as the summary).
    return differences.sort_values(["n_way", "k_shot"], kind="stable", ignore_index=True)


def write_transfer(run_dir: str | Path, rows: pd.DataFrame) -> dict[str, Path]:
    """Write notebook 03's results under ``run_dir/results/``: ``transfer_*`` from
    :func:`~ptx_utils.evaluation.harness.write_results` (paired against the linear probe) and
    ``transfer_vs_searched.csv`` (:func:`searched_differences`). Nothing existing is replaced."""
    target = Path(run_dir) / "results" / "transfer_vs_searched.csv"
    if target.exists():
        raise FileExistsError(f"{target} already exists; use a new run directory")
    differences = searched_differences(rows)
    paths = write_results(run_dir, rows, "transfer", reference="linear probe")
    paths["vs_searched"] = atomic_write_text(target, differences.to_csv(index=False))
    return paths


# --- 04: domain shift -----------------------------------------------------------------------------


@dataclass
class Target:
    """One transfer target: validation classes for the search, novel classes for the test.

    Attributes:
        label: e.g. ``"shift 0.5"`` or ``"omniglot/test"``.
        order: position along the shift axis (0 = the backbone's own domain).
        shift: the synthetic dial's level, NaN for a real dataset.
        val, test: the splits, already in the backbone's channels and image size.
    """

    label: str
    order: int
    shift: float
    val: FewShotDataset
    test: FewShotDataset

    def samples(self, n_classes: int = 3, per_class: int = 4) -> torch.Tensor:
        """The first ``per_class`` test images of the first ``n_classes`` classes:
        uint8 (n_classes * per_class, C, H, W)."""
        index = [i for c in self.test.class_indices()[:n_classes] for i in c[:per_class].tolist()]
        return self.test.images[index]

    @property
    def slug(self) -> str:
        """A file-name form of the label."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("_")


def parse_cross_domain(entry: str) -> tuple[str, str, str]:
    """``"name"`` or ``"name:val_split:test_split"`` -> (name, val split, test split)."""
    parts = entry.split(":")
    if len(parts) == 1:
        return parts[0], "val", "test"
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise ValueError(
        f"cross-domain target {entry!r}: expected 'name' or 'name:val_split:test_split', "
        "e.g. 'omniglot:evaluation-val:test'"
    )


def shift_targets(
    dataset: str,
    shift_levels: Sequence[float],
    cross_domain: Sequence[str],
    val_split: str,
    novel_split: str,
    channels: int,
    image_size: int,
    data_root: str | Path | None = None,
) -> list[Target]:
    """The targets notebook 04 transfers one backbone to, in order of growing shift.

    For the synthetic dataset: one target per ``shift_levels`` value (the dial; the same classes
    and drawings at every level). For a real dataset: its own ``novel_split`` first. Then every
    ``cross_domain`` entry (:func:`parse_cross_domain`), loaded at the backbone's ``image_size``
    and converted to its ``channels`` (:func:`~ptx_utils.data.convert.match_format`).
    """
    targets: list[Target] = []

    def add(label: str, shift: float, val: FewShotDataset, test: FewShotDataset) -> None:
        val, test = (match_format(d, channels, image_size) for d in (val, test))
        targets.append(Target(label, len(targets), shift, val, test))

    if dataset == "synthetic":
        if not shift_levels:
            raise ValueError("shift_levels is empty: give the synthetic dial's levels, e.g. [0, 1]")
        for level in sorted(float(s) for s in shift_levels):
            # The dataset's default seed: the classes notebook 01 pre-trained on, re-rendered.
            load = {"image_size": image_size, "shift": level}
            add(
                f"shift {level:g}",
                level,
                load_dataset("synthetic", val_split, **load),
                load_dataset("synthetic", novel_split, **load),
            )
    else:
        load = {"root": data_root, "image_size": image_size}
        add(
            f"{dataset}/{novel_split}",
            math.nan,
            load_dataset(dataset, val_split, **load),
            load_dataset(dataset, novel_split, **load),
        )
    for entry in cross_domain:
        name, val, test = parse_cross_domain(entry)
        # Loaded at the backbone's size from the source pixels (one resize, e.g. Omniglot's
        # 105 px straight to 84); match_format then converts the channels.
        load = {"root": data_root, "image_size": image_size}
        add(
            f"{name}/{test}",
            math.nan,
            load_dataset(name, val, **load),
            load_dataset(name, test, **load),
        )
    return targets


@dataclass
class DomainShiftResult:
    """What :func:`run_domain_shift` produced.

    Attributes:
        rows: per (target, strategy, episode), the columns of
            :data:`~ptx_utils.evaluation.harness.ROW_COLUMNS` plus ``target``, ``order``, ``shift``.
        summary: per (target, strategy), columns :data:`SHIFT_SUMMARY_COLUMNS`.
        schemes: the searched scheme per (target, layer), columns :data:`SHIFT_SCHEME_COLUMNS`.
        searches: target label -> its search.
    """

    rows: pd.DataFrame
    summary: pd.DataFrame
    schemes: pd.DataFrame
    searches: dict[str, SearchResult]

    def searched(self) -> dict[str, Scheme]:
        """Target label -> the searched scheme."""
        return {label: result.best.scheme for label, result in self.searches.items()}


def run_domain_shift(
    backbone: Backbone,
    targets: Sequence[Target],
    n_way: int,
    k_shot: int,
    n_query: int,
    n_val_episodes: int,
    n_test_episodes: int,
    settings: Mapping[str, Any],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
) -> DomainShiftResult:
    """Search a scheme on each target's validation classes, then test it beside the fixed
    strategies on the target's novel classes; write everything under ``run_dir``.

    Searches go to ``run_dir/shift/<target>/`` and the tests to ``run_dir/shift/<target>/test/``
    (both resume from there); results to
    ``run_dir/results/domain_shift_{episodes,summary,schemes}.csv``, ``domain_shift_summary.tex``
    and ``domain_shift_provenance.json``, which must not exist yet.
    """
    if not targets:
        raise ValueError("no targets: give shift_levels (synthetic) or cross_domain entries")
    results = Path(run_dir) / "results"
    files = {
        "episodes": results / "domain_shift_episodes.csv",
        "schemes": results / "domain_shift_schemes.csv",
        "summary_tex": results / "domain_shift_summary.tex",
        "provenance": results / "domain_shift_provenance.json",
        "summary": results / "domain_shift_summary.csv",
    }
    existing = [str(p) for p in files.values() if p.exists()]
    if existing:
        raise FileExistsError(
            f"domain-shift results already exist ({', '.join(existing)}); use a new run directory"
        )
    config = search_config(settings, "evolution", seed)
    searches: dict[str, SearchResult] = {}
    frames, summaries, scheme_rows = [], [], []
    for target in targets:
        print(f"target {target.label}: search on {target.val.name}/{target.val.split}")
        val_eps = sample_episodes(
            target.val, n_way, k_shot, n_query, n_val_episodes, val_seed(seed)
        )
        result = search(
            backbone,
            target.val,
            val_eps,
            config,
            cfg,
            out_dir=Path(run_dir) / "shift" / target.slug,
            device=device,
        )
        searches[target.label] = result
        best = result.best
        strategies = transfer_strategies(best.scheme)
        test_eps = sample_episodes(target.test, n_way, k_shot, n_query, n_test_episodes, seed)
        rows = evaluate_strategies(
            backbone, strategies, target.test, test_eps, cfg, seed, device=device,
            checkpoint_dir=Path(run_dir) / "shift" / target.slug / "test",
        )  # fmt: skip
        rows.insert(0, "shift", target.shift)
        rows.insert(0, "order", target.order)
        rows.insert(0, "target", target.label)
        frames.append(rows)
        summary = summary_table(rows.drop(columns=["target", "order", "shift"]))
        summary.insert(0, "shift", target.shift)
        summary.insert(0, "order", target.order)
        summary.insert(0, "target", target.label)
        summary["n_trainable"] = [strategies[s].n_trainable_layers for s in summary["strategy"]]
        summaries.append(summary)
        for i, (layer, lr) in enumerate(zip(result.layer_names, best.scheme.lrs, strict=True)):
            scheme_rows.append(
                {
                    "target": target.label,
                    "order": target.order,
                    "shift": target.shift,
                    "layer": layer,
                    "layer_index": i,
                    "lr": lr,
                    "n_trainable": best.scheme.n_trainable_layers,
                    "fitness": best.fitness,
                }
            )
    rows = pd.concat(frames, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True)[list(SHIFT_SUMMARY_COLUMNS)]
    schemes = pd.DataFrame(scheme_rows, columns=list(SHIFT_SCHEME_COLUMNS))

    from ptx_utils.steps.analysis import mean_ci_latex

    atomic_write_text(files["episodes"], rows.to_csv(index=False))
    atomic_write_text(files["schemes"], schemes.to_csv(index=False))
    atomic_write_text(
        files["summary_tex"],
        mean_ci_latex(summary, index="strategy", columns="target"),
    )
    atomic_write_json(
        files["provenance"],
        provenance(
            seed=seed,
            device=device,
            targets=[
                {"label": t.label, "val": t.val.source, "test": t.test.source} for t in targets
            ],
            n_way=n_way,
            k_shot=k_shot,
            n_val_episodes=n_val_episodes,
            n_test_episodes=n_test_episodes,
            search=config.to_dict(),
            finetune_config=asdict(cfg),
        ),
    )
    # The summary goes last: notebook 05 takes its presence to mean the step finished.
    atomic_write_text(files["summary"], summary.to_csv(index=False))
    return DomainShiftResult(rows, summary, schemes, searches)
