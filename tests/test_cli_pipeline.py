"""The ``ptx`` command: data check/list, and ``ptx run`` through papermill into a run directory."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import DATA_ROOT, copy_run, requires_data_root

from ptx_utils.evaluation import ROW_COLUMNS, SUMMARY_COLUMNS
from ptx_utils.finetuning import Scheme
from ptx_utils.models.checkpoint import load_backbone
from ptx_utils.running.cli import main, parse_assignment
from ptx_utils.running.pipeline import (
    NOTEBOOK_DIR,
    NOTEBOOKS,
    PipelineError,
    resume_pipeline,
    run_pipeline,
)
from ptx_utils.steps import domain_shift, searching, transfer


def _rows(out: str) -> dict[str, list[str]]:
    """``ptx data check`` table rows: split -> [classes, images, per class, size, channels]."""
    return {
        parts[0]: parts[1:]
        for line in out.splitlines()
        if len(parts := line.split()) == 6 and parts[1].isdigit()
    }


def test_data_check_synthetic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "synthetic"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {s: r[0] for s, r in rows.items()} == {"train": "64", "val": "16", "test": "20"}
    assert all(r[2] == "100" and r[3] == "32x32" and r[4] == "3" for r in rows.values())


def test_data_check_unknown_name_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "imagenet-1k"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet-1k'" in err and "mini-imagenet, omniglot" in err


def test_data_check_missing_root_names_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", "mini-imagenet", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "mini-imagenet/{train,val,test}.zip" in out and "FAILED" in out
    assert main(["data", "check", "omniglot", "--root", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_data_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "omniglot", "mini-imagenet", "cub", "cifar-fs", "fc100", "folder"):
        assert name in out


@requires_data_root
@pytest.mark.realdata
@pytest.mark.slow
def test_data_check_real_omniglot_and_mini_imagenet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "omniglot", "--root", str(DATA_ROOT)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["background"][0] == "964" and rows["evaluation"][0] == "659"
    # one split of mini-ImageNet (the half train split); all three decode in
    # benchmarks/bench_data.py: 40,800 images at 84 px are too slow for the suite
    assert (
        main(["data", "check", "mini-imagenet", "--root", str(DATA_ROOT), "--split", "train"]) == 0
    )
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["train"] and rows["train"][:2] == ["64", "19200"]
    assert "300 images per class instead of 600" in out
    assert main(["data", "check", "mini-imagenet", "--root", str(DATA_ROOT), "--split", "dev"]) == 1
    assert "no split 'dev'; its splits here: train, val, test" in capsys.readouterr().out


def test_lab_copies_the_notebooks_pointed_at_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ptx_utils.running.pipeline import prepare_run

    run_dir, params = prepare_run("smoke", {}, tmp_path / "runs" / "smoke", tmp_path / "runs")
    (run_dir / "01_pretrain.ipynb").write_text("executed")  # an executed notebook: untouched
    assert main(["lab", str(run_dir), "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert "jupyter" in out and f"--ServerApp.root_dir={run_dir.resolve() / 'lab'}" in out
    lab = sorted((run_dir / "lab").glob("*.ipynb"))
    assert [p.stem for p in lab] == list(NOTEBOOKS)
    for path in lab:
        nb = nbformat.read(path, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and f'run_dir = "{run_dir.resolve()}"' in injected[0].source
        assert f'preset = "{params["preset"]}"' in injected[0].source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert (run_dir / "01_pretrain.ipynb").read_text() == "executed"
    lab[1].write_text(lab[1].read_text().replace("searches = {}", "searches = {}  # mine"))
    assert main(["lab", str(run_dir), "--prepare-only"]) == 0  # an edited copy is kept
    assert "# mine" in lab[1].read_text() and "kept" in capsys.readouterr().out
    assert main(["lab", str(tmp_path), "--prepare-only"]) == 1
    assert "not a ptx run directory" in capsys.readouterr().err


def test_parse_assignment() -> None:
    assert parse_assignment("n_way=20") == ("n_way", 20)
    assert parse_assignment("k_shots=[1, 5]") == ("k_shots", [1, 5])
    assert parse_assignment("dataset=omniglot") == ("dataset", "omniglot")
    assert parse_assignment("data_root=null") == ("data_root", None)


FIGURES = (
    "01_base_classes",
    "synthetic_shift_grid",
    "01_episode",
    "01_pretrain_curves",
    "02_search_1shot",
    "02_search_5shot",
    "02_best_scheme_1shot",
    "02_best_scheme_5shot",
    "02_search_history_1shot",
    "02_scheme_explorer",
    "03_strategies",
    "03_episodes",
    "03_steps",
    "04_schemes",
    "04_accuracy_vs_shift",
    "04_domain_shift_explorer",
    "05_transfer",
    "05_domain_shift",
    "05_search",
)
#: Smoke compares the representative set: the paper's five, then the survey's cheap ones.
STRATEGIES = list(transfer.transfer_strategies(Scheme((0.0,) * 4), strategy_set="representative"))
assert STRATEGIES[:5] == ["searched", "linear probe", "full fine-tune", "last-1", "BN-affine"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_executed(run_dir: Path, notebooks: tuple[str, ...] = NOTEBOOKS) -> None:
    assert sorted(p.stem for p in run_dir.glob("*.ipynb")) == list(notebooks)
    for stem in notebooks:
        nb = nbformat.read(run_dir / f"{stem}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        errors = [o for o in outputs if o.output_type == "error"]
        assert outputs and not errors, f"{stem}: {errors[:1]}"
    timings = json.loads((run_dir / "timings.json").read_text())["seconds"]
    assert list(timings) == list(notebooks)


def _check_figures(run_dir: Path, stems: tuple[str, ...]) -> None:
    figures = run_dir / "figures"
    for stem in stems:
        for ext in ("pdf", "png"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
    pngs = {p.stem for p in figures.glob("*.png")}
    assert pngs == {p.stem for p in figures.glob("*.pdf")}, "every figure as PDF and PNG"


@pytest.mark.slow
def test_smoke_run_executes_all_notebooks_into_the_run_dir(smoke_run: Path, tmp_path: Path) -> None:
    run_dir = smoke_run  # ptx run --preset smoke --run-dir <session temp>/smoke-run
    params = json.loads((run_dir / "params.json").read_text())
    assert params["params"]["preset"] == "smoke" and params["params"]["dataset"] == "synthetic"
    assert params["provenance"]["versions"]["papermill"]
    _check_executed(run_dir)
    _check_figures(run_dir, FIGURES)
    for name in ("best.pt", "last.pt", "curves.csv", "nearest_centroid_test.csv"):
        assert (run_dir / "pretrain" / name).is_file(), name
    rows = _csv(run_dir / "pretrain" / "nearest_centroid_test.csv")
    assert [int(r["k_shot"]) for r in rows] == [1, 5]
    assert all(0.2 < float(r["mean"]) <= 1 and int(r["n"]) == 6 for r in rows)
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    assert summary["datasets"]["base"]["classes"] == 64
    results = run_dir / "results"

    # 02: both methods at both shots, the preset's budget, fitness in [0, 1]
    searches = _csv(results / "search_summary.csv")
    assert list(searches[0]) == list(searching.SEARCH_SUMMARY_COLUMNS)
    assert [(r["k_shot"], r["method"]) for r in searches] == [
        ("1", "evolution"),
        ("1", "random"),
        ("5", "evolution"),
        ("5", "random"),
    ]
    assert all(int(r["n_evaluated"]) == 6 and 0 <= float(r["best_fitness"]) <= 1 for r in searches)
    for r in searches:
        best = json.loads(
            (
                run_dir / "search" / f"5way_{r['k_shot']}shot_{r['method']}" / "best_scheme.json"
            ).read_text()
        )
        assert best["scheme_text"] == r["best_scheme"]

    # 03: every strategy on the 6 test episodes of each shot, the searched scheme from 02
    transfer = _csv(results / "transfer_summary.csv")
    assert list(transfer[0]) == list(SUMMARY_COLUMNS)
    assert [r["strategy"] for r in transfer] == STRATEGIES * 2
    assert all(int(r["n_episodes"]) == 6 and 0 <= float(r["mean"]) <= 1 for r in transfer)
    assert all(0 <= float(r["ci95"]) < 0.5 for r in transfer if int(r["n"]) > 1)
    searched = {r["k_shot"]: r["scheme"] for r in transfer if r["strategy"] == "searched"}
    evolution = {r["k_shot"]: r["best_scheme"] for r in searches if r["method"] == "evolution"}
    assert searched == evolution
    episodes = _csv(results / "transfer_episodes.csv")
    assert len(episodes) == 2 * len(STRATEGIES) * 6 and list(episodes[0]) == list(ROW_COLUMNS)
    versus = _csv(results / "transfer_vs_searched.csv")
    assert [r["reference"] for r in versus] == STRATEGIES[1:] * 2
    assert all(r["strategy"] == "searched" and -1 <= float(r["mean_diff"]) <= 1 for r in versus)

    # 03: accuracy against the number of updates, the smoke budget's first 2 episodes
    steps = _csv(results / "transfer_steps_summary.csv")
    assert [(r["k_shot"], r["passes"]) for r in steps[:3]] == [("1", "0"), ("1", "1"), ("1", "3")]
    assert len(steps) == 2 * len(STRATEGIES) * 3 and all(int(r["n"]) == 2 for r in steps)
    at3 = {
        r["strategy"]: float(r["mean"]) for r in steps if r["passes"] == "3" and r["k_shot"] == "1"
    }
    assert set(at3) == set(STRATEGIES) and all(0 <= v <= 1 for v in at3.values())

    # 04: three shift levels x every strategy, a searched scheme per level
    shift = _csv(results / "domain_shift_summary.csv")
    assert list(shift[0]) == list(domain_shift.SHIFT_SUMMARY_COLUMNS)
    assert [r["target"] for r in shift[:: len(STRATEGIES)]] == ["shift 0", "shift 0.5", "shift 1"]
    assert all(int(r["n_episodes"]) == 4 and 0 <= float(r["mean"]) <= 1 for r in shift)
    schemes = _csv(results / "domain_shift_schemes.csv")
    assert len(schemes) == 3 * 4 and {r["lr"] for r in schemes} <= {"0.0", "0.01", "0.1", "1.0"}

    # 05: tables for every run under the runs root (this one)
    runs = _csv(run_dir / "analysis" / "runs.csv")
    assert [r["run"] for r in runs] == ["smoke-run"] and runs[0]["missing"] == ""
    assert len(_csv(run_dir / "analysis" / "transfer_table.csv")) == 2 * len(STRATEGIES)
    assert "\\toprule" in (run_dir / "analysis" / "transfer_table.tex").read_text()

    # the same run directory again is refused, and nothing in it changes
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert main(["run", "--preset", "smoke", "--run-dir", str(run_dir)]) == 1
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.smoke_reader
def test_a_killed_smoke_run_resumes_and_keeps_what_it_wrote(
    smoke_run: Path, tmp_path: Path
) -> None:
    """As if the job had been killed in notebook 03 during the 5-shot full fine-tune (on a copy
    of the run, moved as a user may move it): resuming re-runs 03 -> 05, evaluates only that
    strategy again and gives the same results. The notebooks run again on results they
    already wrote: identical settings, so 03 and 04 load and keep every results file as it is
    (nothing rewritten), and end with their explorers."""
    run_dir = copy_run(smoke_run, tmp_path / "moved")
    results = run_dir / "results"
    written = {p: (p.read_text(), p.stat().st_mtime_ns) for p in results.iterdir()}
    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text())
    for stem in ("03_transfer", "04_domain_shift", "05_analysis"):
        del timings["seconds"][stem]
    timings_file.write_text(json.dumps(timings))
    unfinished = run_dir / "transfer" / "5way_5shot_5query_full-fine-tune.json"
    kept = {
        p: p.stat().st_mtime_ns
        for p in (run_dir / "transfer").glob("*.csv")
        if p.stem != unfinished.stem
    }
    unfinished.unlink()
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in results.iterdir()} == written
    for stem in ("03_transfer", "04_domain_shift"):
        text = (run_dir / f"{stem}.ipynb").read_text()
        assert "already written with these settings, kept" in text, stem
        assert "FileExistsError" not in text, stem
    assert unfinished.is_file()  # evaluated again ...
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # ... and only it
    assert (run_dir / "03_transfer.attempt-1.ipynb").is_file()
    timings = json.loads(timings_file.read_text())
    assert list(timings["seconds"]) == list(NOTEBOOKS)
    assert timings["resumes"][0]["from"] == "03_transfer"


@requires_data_root
@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_01_on_real_omniglot_starts_from_the_zoo(tmp_path: Path) -> None:
    """Notebook 01 on Omniglot (Lake's background alphabets as base classes, Vinyals' test
    characters as novel) from the zoo's Omniglot backbone instead of pre-training. The five
    notebooks on real Omniglot are a benchmark (benchmarks/real_data_pipeline.py): too slow for
    the suite's 5 minutes."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOK_DIR / "01_pretrain.ipynb", notebooks)
    overrides = {
        "dataset": "omniglot",
        "pretrained": "conv4-baselinepp-omniglot",
        "base_split": "background",
        "val_split": "evaluation-val",
        "k_shots": [1],
    }
    run_dir = tmp_path / "omniglot"
    run_pipeline("smoke", overrides, run_dir=run_dir, notebook_dir=notebooks)
    _check_executed(run_dir, ("01_pretrain",))
    params = json.loads((run_dir / "params.json").read_text())["params"]
    assert Path(params["data_root"]).is_absolute()
    # notebook 01 took the zoo entry: its checkpoint and its 30 epochs of curves
    _, meta = load_backbone(run_dir / "pretrain" / "best.pt")
    assert meta["zoo"] == "conv4-baselinepp-omniglot"
    assert len(_csv(run_dir / "pretrain" / "curves.csv")) == 30
    assert (run_dir / "figures" / "01_pretrain_curves.png").is_file()
    # the trained backbone's frozen features: 5-way 1-shot nearest centroid far above chance
    centroid = _csv(run_dir / "pretrain" / "nearest_centroid_test.csv")
    assert float(centroid[0]["mean"]) >= 0.8  # 5-way chance is 0.2; 600 episodes: 0.92
    data = json.loads((run_dir / "data" / "summary.json").read_text())["datasets"]
    assert data["base"]["classes"] == 964 and data["novel"]["classes"] == 423


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"unknown parameter.*n_wya"):
        run_pipeline("smoke", {"n_wya": 3}, run_dir=tmp_path / "r")


