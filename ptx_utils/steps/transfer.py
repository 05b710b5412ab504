"""Notebook 03's step: the searched scheme beside the fixed and the survey's strategies, on
identical episodes; and accuracy against the number of updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from ptx_utils.core.io import write_or_match
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.evaluation import (
    Evaluation,
    evaluate_steps,
    evaluate_strategies,
    mean_ci_latex,
    paired_table,
    steps_summary,
    write_results,
)
from ptx_utils.finetuning import (
    FinetuneConfig,
    Scheme,
    Strategy,
    as_strategy,
    bn_affine,
    full_finetune,
    last_k,
    linear_probe,
    logistic_regression,
    lt_ncc,
    maml,
    nearest_centroid,
    spottune,
    tsa,
    uppercase,
    with_adabn,
    with_channel_importance,
    with_prototype_head,
)
from ptx_utils.finetuning.case_meta import CaSEMetaConfig, meta_train_case
from ptx_utils.finetuning.maml_adapt import maml_reference
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import load_checkpoint


def fixed_strategies(
    n_layers: int, head_lr: float, lr: float = 0.01, last: int = 1
) -> dict[str, Strategy]:
    """The fixed strategies every comparison lists: linear probe, full fine-tune at ``lr``,
    last-``last`` at ``lr`` and BN-affine at ``lr``."""
    return {
        "linear probe": linear_probe(n_layers, head_lr),
        "full fine-tune": full_finetune(n_layers, lr, head_lr),
        f"last-{last}": last_k(n_layers, last, lr, head_lr),
        "BN-affine": bn_affine(n_layers, lr, head_lr),
    }


def prototype_heads(
    strategies: Mapping[str, Strategy], head: str = "cosine"
) -> dict[str, Strategy]:
    """``strategies`` (same names) with every new head that the protocol's SGD trains
    initialised from the support prototypes (:func:`~ptx_utils.finetuning.with_prototype_head`);
    the others (nearest centroid, TSA, SpotTune...) as they are.

    Example:
        >>> named = prototype_heads(fixed_strategies(4, 0.01))
        >>> str(named["last-1"])
        '0 0 0 0.01 | head 0.01 | prototype-cosine'
    """
    out = {}
    for name, strategy in strategies.items():
        strategy = as_strategy(strategy)
        sgd_head = strategy.path == "sgd" and strategy.classifier in ("protocol", head)
        out[name] = with_prototype_head(strategy, head) if sgd_head else strategy
    return out


def survey_strategies(searched: Strategy | Scheme, head_lr: float) -> dict[str, Strategy]:
    """The survey's strategies beside the paper's: fitted on frozen features (nearest centroid,
    logistic regression; with the channel importance transform), AdaBN (support, and
    transductive), TSA and LT+NCC, SpotTune per image and global (half the blocks), decisions
    sampled and argmax (``docs/strategies.md``)."""
    searched = as_strategy(searched)
    n = len(searched.lrs)
    ncc = nearest_centroid(n, "cosine")
    k = max(1, n // 2)  # SpotTune's global variant: half the blocks tuned
    return {
        "nearest centroid (euc)": nearest_centroid(n, "euclidean"),
        "nearest centroid (cos)": ncc,
        "logistic regression": logistic_regression(n),
        "nearest centroid (cos) + CIT": with_channel_importance(ncc),
        "logistic regression + CIT": with_channel_importance(logistic_regression(n)),
        "linear probe + CIT": with_channel_importance(linear_probe(n, head_lr)),
        "nearest centroid (cos) + AdaBN": with_adabn(ncc),
        "nearest centroid (cos) + AdaBN (transductive)": with_adabn(ncc, transductive=True),
        "linear probe + AdaBN": with_adabn(linear_probe(n, head_lr)),
        "searched + AdaBN": with_adabn(searched),
        "LT+NCC": lt_ncc(n),
        "TSA": tsa(n),
        "SpotTune": spottune(n, head_lr=head_lr),
        "SpotTune (argmax)": spottune(n, head_lr=head_lr, inference="argmax"),
        f"SpotTune global-{k}": spottune(n, head_lr=head_lr, global_k=k),
        f"SpotTune global-{k} (argmax)": spottune(
            n, head_lr=head_lr, global_k=k, inference="argmax"
        ),
    }


#: ``strategy_set`` values: which strategies notebooks 03 and 04 compare. ``"paper"``: the
#: searched scheme and the paper's four fixed strategies; ``"representative"`` (demo, smoke):
#: those and every survey strategy that costs no more than a linear probe; ``"all"``: every one.
STRATEGY_SETS = ("paper", "representative", "all")
#: The survey strategies ``"representative"`` leaves out (names starting so): each costs a
#: fine-tuning or more (TSA's 40 full-batch steps through the whole backbone: 1.8 s a 5-shot
#: replica at 32×32 on 2 cores, six times the smoke preset's full fine-tune; SpotTune trains a
#: copy of every block beside the frozen one, 1.7 times a full fine-tune on Omniglot).
_COSTLY = ("linear probe + CIT", "linear probe + AdaBN", "searched + AdaBN", "TSA", "SpotTune")


def transfer_strategies(
    searched: Strategy | Scheme,
    head_lr: float | None = None,
    strategy_set: str = "paper",
    pretrained: str | Path | None = None,
) -> dict[str, Strategy]:
    """``searched`` first, then :func:`fixed_strategies` with the searched scheme's head lr, then
    (``strategy_set`` ``"representative"`` or ``"all"``) :func:`survey_strategies`, then, when
    ``pretrained`` is a MAML checkpoint, :func:`maml_strategies`.

    Example:
        >>> names = transfer_strategies(Scheme((0, 0, 0.01, 0.1)), strategy_set="all")
        >>> list(names)[:3], len(names)
        (['searched', 'linear probe', 'full fine-tune'], 21)
    """
    if strategy_set not in STRATEGY_SETS:
        raise ValueError(f"strategy_set must be one of {STRATEGY_SETS}, got {strategy_set!r}")
    searched = as_strategy(searched)
    head = searched.head_lr if head_lr is None else head_lr
    named = {"searched": searched, **fixed_strategies(len(searched.lrs), head)}
    if strategy_set != "paper":
        survey = survey_strategies(searched, head)
        if strategy_set == "representative":
            survey = {k: v for k, v in survey.items() if not k.startswith(_COSTLY)}
        named.update(survey)
    if pretrained is not None:
        named.update(maml_strategies(pretrained, len(searched.lrs)))
    return named


def uppercase_strategies(
    run_dir: str | Path,
    backbone: Backbone,
    base: FewShotDataset,
    settings: Mapping[str, Any],
    k_shot: int,
) -> dict[str, Strategy]:
    """UpperCaSE for ``k_shot``: CaSE blocks meta-trained on ``base`` episodes of that shot
    (``settings``: :class:`~ptx_utils.finetuning.case_meta.CaSEMetaConfig` fields; resumable, and
    loaded when done, in ``run_dir/case/<k>shot``), as a strategy named ``"UpperCaSE"``."""
    cfg = CaSEMetaConfig(**{"k_shot": k_shot, **settings})
    blocks = meta_train_case(backbone, base, cfg, Path(run_dir) / "case" / f"{k_shot}shot")
    return {"UpperCaSE": uppercase(blocks.reference, len(backbone.layer_names()))}


#: MAML's test-time step counts beside the one it was meta-trained with (CloserLook: 100).
MAML_TEST_STEPS = (100,)


def maml_strategies(
    checkpoint: str | Path, n_layers: int, n_way: int | None = None
) -> dict[str, Strategy]:
    """MAML's own adaptation of a MAML checkpoint: its meta-training inner steps and
    :data:`MAML_TEST_STEPS`, at its inner rate; nothing for a checkpoint of another method.
    ``n_way``, when given, is checked against the head's outputs before any work."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["meta"].get("method") != "maml":
        return {}
    config = ckpt["meta"]["config"]
    outputs = int(ckpt["head"]["weight"].shape[0])
    if n_way is not None and outputs != n_way:
        raise ValueError(
            f"the MAML head of {checkpoint} has {outputs} outputs but the episodes are "
            f"{n_way}-way; use n_way={outputs} or meta-train with train_way={n_way}"
        )
    reference = maml_reference(Path(checkpoint).resolve())
    counts = dict.fromkeys((int(config["inner_steps"]), *MAML_TEST_STEPS))
    return {
        f"MAML ({n} steps)": maml(reference, n_layers, float(config["inner_lr"]), n) for n in counts
    }


