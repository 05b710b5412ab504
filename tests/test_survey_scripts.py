"""The survey benchmarks run end to end on tiny budgets, so the scripts cannot rot between runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

TINY_PRETRAIN = '{"epochs": 1, "epoch_images": 256, "batch_size": 64, "val_episodes": 4}'


def _script(repo_root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, repo_root / f"benchmarks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_survey_on_the_synthetic_dial(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "survey.json"
    args = [
        "--dataset", "synthetic", "--shift-levels", "0", "--shots", "1",
        "--pretrain", TINY_PRETRAIN, "--search", '{"population": 2, "generations": 1, "top_k": 1}',
        "--val-episodes", "2", "--search-passes", "1", "--passes", "2", "--test-episodes", "3",
        "--n-query", "3",
        "--strategy-set", "all", "--work", str(tmp_path / "work"), "--out", str(out),
        "--spottune-meta", '{"episodes": 1, "inner_passes": 1, "n_query": 1}', "--routing", "1",
        "--maml", '{"epochs": 1, "episodes_per_epoch": 2, "train_query": 2, "inner_steps": 1, '
                  '"meta_batch": 2, "val_episodes": 2, "val_query": 2}', "--maml-steps", "2", "3",
        "--uppercase", '{"episodes": 2, "n_query": 2, "head_steps": 2, "tasks_per_step": 1, '
                       '"checkpoint_every": 1}',
    ]  # fmt: skip
    _script(repo_root, "survey").main(args)
    record = json.loads(out.read_text())
    (result,) = record["results"]
    names = [row["strategy"] for row in result["summary"]]
    assert names[0] == "searched" and "TSA" in names and "logistic regression" in names
    assert names[-3:] == ["MAML (2 steps)", "MAML (3 steps)", "UpperCaSE"]
    assert result["maml_meta_training"]["config"]["method"] == "maml"
    assert result["uppercase_meta_training"]["case_parameters"] == 4 * 2400
    assert [r["reference"] for r in result["searched_minus"]] == names[1:]
    assert result["strongest_other"]["strategy"] in names[1:]
    assert result["logistic_regression"]["max_grad_norm"] < 1e-6
    assert out.with_suffix(".csv").stat().st_size > 0
    _script(repo_root, "survey").main(args)  # a re-run loads what exists
    assert json.loads(out.read_text())["results"][0]["summary"] == result["summary"]
    table = _script(repo_root, "survey_table").tables(record)
    assert "| TSA |" in table and "Strongest other strategy" in table
    spot = result["spottune"]
    assert set(spot["strategies"]) == {n for n in names if n.startswith("SpotTune")}
    assert "SpotTune meta (argmax)" in spot["strategies"]
    assert result["spottune_meta_policy"]["curve"][-1]["episodes"] == 1
    assert spot["routing"]["accuracy_equals_harness_max_abs_diff"] < 1e-9
    assert spot["cost"]["SpotTune"]["trained_floats"] > spot["cost"]["searched"]["trained_floats"]
    assert "| SpotTune global-2 (argmax) |" in table and "block 4" in table
    stem = tmp_path / "figures" / "routing"
    paths = _script(repo_root, "survey_table").routing_figure([record], 1, stem)
    assert [p.suffix for p in paths] == [".pdf", ".png"] and all(p.stat().st_size for p in paths)
    # a second run on the same target adds its strategies to that target's panels
    second = json.loads(json.dumps(record))
    for row in second["results"][0]["spottune"]["routing"]["per_block"]:
        row["strategy"] += " (run 2)"
    drawn: dict = {}
    monkeypatch.setattr(
        "ptx_utils.plots.routing.routing_figure", lambda s, *a, **k: drawn.update(s)
    )
    monkeypatch.setattr("ptx_utils.plots.common.save_figure", lambda fig, stem: [])
    _script(repo_root, "survey_table").routing_figure([record, second], 1, stem)
    (both,) = drawn.values()
    assert set(both["strategy"]) == set(spot["strategies"]) | {
        f"{n} (run 2)" for n in spot["strategies"]
    }
    # the same backbone (its finished pre-training copied) and episodes, every head the SGD
    # trains starting at the prototypes: a search of its own, paired with the first run
    proto, work2 = tmp_path / "proto.json", tmp_path / "work2"
    shutil.copytree(tmp_path / "work" / "pretrain", work2 / "pretrain")
    keep = [*args[: args.index("--strategy-set")], "--work", str(work2), "--out", str(proto)]
    _script(repo_root, "survey").main(
        [*keep, "--strategy-set", "paper", "--head-init", "prototypes"]
    )
    (other,) = json.loads(proto.read_text())["results"]
    assert "prototype-cosine" in other["summary"][1]["scheme"]  # the linear probe's head
    pairs = _script(repo_root, "survey_table").compare(
        [out, proto], ["searched", "full fine-tune"], 1
    )
    assert "| searched − searched |" in pairs and "| full fine-tune − full fine-tune |" in pairs


@pytest.mark.slow
def test_fn_2x2_records_both_pretrainings(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "fn.json"
    _script(repo_root, "fn_2x2").main(
        [
            "--pretrain",
            TINY_PRETRAIN,
            "--shift-levels",
            "0",
            "--test-episodes",
            "3",
            "--passes",
            "2",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert record["pretraining"]["BN"]["config"]["feature_norm"] is False
    assert record["pretraining"]["FN"]["config"]["feature_norm"] is True
    cells = [c for c in record["cells"] if "pretraining" in c]
    assert {(c["pretraining"], c["strategy"]) for c in cells} == {
        (p, s) for p in ("BN", "FN") for s in ("head only", "head + BN affine")
    }
    diffs = [c for c in record["cells"] if "fn_minus_bn" in c]
    assert len(diffs) == 2 and all(-1 <= d["fn_minus_bn"]["mean_diff"] <= 1 for d in diffs)


@pytest.mark.slow
def test_survey_across_domains(repo_root: Path, tmp_path: Path) -> None:
    """A backbone pre-trained on one dataset, tested on another (a folder of 28 px grey
    images) loaded in the backbone's input format; its meta-learned rows train on its own."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(5):  # 5 classes x 16 images: one 5-way 1-shot 15-query episode
        folder = tmp_path / "target" / f"class{c}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (28, 28))
        for i in range(16):
            pixels = np.clip(base + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    out = tmp_path / "cross.json"
    args = [
        "--train-dataset", "synthetic", "--train-val-split", "val", "--pretrain", TINY_PRETRAIN,
        "--dataset", "folder", "--root", str(tmp_path / "target"), "--val-split", "all",
        "--test-split", "all", "--shots", "1", "--val-episodes", "1", "--search-passes", "1",
        "--search", '{"population": 2, "generations": 1, "top_k": 1}', "--passes", "2",
        "--test-episodes", "2", "--strategy-set", "paper", "--work", str(tmp_path / "work"),
        "--spottune-meta", '{"episodes": 1, "inner_passes": 1, "n_query": 1}', "--routing", "1",
        "--precision", "fp32", "--search-precision", "bf16", "--out", str(out),
    ]  # fmt: skip
    _script(repo_root, "survey").main(args)
    record = json.loads(out.read_text())
    assert (record["precision"]["precision"], record["search_precision"]["precision"]) == (
        "fp32",
        "bf16",
    )
    assert record["base_classes"] == {"dataset": "synthetic", "split": "train", "val_split": "val"}
    (result,) = record["results"]
    assert result["target"] == "folder/all" and result["test_episodes"] == 2
    assert (tmp_path / "work" / "search-folder-all-1shot" / "state.json").exists()
    names = [row["strategy"] for row in result["summary"]]
    assert names[0] == "searched" and "SpotTune meta" in names
    assert result["spottune_meta_policy"]["curve"][-1]["episodes"] == 1
    table = _script(repo_root, "survey_table")
    assert table.target_label(record, result) == "synthetic → folder/all"
    paths = table.routing_figure([record], 1, tmp_path / "routing")
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    # a subset of the strategies, the finished search read at its own precision
    only = tmp_path / "only.json"
    survey = _script(repo_root, "survey")
    survey.main([*args[: args.index("--out")], "--out", str(only), "--only", "linear probe"])
    (subset,) = json.loads(only.read_text())["results"]
    assert [row["strategy"] for row in subset["summary"]] == ["searched", "linear probe"]
    assert subset["summary"][0] == result["summary"][0]  # the saved rows, loaded
    with pytest.raises(SystemExit, match="no such"):
        survey.main([*args, "--only", "no such"])
    at_fp32 = [*args[: args.index("--search-precision")], "--out", str(only)]
    with pytest.raises(Exception, match="other settings"):  # not searched again at fp32
        survey.main(at_fp32)


def test_the_survey_queue_holds_commands_the_survey_accepts(
    repo_root: Path, tmp_path: Path
) -> None:
    """Every queued run parses with survey.py's own parser (so the queue cannot rot), and an
    entry is done only once its JSON holds every (target, shot) it asks for."""
    queue = _script(repo_root, "survey_queue")
    parser = _script(repo_root, "survey").build_parser()
    entries = queue.load_queue()
    assert entries and all((repo_root / e["script"]).is_file() for e in entries)
    for entry in entries:
        args = parser.parse_args(entry["args"])
        assert args.out.startswith("benchmarks/results/") and args.work, entry["name"]
    dial = next(e for e in entries if "--shift-levels" in e["args"])
    assert queue.expected_results(dial) == 3
    out = tmp_path / str(queue.option(dial, "--out"))
    out.parent.mkdir(parents=True)
    assert queue.status(dial, tmp_path) == "pending"
    (tmp_path / str(queue.option(dial, "--work")) / "pretrain").mkdir(parents=True)
    assert queue.status(dial, tmp_path) == "started"
    out.write_text(json.dumps({"results": [{}, {}]}))
    assert queue.status(dial, tmp_path) == "partial (2/3)"
    out.write_text(json.dumps({"results": [{}, {}, {}]}))
    assert queue.status(dial, tmp_path) == "done"
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([entries[0], entries[0]]))
    with pytest.raises(ValueError, match="two entries share a name"):
        queue.load_queue(twice)


def test_a_second_queue_run_stops_while_one_holds_the_queue(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``--run`` on one queue file would write the same work folders: the second stops with
    exit status 1 and says why, before it runs anything; the lock goes with the first."""
    queue = _script(repo_root, "survey_queue")
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(queue.load_queue()[:1]))
    with queue.hold(path):
        assert queue.main(["--run", "--queue", str(path)]) == 1
        assert "another `survey_queue.py --run` is running" in capsys.readouterr().err
    with queue.hold(path):  # released: it can be taken again
        pass
