"""Notebook 04's step: one search and one test per domain-shift target (dial level or dataset)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ptx_utils.core.io import json_text, refuse_if_differs, slug, write_or_match
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.convert import match_format
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.evaluation import evaluate_strategies, mean_ci_latex, summary_table
from ptx_utils.evaluation.routing import routing_summary, spottune_routing
from ptx_utils.finetuning import FinetuneConfig, Scheme
from ptx_utils.models import Backbone
from ptx_utils.search import SearchResult, search
from ptx_utils.steps.common import val_seed
from ptx_utils.steps.searching import search_config
from ptx_utils.steps.transfer import maml_strategies, transfer_strategies

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
        """A file-name form of the label (``shift_0.5``, ``omniglot_test``)."""
        return slug(self.label, sep="_")


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

    def add(label: str, level: float, name: str, val: str, test: str, **load: Any) -> None:
        # Loaded at the backbone's size from the source pixels (one resize, e.g. Omniglot's
        # 105 px straight to 84); match_format then converts the channels.
        splits = (load_dataset(name, s, image_size=image_size, **load) for s in (val, test))
        val_set, test_set = (match_format(d, channels, image_size) for d in splits)
        targets.append(Target(label, len(targets), level, val_set, test_set))

    if dataset == "synthetic":
        if not shift_levels:
            raise ValueError("shift_levels is empty: give the synthetic dial's levels, e.g. [0, 1]")
        for level in sorted(float(s) for s in shift_levels):
            # The dataset's default seed: the classes notebook 01 pre-trained on, re-rendered.
            add(f"shift {level:g}", level, "synthetic", val_split, novel_split, shift=level)
    else:
        add(f"{dataset}/{novel_split}", math.nan, dataset, val_split, novel_split, root=data_root)
    for entry in cross_domain:
        name, val, test = parse_cross_domain(entry)
        add(f"{name}/{test}", math.nan, name, val, test, root=data_root)
    return targets


@dataclass
class DomainShiftResult:
    """What :func:`run_domain_shift` produced.

    Attributes:
        rows: per (target, strategy, episode), the columns of
            :data:`~ptx_utils.evaluation.ROW_COLUMNS` plus ``target``, ``order``, ``shift``.
        summary: per (target, strategy), columns :data:`SHIFT_SUMMARY_COLUMNS`.
        schemes: the searched scheme per (target, layer), columns :data:`SHIFT_SCHEME_COLUMNS`.
        searches: target label -> its search.
        routing: with SpotTune among the strategies, per (target, strategy, block) the fraction
            of queries routed to the tuned copy (:func:`~ptx_utils.evaluation.routing_summary`
            over the first ``routing_episodes`` test episodes); else None.
    """

    rows: pd.DataFrame
    summary: pd.DataFrame
    schemes: pd.DataFrame
    searches: dict[str, SearchResult]
    routing: pd.DataFrame | None = None

    def searched(self) -> dict[str, Scheme]:
        """Target label -> the searched scheme."""
        return {label: result.best.scheme for label, result in self.searches.items()}


def run_domain_shift(
    backbone: Backbone,
    targets: Sequence[Target],
    val: EpisodeSetting,
    test: EpisodeSetting,
    settings: Mapping[str, Any],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    runtime: Runtime | None = None,
    strategy_set: str = "paper",
    routing_episodes: int = 20,
    pretrained: str | Path | None = None,
) -> DomainShiftResult:
    """Search a scheme on each target's validation classes (episodes ``val``), then test it beside
    the fixed strategies on the target's novel classes (episodes ``test``); write everything.

    Searches go to ``run_dir/shift/<target>/`` and the tests to ``run_dir/shift/<target>/test/``
    (both resume from there); results to
    ``run_dir/results/domain_shift_{episodes,summary,schemes}.csv``, ``domain_shift_summary.tex``
    and ``domain_shift_provenance.json``. Run again with identical settings it loads the searches
    and tests and keeps those files; with other settings it refuses before any work.
    ``strategy_set`` chooses the strategies beside the searched scheme
    (:func:`~.transfer.transfer_strategies`); with SpotTune among them, where it routes on the
    first ``routing_episodes`` test episodes goes to ``domain_shift_routing.csv``;
    ``pretrained``, the backbone's checkpoint, adds MAML's own adaptation when it is a MAML one.
    """
    runtime = Runtime() if runtime is None else runtime
    seed = runtime.seed
    if not targets:
        raise ValueError("no targets: give shift_levels (synthetic) or cross_domain entries")
    results = Path(run_dir) / "results"
    files = {
        "episodes": results / "domain_shift_episodes.csv",
        "schemes": results / "domain_shift_schemes.csv",
        "summary_tex": results / "domain_shift_summary.tex",
        "provenance": results / "domain_shift_provenance.json",
        "summary": results / "domain_shift_summary.csv",
        "routing": results / "domain_shift_routing.csv",
    }
    config = search_config(settings, "evolution", seed)
    meta_learned = (
        {} if pretrained is None
        else maml_strategies(pretrained, len(backbone.layer_names()), n_way=test.n_way)
    )  # fmt: skip
    record = json_text(
        provenance(
            seed=seed,
            device=runtime.device,
            targets=[
                {"label": t.label, "val": t.val.source, "test": t.test.source} for t in targets
            ],
            n_way=val.n_way,
            k_shot=val.k_shot,
            n_val_episodes=val.n_episodes,
            n_test_episodes=test.n_episodes,
            search=config.to_dict(),
            finetune_config=asdict(cfg),
            strategy_set=strategy_set,
            routing_episodes=routing_episodes,
            **(  # which checkpoint, by hash: another one is refused before any work
                {"meta_learned": {n: list(s.portable().loads) for n, s in meta_learned.items()}}
                if meta_learned
                else {}
            ),
        )
    )
    what, fix = "domain-shift results", "use a new run directory"
    refuse_if_differs(files["provenance"], record, what, fix)  # before any work
    searches: dict[str, SearchResult] = {}
    frames, summaries, scheme_rows, routings = [], [], [], []
    for target in targets:
        print(f"target {target.label}: search on {target.val.name}/{target.val.split}")
        result = search(
            backbone,
            target.val,
            val.sample(target.val, seed=val_seed(seed)),
            config=config,
            finetune=cfg,
            out_dir=Path(run_dir) / "shift" / target.slug,
            runtime=runtime,
        )
        searches[target.label] = result
        best = result.best
        strategies = {**transfer_strategies(best.scheme, strategy_set=strategy_set), **meta_learned}
        test_episodes = test.sample(target.test, seed=seed)
        rows = evaluate_strategies(
            backbone, strategies, target.test, test_episodes, cfg,
            runtime=runtime, checkpoint_dir=Path(run_dir) / "shift" / target.slug / "test",
        ).rows  # fmt: skip
        spot = {n: s for n, s in strategies.items() if s.path == "spottune"}
        if spot and routing_episodes:
            sub = test_episodes[: min(routing_episodes, len(test_episodes))]
            routed = spottune_routing(
                backbone, spot, target.test, sub, cfg, runtime,
                checkpoint_dir=Path(run_dir) / "shift" / target.slug / "routing",
            )  # fmt: skip
            where = {"target": target.label, "order": target.order, "shift": target.shift}
            routings.append(routing_summary(routed).assign(**where))
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

    routing = pd.concat(routings, ignore_index=True) if routings else None
    texts = {files["episodes"]: rows.to_csv(index=False)}
    if routing is not None:
        front = ["target", "order", "shift"]
        routing = routing[front + [c for c in routing.columns if c not in front]]
        texts[files["routing"]] = routing.to_csv(index=False)
    texts[files["schemes"]] = schemes.to_csv(index=False)
    texts[files["summary_tex"]] = mean_ci_latex(summary, index="strategy", columns="target")
    texts[files["provenance"]] = record
    # The summary goes last: notebook 05 takes its presence to mean the step finished.
    texts[files["summary"]] = summary.to_csv(index=False)
    write_or_match(texts, what, fix)
    return DomainShiftResult(rows, summary, schemes, searches, routing)