def evaluate_shots(
    backbone: Backbone,
    strategies: Mapping[int, Mapping[str, Strategy | Scheme]],
    dataset: FewShotDataset,
    setting: EpisodeSetting,
    cfg: FinetuneConfig,
    runtime: Runtime | None = None,
    checkpoint_dir: str | Path | None = None,
) -> Evaluation:
    """:func:`~ptx_utils.evaluation.evaluate_strategies` for each ``k_shot -> strategies``.

    The episodes of shot k are ``setting.with_shot(k).sample(dataset, seed)`` — those notebook 01
    lists. With ``checkpoint_dir`` every (shot, strategy) is saved there when done and an
    interrupted call resumes. Returns the rows of all shots in one :class:`Evaluation`; its
    ``meta["evaluations"]`` keeps each evaluation's metadata by shot.
    """
    runtime = Runtime() if runtime is None else runtime
    done, meta = [], {}
    for k_shot, named in strategies.items():
        episodes = setting.with_shot(k_shot).sample(dataset, seed=runtime.seed)
        evaluation = evaluate_strategies(
            backbone, named, dataset, episodes, cfg, runtime=runtime,
            checkpoint_dir=checkpoint_dir,
        )  # fmt: skip
        meta[str(k_shot)] = evaluation.meta
        done.append(evaluation)
    return Evaluation.concat(done, evaluations=meta, finetune_config=asdict(cfg))


