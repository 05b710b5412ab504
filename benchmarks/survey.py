"""Every strategy on identical test episodes, against the searched scheme: the survey table.

    python benchmarks/survey.py --dataset omniglot --root ../shared/data \
        --zoo conv4-baselinepp-omniglot --val-split evaluation-val --test-split test --shots 1 \
        --search '{"population": 20, "generations": 20, "top_k": 10, "racing": true}' \
        --val-episodes 20 --search-passes 20 --test-episodes 600 \
        --work runs/survey/omniglot --out benchmarks/results/survey_omniglot_conv4_cpu.json

    python benchmarks/survey.py --dataset synthetic --shift-levels 0 0.5 1 --shots 1 \
        --test-episodes 100 --work runs/survey/synthetic \
        --out benchmarks/results/survey_synthetic_dial_conv4_cpu.json

For each target (the dataset's test split; on the synthetic dial one per ``--shift-levels``
value) and each shot: a search on ``--val-episodes`` validation episodes (``--search-passes``
passes per candidate, resumable in ``--work``), then every strategy of
:func:`ptx_utils.steps.transfer.transfer_strategies` (``--strategy-set``, default ``all``) on
``--test-episodes`` test episodes with the protocol's ``--passes`` (identical episodes and
replica seeds for every strategy; each strategy's rows saved in ``--work`` when done, so an
interrupted run resumes), then mean ± 95 % CI and the paired difference searched − strategy.
Logistic regression's convergence is reported as the largest final gradient norm over the test
episodes; SpotTune beside the strongest fixed strategy, its routing per block and its cost per
replica on the first ``--routing`` test episodes; with ``--maml`` / ``--uppercase`` the
meta-learned rows too (each meta-trained once per shot in ``--work``, resumable); with
``--head-init prototypes`` the search and every strategy the protocol's SGD trains start their
new head at the support prototypes (``docs/strategies.md``). A backbone of another dataset
(``--zoo conv4-baselinepp-mini-imagenet --dataset omniglot``) is tested across domains: the
target loaded in its input format, the meta-learned rows trained on its own base classes
(``--train-dataset``, default the entry's dataset and splits). ``--only`` tests a subset (the
searched scheme always); ``--search-precision`` reads a finished search made at another precision
(bf16 on a machine with native bf16) while the test episodes run at ``--precision``;
``--n-query`` changes the protocol's 15 query images per class (the tests' tiny budgets). The
JSON is rewritten after each (target, shot), so partial results land; the per-episode rows go to
a CSV beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ptx_utils.core.device import precision_record
from ptx_utils.core.io import atomic_write_json, atomic_write_text
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.convert import match_format
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies, paired_table, summary_table
from ptx_utils.evaluation.routing import routing_summary, spottune_routing
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    replica_seed,
    with_prototype_head,
)
from ptx_utils.finetuning.case_meta import CaSEMetaConfig, meta_train_case
from ptx_utils.finetuning.closed_form import fit_logistic_regression
from ptx_utils.finetuning.fixed import maml, spottune, uppercase
from ptx_utils.finetuning.maml_adapt import maml_reference
from ptx_utils.finetuning.spottune import SpotTuneSpec, build_net, policy_parameters
from ptx_utils.finetuning.spottune_meta import MetaPolicyConfig, meta_train_policy
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.models.features import extract_features
from ptx_utils.models.zoo import load_pretrained
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.search import SearchConfig, search
from ptx_utils.steps.common import val_seed
from ptx_utils.steps.domain_shift import shift_targets
from ptx_utils.steps.transfer import prototype_heads, searched_differences, transfer_strategies


def logistic_gradient_norms(model: Any, dataset: Any, episodes: Any) -> dict[str, float]:
    """Largest and median final gradient norm of logistic regression over the episodes."""
    batch = episodes.tensors(dataset)
    e, n = batch.support_labels.shape
    feats = extract_features(model, batch.support_images.flatten(0, 1), torch.device("cpu"))
    fit = fit_logistic_regression(
        F.normalize(feats.unflatten(0, (e, n)), dim=-1), batch.support_labels, episodes.n_way
    )
    return {
        "max_grad_norm": float(fit.grad_norm.max()),
        "median_grad_norm": float(fit.grad_norm.median()),
        "newton_iterations": fit.iterations,
    }


def spottune_section(
    rows: pd.DataFrame,
    strategies: dict[str, Any],
    model: Any,
    test: Any,
    test_eps: Any,
    protocol: FinetuneConfig,
    runtime: Runtime,
    n_routing: int,
    routing_dir: Path,
) -> dict[str, Any]:
    """SpotTune beside the searched scheme and the strongest fixed strategy (neither searched nor
    SpotTune); routing per block on the first ``n_routing`` test episodes (resumable, saved in
    ``routing_dir``); cost per replica."""
    spot = {n: s for n, s in strategies.items() if s.path == "spottune"}
    summary = summary_table(rows).set_index("strategy")
    fixed = summary[[not (n.startswith("searched") or n in spot) for n in summary.index]]
    strongest = str(fixed["mean"].idxmax())
    out: dict[str, Any] = {"strongest_fixed": strongest, "strategies": {}}
    for name in spot:
        vs = {}
        for ref in ("searched", strongest):
            d = paired_table(rows, ref, strategies=[name]).iloc[0]
            vs[ref] = {k: float(d[k]) for k in ("mean_diff", "ci95", "wins", "losses")}
        out["strategies"][name] = {
            "mean": float(summary.loc[name, "mean"]), "ci95": float(summary.loc[name, "ci95"]),
            "minus_searched": vs["searched"], "minus_strongest_fixed": vs[strongest],
        }  # fmt: skip
    if n_routing:
        sub = test_eps[:n_routing]
        routing = spottune_routing(
            model, spot, test, sub, protocol, runtime, checkpoint_dir=routing_dir
        )
        harness = rows[rows["episode"] < n_routing].set_index(["strategy", "episode"])["accuracy"]
        mine = routing.groupby(["strategy", "episode"])["accuracy"].first()
        gap = (mine - harness.reindex(mine.index)).abs().max()
        table = routing_summary(routing)
        out["routing"] = {
            "episodes": n_routing,
            "accuracy_equals_harness_max_abs_diff": float(gap),
            "per_block": table.to_dict("records"),
        }
        out["cost"] = replica_cost(
            model, strategies["searched"], spot, test, sub, protocol, routing, runtime.seed
        )
    return out


def replica_cost(
    model: Any,
    searched: Any,
    spot: dict[str, Any],
    test: Any,
    episodes: Any,
    protocol: FinetuneConfig,
    routing: pd.DataFrame,
    seed: int,
) -> dict[str, Any]:
    """Seconds per replica (SpotTune: from the routing run; the searched scheme: timed here on
    the same episodes, float32 both) and trained floats per replica (weights, gradients and
    momentum: 3 × 4 bytes each)."""
    batch = episodes.tensors(test)
    tic = time.perf_counter()
    finetune_batched(
        model, [Replica(searched, e, replica_seed(seed, e)) for e in range(len(episodes))],
        batch.support_images, batch.support_labels, batch.query_images, episodes.n_way,
        protocol, progress=False, precision="fp32",
    )  # fmt: skip
    searched_s = (time.perf_counter() - tic) / len(episodes)
    out_dim, head = model.out_dim, episodes.n_way * model.out_dim
    layers = model.layer_parameters()
    trained = sum(p.numel() for name, lr in zip(model.layer_names(), searched.lrs, strict=True)
                  if lr for p in layers[name])  # fmt: skip
    cost: dict[str, Any] = {
        "searched": {"seconds_per_replica": searched_s, "trained_floats": trained + head}
    }
    for name, strategy in spot.items():
        net = build_net(model, SpotTuneSpec.of(strategy), episodes.n_way, protocol)
        floats = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("frozen"))
        sec = float(routing[routing["strategy"] == name]["seconds"].mean())
        cost[name] = {"seconds_per_replica": sec, "trained_floats": floats,
                      "policy_parameters": policy_parameters(net)}  # fmt: skip
    for entry in cost.values():
        entry["trained_state_bytes"] = 12 * entry["trained_floats"]
    cost["note"] = (
        f"features D = {out_dim}; SpotTune's inference pairs train once, so a pair's "
        "seconds are shared; activations (two paths per block) are not measured"
    )
    return cost


def chosen(strategies: dict[str, Strategy], names: list[str]) -> dict[str, Strategy]:
    """The searched scheme and ``names`` of ``strategies``, in that order (``--only``)."""
    unknown = [n for n in names if n not in strategies]
    if unknown:
        raise SystemExit(
            f"--only names {unknown}, which this run does not have; its strategies are "
            f"{list(strategies)} (MAML and UpperCaSE rows need --maml / --uppercase)"
        )
    return {n: strategies[n] for n in dict.fromkeys(["searched", *names])}


def meta_learned_strategies(
    args: argparse.Namespace, model: Any, source: Any, work: Path, shot: int
) -> dict[str, Any]:
    """MAML (meta-trained here, ``--maml``) and UpperCaSE (CaSE blocks meta-trained on
    ``model``, ``--uppercase``) as strategies for ``shot``, with their training records;
    ``source(split)`` loads a split of the base-class dataset (``--train-dataset``)."""
    out: dict[str, Any] = {"strategies": {}}
    n_layers = len(model.layer_names())
    if args.maml:
        settings = {"method": "maml", "seed": args.seed, "train_shot": shot, "val_shot": shot,
                    **json.loads(args.maml)}  # fmt: skip
        cfg = PretrainConfig.from_dict(settings)
        result = pretrain(
            cfg, source(args.train_split), source(args.train_val_split),
            work / f"maml-{shot}shot",
        )  # fmt: skip
        reference = maml_reference(result.best_checkpoint.resolve())
        for n in args.maml_steps:
            out["strategies"][f"MAML ({n} steps)"] = maml(reference, n_layers, cfg.inner_lr, n)
        out["maml_meta_training"] = {"config": asdict(cfg), "curves": result.history,
                                     "best_epoch": result.best_epoch}  # fmt: skip
    if args.uppercase:
        settings = {"k_shot": shot, "seed": args.seed, **json.loads(args.uppercase)}
        blocks = meta_train_case(
            model, source(args.train_split), CaSEMetaConfig(**settings),
            work / f"case-meta-{shot}shot", progress=False,
        )  # fmt: skip
        out["strategies"]["UpperCaSE"] = uppercase(blocks.reference, n_layers)
        out["uppercase_meta_training"] = {
            k: blocks.record[k] for k in ("identity", "curve", "seconds", "case_parameters")
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main` (``survey_queue.py`` checks its entries with it)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.add_argument("--zoo", default=None, help="a zoo entry; else pre-train with --pretrain")
    p.add_argument("--pretrain", default='{"epochs": 6, "batch_size": 64, "val_episodes": 50}')
    p.add_argument(
        "--train-dataset",
        default=None,
        help="the base classes' dataset (pre-training, meta-training) when it is not --dataset: "
        "e.g. --zoo conv4-baselinepp-mini-imagenet --train-dataset mini-imagenet --dataset "
        "omniglot tests mini-ImageNet's backbone on Omniglot, loaded in its input format",
    )
    p.add_argument("--train-split", default=None, help="(default: train, or a zoo entry's base)")
    p.add_argument(
        "--train-val-split",
        default=None,
        help="the --train-dataset split that picks pre-training's and MAML's epoch (default: "
        "--val-split; a zoo entry's val split when it was made on another dataset)",
    )
    p.add_argument("--val-split", default="val")
    p.add_argument("--test-split", default="test")
    p.add_argument("--shift-levels", type=float, nargs="*", default=None)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--search", default='{"population": 20, "generations": 20, "top_k": 10}')
    p.add_argument("--val-episodes", type=int, default=20)
    p.add_argument("--search-passes", type=int, default=100)
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--n-query", type=int, default=15, help="query images per class (protocol: 15)")
    p.add_argument("--strategy-set", default="all")
    p.add_argument("--head", default="cosine", help="the protocol's head (cosine: Baseline++)")
    p.add_argument(
        "--head-init",
        choices=("random", "prototypes"),
        default="random",
        help="the protocol's new head at random, or at the support prototypes in the search and "
        "every strategy it trains (ptx_utils.finetuning.prototype_init)",
    )
    p.add_argument("--precision", default="auto")
    p.add_argument(
        "--search-precision",
        default=None,
        help="the search's precision (default --precision): a finished search made on a bf16 "
        "machine is read as it is while the test episodes run in --precision",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="test only these strategies (and the searched scheme), in this order",
    )
    p.add_argument(
        "--routing",
        type=int,
        default=50,
        help="test episodes for SpotTune's routing and cost (0: none)",
    )
    p.add_argument(
        "--spottune-meta",
        default=None,
        help="meta-train SpotTune's policy on --train-split first and add it, e.g. "
        "'{\"episodes\": 500}' (ptx_utils.finetuning.spottune_meta)",
    )
    p.add_argument(
        "--maml",
        default=None,
        help="meta-train MAML on --train-split (PretrainConfig settings over "
        '{"method": "maml"}, e.g. \'{"epochs": 30, "inner_steps": 1}\') and add '
        "MAML at each of --maml-steps",
    )
    p.add_argument("--maml-steps", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    p.add_argument(
        "--uppercase",
        default=None,
        help="meta-train CaSE blocks on the backbone with --train-split episodes "
        "(CaSEMetaConfig settings, e.g. '{\"episodes\": 800}') and add UpperCaSE",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)

    def load(dataset: str, name: str, fit: Any = None) -> Any:
        """Split ``name`` of ``dataset``; with ``fit`` (a backbone) in its input format."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fit is None:
                return load_dataset(dataset, name, root=args.root)
            data = load_dataset(dataset, name, root=args.root, image_size=fit.image_size)
            return match_format(data, fit.in_channels, fit.image_size)

    if args.zoo:
        model, record = load_pretrained(args.zoo)
        backbone_label = args.zoo
        made_on = record["zoo"]  # the entry's dataset and splits: the base classes' defaults
        train_dataset = args.train_dataset or made_on["dataset"]
        train_split = args.train_split or made_on["splits"]["base"]
        train_val_split = args.train_val_split or (
            args.val_split if train_dataset == args.dataset else made_on["splits"]["val"]
        )
    else:
        train_dataset = args.train_dataset or args.dataset
        if train_dataset != args.dataset and args.train_val_split is None:
            p.error("--train-dataset differs from --dataset: give --train-val-split too")
        train_split = args.train_split or "train"
        train_val_split = args.train_val_split or args.val_split
        cfg = PretrainConfig.from_dict({"seed": args.seed, **json.loads(args.pretrain)})
        result = pretrain(
            cfg, load(train_dataset, train_split), load(train_dataset, train_val_split),
            work / "pretrain",
        )  # fmt: skip
        model, record = load_backbone(result.best_checkpoint)
        backbone_label = f"{cfg.backbone} {cfg.method}, pre-trained here ({work / 'pretrain'})"
    model.eval()
    # resolved: the meta-learned strategies read them from args
    args.train_split, args.train_val_split = train_split, train_val_split

    def source(name: str) -> Any:  # the base classes' dataset, in the backbone's format
        return load(train_dataset, name, model)

    if args.shift_levels is not None:
        dial = shift_targets(
            args.dataset, args.shift_levels, [], args.val_split, args.test_split,
            channels=model.in_channels, image_size=model.image_size, data_root=args.root,
        )  # fmt: skip
        targets = [(t.label, t.val, t.test) for t in dial]
    else:
        val, test = (load(args.dataset, s, model) for s in (args.val_split, args.test_split))
        in_domain = train_dataset == args.dataset  # else name the target's dataset
        label = args.test_split if in_domain else f"{args.dataset}/{args.test_split}"
        targets = [(label, val, test)]
    runtime = Runtime(seed=args.seed, device="cpu", precision=args.precision, progress=False)
    search_precision = args.search_precision or args.precision
    search_runtime = Runtime(seed=args.seed, device="cpu", precision=search_precision,
                             progress=False)  # fmt: skip
    protocol = FinetuneConfig(head=args.head, passes=args.passes)
    search_protocol = FinetuneConfig(head=args.head, passes=args.search_passes)
    config = SearchConfig.from_dict({"seed": args.seed, **json.loads(args.search)})
    base = None
    if args.head_init == "prototypes":  # the search varies the scheme of this strategy
        frozen = Strategy(Scheme((0.0,) * len(model.layer_names())))
        base = with_prototype_head(frozen, args.head)
    results: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    for label, val, test in targets:
        slug = label.replace(" ", "").replace("/", "-")
        for shot in args.shots:
            tic = time.perf_counter()
            val_eps = sample_episodes(
                val, 5, shot, args.n_query, args.val_episodes, val_seed(args.seed)
            )
            found = search(
                model, val, val_eps, config, search_protocol, work / f"search-{slug}-{shot}shot",
                runtime=search_runtime, base=base,
            )  # fmt: skip
            strategies = transfer_strategies(found.best.scheme, strategy_set=args.strategy_set)
            if base is not None:
                strategies = prototype_heads(strategies, args.head)
            meta_record = None
            if args.spottune_meta:
                settings = {"k_shot": shot, "seed": args.seed, **json.loads(args.spottune_meta)}
                policy = meta_train_policy(
                    model, source(args.train_split), MetaPolicyConfig(**settings),
                    work / f"spottune-meta-{shot}shot", progress=False,
                )  # fmt: skip
                meta_record = {k: policy.record[k] for k in ("identity", "curve", "seconds")}
                n, head = len(found.best.scheme.lrs), found.best.scheme.head_lr
                for mode in ("sample", "argmax"):
                    name = "SpotTune meta" + (" (argmax)" if mode == "argmax" else "")
                    strategies[name] = spottune(
                        n, head_lr=head, policy=policy.reference, policy_lr=0.0, inference=mode
                    )
            meta_learned = meta_learned_strategies(args, model, source, work, shot)
            strategies.update(meta_learned.pop("strategies"))
            if args.only:
                strategies = chosen(strategies, args.only)
            test_eps = sample_episodes(test, 5, shot, args.n_query, args.test_episodes, args.seed)
            evaluation = evaluate_strategies(
                model, strategies, test, test_eps, protocol, runtime,
                checkpoint_dir=work / f"test-{slug}-{shot}shot",
            )  # fmt: skip
            rows = evaluation.rows.assign(target=label)
            frames.append(rows)
            summary = summary_table(evaluation.rows)
            paired = searched_differences(evaluation.rows)
            others = summary[~summary["strategy"].str.startswith("searched")]  # not its variants
            best_fixed = others.sort_values("mean").iloc[-1]
            searched_row = summary[summary["strategy"] == "searched"].iloc[0]
            vs_best = paired[paired["reference"] == best_fixed["strategy"]].iloc[0]
            results.append(
                {
                    "target": label,
                    "k_shot": shot,
                    "searched_scheme": str(found.best.scheme),
                    "search": found.summary(),
                    "test_episodes": len(test_eps),
                    "episodes_digest": test_eps.digest(),
                    "summary": summary[
                        ["strategy", "scheme", "n", "n_diverged", "mean", "ci95"]
                    ].to_dict("records"),
                    "searched_minus": paired[
                        ["reference", "mean_diff", "ci95", "p_value", "wins", "losses", "ties"]
                    ].to_dict("records"),
                    "strongest_other": {
                        "strategy": best_fixed["strategy"],
                        "mean": float(best_fixed["mean"]),
                        "searched_mean": float(searched_row["mean"]),
                        "searched_minus_it": float(vs_best["mean_diff"]),
                        "ci95": float(vs_best["ci95"]),
                        "searched_beats_it": bool(vs_best["mean_diff"] - vs_best["ci95"] > 0),
                        "it_beats_searched": bool(vs_best["mean_diff"] + vs_best["ci95"] < 0),
                    },
                    "logistic_regression": logistic_gradient_norms(model, test, test_eps),
                    **({"spottune_meta_policy": meta_record} if meta_record else {}),
                    **meta_learned,
                    **(
                        {
                            "spottune": spottune_section(
                                evaluation.rows,
                                strategies,
                                model,
                                test,
                                test_eps,
                                protocol,
                                runtime,
                                min(args.routing, len(test_eps)),
                                work / f"routing-{slug}-{shot}shot",
                            )
                        }
                        if any(s.path == "spottune" for s in strategies.values())
                        else {}
                    ),
                    "seconds_this_call": round(time.perf_counter() - tic, 1),
                }
            )
            print(json.dumps(results[-1]["strongest_other"]), flush=True)
            atomic_write_text(
                out.with_suffix(".csv"), pd.concat(frames, ignore_index=True).to_csv(index=False)
            )
            atomic_write_json(
                out,
                {
                    "benchmark": "survey: every strategy vs the searched scheme",
                    "command": "python " + shlex.join(["benchmarks/survey.py", *sys.argv[1:]]),
                    "dataset": args.dataset,
                    "backbone": backbone_label,
                    "backbone_record": {k: record.get(k) for k in ("method", "epoch", "config")},
                    "base_classes": {"dataset": train_dataset, "split": args.train_split,
                                     "val_split": args.train_val_split},
                    "protocol": {"passes": args.passes, "head": args.head,
                                 "head_init": args.head_init, "n_way": 5,
                                 "n_query": args.n_query, "search_passes": args.search_passes,
                                 "val_episodes": args.val_episodes, "search": config.to_dict()},
                    "precision": precision_record(args.precision, "cpu"),
                    "search_precision": precision_record(search_precision, "cpu"),
                    "provenance": provenance(seed=args.seed, device="cpu"),
                    "results": results,
                },
            )  # fmt: skip


if __name__ == "__main__":
    main()
