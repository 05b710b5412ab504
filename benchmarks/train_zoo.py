"""Train a model-zoo backbone from its recipe, resumably; then publish it into the package zoo.

    python benchmarks/train_zoo.py train conv4-baselinepp-mini-imagenet --root ../shared/data
    python benchmarks/train_zoo.py publish conv4-baselinepp-mini-imagenet

``train`` pre-trains under ``runs/zoo/<name>`` (run it again after an interruption: it resumes
from ``last.pt``; ``--until-epoch N`` stops after epoch N, ``--epochs N`` raises the target). A
run continued across sessions keeps its state (``last.pt``, ``best.pt``, ``curves.csv``) committed
in ``benchmarks/results/zoo_training/<name>/``: ``train`` starts from there when
``runs/zoo/<name>`` holds none.
``publish`` copies the best epoch's backbone (no optimizer state) into
``ptx_utils/models/zoo_files/<name>/`` in parts of at most 16 MiB, with its curves, record and
SHA-256, and enters it in the zoo's index (:mod:`ptx_utils.models.zoo`). ``evaluate`` scores a
published entry on ``--episodes`` 5-way test episodes (1- and 5-shot, 15 queries): nearest centroid
(Euclidean and cosine) and the paper's linear probe (new cosine head, 100 passes), into the entry's
``test.json`` (refused if it exists).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ptx_utils.core.device import precision_record, resolve_precision
from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import mean_ci95
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import FinetuneConfig, linear_probe
from ptx_utils.models import zoo
from ptx_utils.models.features import nearest_centroid_accuracy
from ptx_utils.pretraining import PretrainConfig, pretrain

#: Where a training continued across sessions keeps its resumable state (committed).
COMMITTED_STATE = Path("benchmarks/results/zoo_training")

#: Omniglot's data, splits and licence, shared by its recipes.
_OMNIGLOT = {
    "dataset": "omniglot",
    "splits": {"base": "background", "val": "evaluation-val", "novel": "test"},
    "licence": "Omniglot: MIT licence (Brenden Lake, github.com/brendenlake/omniglot)",
}

#: name -> (dataset, base split, val split, novel split, config, licence note)
RECIPES: dict[str, dict[str, Any]] = {
    "conv4-baselinepp-mini-imagenet": {
        "dataset": "mini-imagenet",
        "splits": {"base": "train", "val": "val", "novel": "test"},
        "config": PretrainConfig(
            method="baseline++", backbone="conv4", epochs=60, batch_size=64, precision="bf16"
        ),
        "licence": "mini-ImageNet images derive from ImageNet: non-commercial research terms "
        "(image-net.org/download); trained on the first 300 images per class of the train split",
    },
    "conv4-baselinepp-omniglot": {
        **_OMNIGLOT,
        "config": PretrainConfig(
            method="baseline++",
            backbone="conv4",
            epochs=30,
            batch_size=64,
            flip=False,
            val_episodes=50,
            precision="fp32",
        ),
    },
    # ProtoNet (Snell et al.) on the same base classes, episodes of the shot it is tested on
    # (5-way, 15 queries: Omniglot has 20 drawings a character); docs/pretraining.md#protonet
    **{
        f"conv4-protonet-omniglot-{shot}shot": {
            **_OMNIGLOT,
            "config": PretrainConfig(
                method="protonet",
                backbone="conv4",
                epochs=100,
                train_shot=shot,
                train_query=15,
                val_shot=shot,
                flip=False,
                val_episodes=50,
                precision="fp32",
            ),
        }
        for shot in (1, 5)
    },
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("train", "publish", "evaluate"))
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--root", default=None, help="data root (default: PTX_DATA_ROOT)")
    p.add_argument("--work", default=None, help="default: runs/zoo/<name>")
    p.add_argument("--epochs", type=int, default=None, help="raise the recipe's epoch target")
    p.add_argument("--until-epoch", type=int, default=None)
    p.add_argument("--episodes", type=int, default=600, help="test episodes of evaluate")
    args = p.parse_args(argv)
    recipe = RECIPES[args.name]
    cfg: PretrainConfig = recipe["config"]
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    work = Path(args.work or f"runs/zoo/{args.name}")
    if args.action == "train":
        saved = COMMITTED_STATE / args.name
        if not (work / "last.pt").exists() and (saved / "last.pt").exists():
            work.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt", "curves.csv"):
                shutil.copyfile(saved / name, work / name)
            print(f"resuming from the committed state in {saved}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = load_dataset(recipe["dataset"], recipe["splits"]["base"], root=args.root)
            val = load_dataset(recipe["dataset"], recipe["splits"]["val"], root=args.root)
        pretrain(cfg, base, val, work, until_epoch=args.until_epoch)
        return
    if args.action == "evaluate":
        evaluate(args.name, recipe, args.root, args.episodes)
        return
    command = " ".join(
        ["python", "benchmarks/train_zoo.py", "train", args.name, "--root", "../shared/data"]
        + (["--epochs", str(cfg.epochs)] if args.epochs else [])
    )
    entry = zoo.publish(
        args.name,
        work / "best.pt",
        work / "curves.csv",
        command=command,
        dataset=recipe["dataset"],
        splits=recipe["splits"],
        config=asdict(cfg),
        licence=recipe["licence"],
    )
    print(f"published {args.name}: {entry['sha256']}  ({shlex.join(sys.argv)})")


def evaluate(name: str, recipe: dict[str, Any], root: str | None, n_episodes: int) -> None:
    """Nearest centroid and the paper's linear probe on test episodes: the entry's test.json."""
    out = zoo.ZOO_DIR / name / "test.json"
    if out.exists():
        raise SystemExit(f"{out} exists; remove it by hand to evaluate again")
    model, _ = zoo.load_pretrained(name)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        novel = load_dataset(recipe["dataset"], recipe["splits"]["novel"], root=root)
    rows = []
    for shot in (1, 5):
        episodes = sample_episodes(novel, 5, shot, 15, n_episodes, seed=0)
        row: dict[str, Any] = {"k_shot": shot, "n_episodes": n_episodes,
                               "episodes_digest": episodes.digest()}  # fmt: skip
        for metric in ("euclidean", "cosine"):
            acc = nearest_centroid_accuracy(model, novel, episodes, torch.device("cpu"), metric,
                                            precision=resolve_precision("auto", "cpu"))  # fmt: skip
            row[f"nearest_centroid_{metric}"] = mean_ci95(acc)
        probe = evaluate_strategies(
            model, {"linear probe": linear_probe(len(model.layer_names()))}, novel, episodes,
            FinetuneConfig(head="cosine", passes=100), Runtime(seed=0, device="cpu"),
        ).rows  # fmt: skip
        row["linear_probe"] = mean_ci95(probe["accuracy"].dropna().to_numpy())
        rows.append(row)
        print(json.dumps(row), flush=True)
    atomic_write_json(out, {
        "entry": name,
        "dataset": f"{novel.name}/{novel.split}",
        "rows": rows,
        "command": shlex.join(["python", *sys.argv]),
        "precision": precision_record("auto", "cpu"),
        "provenance": provenance(seed=0, device="cpu"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