def searched_differences(rows: pd.DataFrame, searched: str = "searched") -> pd.DataFrame:
    """``searched`` minus every other strategy, episode by episode (per setting).

    Columns as :func:`~ptx_utils.evaluation.paired_table` with ``strategy`` = ``searched`` and
    ``reference`` = the other strategy: ``wins`` counts episodes the searched scheme won. Rows:
    per (n_way, k_shot), the other strategies in the order they appear in ``rows``.
    """
    others = [s for s in dict.fromkeys(rows["strategy"]) if s != searched]
    if searched not in set(rows["strategy"]) or not others:
        raise ValueError(
            f"rows need the strategy {searched!r} and at least one other; "
            f"got {sorted(set(rows['strategy']))}"
        )
    tables = [paired_table(rows, ref, strategies=[searched]) for ref in others]
    differences = pd.concat(tables, ignore_index=True)
    # One block per setting, the references in the order of the strategies (as the summary).
    return differences.sort_values(["n_way", "k_shot"], kind="stable", ignore_index=True)


def write_transfer(run_dir: str | Path, evaluation: Evaluation) -> dict[str, Path]:
    """Write notebook 03's results under ``run_dir/results/``: ``transfer_*`` from
    :func:`~ptx_utils.evaluation.write_results` (paired against the linear probe) and
    ``transfer_vs_searched.csv`` (:func:`searched_differences`). Files already written with
    identical settings are kept; others are refused, never replaced."""
    target = Path(run_dir) / "results" / "transfer_vs_searched.csv"
    differences = searched_differences(evaluation.rows)
    paths = write_results(run_dir, evaluation, "transfer", reference="linear probe")
    text = differences.to_csv(index=False)
    write_or_match({target: text}, "transfer results", "use a new run directory")
    paths["vs_searched"] = target
    return paths