def _notebook(path: Path, *sources: str) -> None:
    """A notebook with a ``parameters`` cell (``run_dir``) and then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("run_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(src) for src in sources)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_failing_notebook_stops_and_keeps_partial_output(tmp_path: Path) -> None:
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    cells = ("print('before')", "raise ValueError('boom in cell three')")
    _notebook(nb_dir / "01_pretrain.ipynb", *cells)
    _notebook(nb_dir / "02_search.ipynb", *cells)
    with pytest.raises(PipelineError, match=r"01_pretrain.ipynb failed.*ValueError: boom"):
        run_pipeline("smoke", run_dir=tmp_path / "run", notebook_dir=nb_dir)
    partial = nbformat.read(tmp_path / "run" / "01_pretrain.ipynb", as_version=4)
    assert any(o.get("text") == "before\n" for c in partial.cells for o in c.get("outputs", []))
    assert not (tmp_path / "run" / "02_search.ipynb").exists()


def test_kernel_messages_go_to_the_run_log_not_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """What the kernel process prints (its TCP warning at start-up, "KeyboardInterrupt caught in
    kernel" at shutdown, anything written to its stderr) lands in ``kernel.log``."""
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_pretrain.ipynb", "import os\nos.write(2, b'kernel says hi\\n')")
    run_pipeline("smoke", run_dir=tmp_path / "run", notebook_dir=nb_dir)
    out, err = capfd.readouterr()
    assert "kernel says hi" not in out + err
    assert "running over TCP" not in out + err
    assert "kernel says hi" in (tmp_path / "run" / "kernel.log").read_text()


@pytest.mark.slow
def test_resume_continues_from_the_first_unfinished_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped in 02 (a failure here; a job killed at its time limit alike) resumes there
    with its own parameters: 01 is not run again, 02's partial copy is kept."""
    nb_dir, run = tmp_path / "notebooks", tmp_path / "run"
    nb_dir.mkdir()
    log = "open(f'{run_dir}/log.txt', 'a').write(f'{NAME} {n_way} {data_root}\\n')"
    _notebook(nb_dir / "01_pretrain.ipynb", log.replace("{NAME}", "01"))
    fail = "import os\nif os.environ.get('PTX_TEST_STOP'): raise RuntimeError('time limit')"
    _notebook(nb_dir / "02_search.ipynb", fail, log.replace("{NAME}", "02"))
    _notebook(nb_dir / "03_transfer.ipynb", log.replace("{NAME}", "03"))
    monkeypatch.setenv("PTX_TEST_STOP", "1")
    with pytest.raises(PipelineError, match=r"02_search\.ipynb failed"):
        run_pipeline("smoke", {"n_way": 3}, run_dir=run, notebook_dir=nb_dir)
    assert list(json.loads((run / "timings.json").read_text())["seconds"]) == ["01_pretrain"]

    with pytest.raises(PipelineError, match="keeps its parameters; n_way cannot change"):
        resume_pipeline(run, {"n_way": 5}, notebook_dir=nb_dir)
    monkeypatch.delenv("PTX_TEST_STOP")
    moved = tmp_path / "elsewhere"  # e.g. carried to another machine, data at another path
    run.rename(moved)
    resume_pipeline(moved, {"data_root": str(tmp_path / "data")}, notebook_dir=nb_dir)

    data_root = str((tmp_path / "data").resolve())
    assert (moved / "log.txt").read_text().splitlines() == [
        f"01 3 {json.loads((moved / 'params.json').read_text())['params']['data_root']}",
        f"02 3 {data_root}",
        f"03 3 {data_root}",
    ]
    kept = nbformat.read(moved / "02_search.attempt-1.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in kept.cells for o in c.get("outputs", []))
    timings = json.loads((moved / "timings.json").read_text())
    assert list(timings["seconds"]) == ["01_pretrain", "02_search", "03_transfer"]
    assert [(r["from"], r["kept"]) for r in timings["resumes"]] == [
        ("02_search", "02_search.attempt-1.ipynb")
    ]

    with pytest.raises(PipelineError, match="nothing to resume"):
        resume_pipeline(moved, notebook_dir=nb_dir)
    with pytest.raises(PipelineError, match="not a ptx run directory"):
        resume_pipeline(tmp_path / "notebooks", notebook_dir=nb_dir)
    assert main(["run", "--resume", str(moved), "--preset", "paper"]) == 1
    assert "leave out --preset" in capsys.readouterr().err