def steps_curve(
    run_dir: str | Path,
    backbone: Backbone,
    strategies: Mapping[int, Mapping[str, Strategy | Scheme]],
    dataset: FewShotDataset,
    setting: EpisodeSetting,
    cfg: FinetuneConfig,
    passes: Sequence[int],
    runtime: Runtime | None = None,
) -> pd.DataFrame:
    """Notebook 03's accuracy-vs-updates rows: loaded from ``results/transfer_steps.csv`` when a
    run with the same strategies, shots, update counts and episodes wrote it (one line says so),
    else :func:`accuracy_vs_updates` then :func:`write_steps`.

    Raises:
        FileExistsError: the saved rows are for other settings (the message says which).
    """
    saved = Path(run_dir) / "results" / "transfer_steps.csv"
    if saved.exists():
        rows = pd.read_csv(saved)
        want = {
            "shots": sorted(int(k) for k in strategies),
            "strategies": sorted({n for named in strategies.values() for n in named}),
            "update counts": sorted(int(p) for p in passes),
            "episodes per shot": setting.n_episodes,
        }
        have = {
            "shots": sorted(int(k) for k in rows["k_shot"].unique()),
            "strategies": sorted(rows["strategy"].unique()),
            "update counts": sorted(int(p) for p in rows["passes"].unique()),
            "episodes per shot": int(rows.groupby("k_shot")["episode"].nunique().max()),
        }
        differ = [k for k in want if want[k] != have[k]]
        if differ:
            raise FileExistsError(
                f"{saved} holds accuracy-vs-updates rows for other {', '.join(differ)} "
                f"(saved {[have[k] for k in differ]}, asked {[want[k] for k in differ]}); "
                "nothing was overwritten: use a new run directory"
            )
        print(f"accuracy-vs-updates rows: loaded {saved} (same settings)")
        return rows
    rows = accuracy_vs_updates(backbone, strategies, dataset, setting, cfg, passes, runtime)
    write_steps(run_dir, rows)
    return rows


def accuracy_vs_updates(
    backbone: Backbone,
    strategies: Mapping[int, Mapping[str, Strategy | Scheme]],
    dataset: FewShotDataset,
    setting: EpisodeSetting,
    cfg: FinetuneConfig,
    passes: Sequence[int],
    runtime: Runtime | None = None,
) -> pd.DataFrame:
    """:func:`~ptx_utils.evaluation.evaluate_steps` for each ``k_shot -> strategies`` on the first
    ``setting.n_episodes`` of that shot's test episodes (the same episodes, seeds and replica
    seeds as :func:`evaluate_shots`, so the point at the protocol's passes repeats its scores)."""
    runtime = Runtime() if runtime is None else runtime
    frames = []
    for k_shot, named in strategies.items():
        episodes = setting.with_shot(k_shot).sample(dataset, seed=runtime.seed)
        frames.append(evaluate_steps(backbone, named, dataset, episodes, cfg, passes, runtime))
    return pd.concat(frames, ignore_index=True)


def write_steps(run_dir: str | Path, rows: pd.DataFrame) -> dict[str, Path]:
    """Write :func:`accuracy_vs_updates`' rows under ``run_dir/results/``: ``transfer_steps.csv``
    (one row per strategy × episode × update count), ``transfer_steps_summary.csv`` and ``.tex``
    (mean ± 95 % CI, a column per update count). Files already written the same are kept;
    others are refused, never replaced."""
    results = Path(run_dir) / "results"
    paths = {
        "rows": results / "transfer_steps.csv",
        "summary": results / "transfer_steps_summary.csv",
        "latex": results / "transfer_steps_summary.tex",
    }
    summary = steps_summary(rows)
    table = summary.assign(setting=[f"{k}-shot" for k in summary["k_shot"]])
    latex = mean_ci_latex(
        table, index=["setting", "strategy"], columns="passes",
        caption="Test accuracy (%) after each number of updates (passes; TSA: steps).",
    )  # fmt: skip
    texts = {
        paths["rows"]: rows.to_csv(index=False),
        paths["summary"]: summary.to_csv(index=False),
        paths["latex"]: latex,
    }
    write_or_match(texts, "accuracy-vs-updates results", "use a new run directory")
    return paths
