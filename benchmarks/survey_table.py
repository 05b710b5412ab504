"""Render a ``benchmarks/survey.py`` JSON as Markdown tables (for docs/results.md).

    python benchmarks/survey_table.py benchmarks/results/survey_synthetic_dial_conv4_cpu.json
    python benchmarks/survey_table.py A.json B.json --routing-figure benchmarks/results/figures/x
    python benchmarks/survey_table.py A.json B.json --compare searched "searched=linear probe"

One table per (target, shot): every strategy's mean ± 95 % CI and the paired difference
searched − strategy (CI, wins / losses), then the strongest strategy that is not the searched
scheme or a variant of it (``searched + AdaBN``) and whether the searched scheme beats it.
``--compare`` pairs two runs scored on the same episodes (another backbone, another head).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def tables(record: dict[str, Any]) -> str:
    """The Markdown of every (target, shot) result in ``record``."""
    out = [f"Command: `{record['command']}`", ""]
    for result in record["results"]:
        diff = {d["reference"]: d for d in result["searched_minus"]}
        out += [
            f"**{result['target']}, 5-way {result['k_shot']}-shot** — searched "
            f"`{result['searched_scheme']}`, {result['test_episodes']} test episodes; logistic "
            f"regression's largest final gradient norm "
            f"{result['logistic_regression']['max_grad_norm']:.1e}",
            "",
            "| strategy | accuracy (%) | searched − it (points) | wins / losses |",
            "| --- | --- | --- | --- |",
        ]
        for row in result["summary"]:
            name = row["strategy"]
            cell = f"{100 * row['mean']:.2f} ± {100 * row['ci95']:.2f}"
            if name in diff:
                d = diff[name]
                change = f"{100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f}"
                out.append(f"| {name} | {cell} | {change} | {d['wins']} / {d['losses']} |")
            else:
                out.append(f"| {name} | {cell} | | |")
        others = [r for r in result["summary"] if not r["strategy"].startswith("searched")]
        best = max(others, key=lambda r: r["mean"])
        d = diff[best["strategy"]]
        low, high = d["mean_diff"] - d["ci95"], d["mean_diff"] + d["ci95"]
        verdict = (
            "the searched scheme beats it"
            if low > 0
            else "it beats the searched scheme"
            if high < 0
            else "not distinguishable"
        )
        out += [
            "",
            f"Strongest other strategy: **{best['strategy']}** ({100 * best['mean']:.2f} %); "
            f"searched − it {100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f} points: "
            f"{verdict}.",
            "",
        ]
        if "spottune" in result:
            out += spottune_lines(result["spottune"])
    return "\n".join(out)


def _diff(d: dict[str, float]) -> str:
    return (
        f"{100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f} ({d['wins']:.0f} / {d['losses']:.0f})"
    )


def spottune_lines(section: dict[str, Any]) -> list[str]:
    """SpotTune against the searched scheme and the strongest fixed strategy; routing; cost."""
    strongest = section["strongest_fixed"]
    out = [
        f"SpotTune against the searched scheme and the strongest fixed strategy ({strongest}), "
        "points (wins / losses):",
        "",
        f"| strategy | accuracy (%) | it − searched | it − {strongest} |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in section["strategies"].items():
        out.append(
            f"| {name} | {100 * row['mean']:.2f} ± {100 * row['ci95']:.2f} | "
            f"{_diff(row['minus_searched'])} | {_diff(row['minus_strongest_fixed'])} |"
        )
    routing = section.get("routing")
    if routing:
        blocks = sorted({r["block"] for r in routing["per_block"]})
        out += ["", f"Queries routed to the tuned copy, mean ± sd over the first "
                f"{routing['episodes']} episodes:", "",
                "| strategy | " + " | ".join(f"block {b + 1}" for b in blocks) + " |",
                "| --- |" + " --- |" * len(blocks)]  # fmt: skip
        for name in dict.fromkeys(r["strategy"] for r in routing["per_block"]):
            cells = [f"{r['mean']:.2f} ± {r['std']:.2f}" for r in routing["per_block"]
                     if r["strategy"] == name]  # fmt: skip
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    cost = section.get("cost")
    if cost:
        out += ["", "Cost per replica (float32; trained state = weights, gradients, momentum):", "",
                "| strategy | seconds | trained state (KiB) |", "| --- | --- | --- |"]  # fmt: skip
        for name, c in cost.items():
            if isinstance(c, dict):
                out.append(f"| {name} | {c['seconds_per_replica']:.2f} | "
                           f"{c['trained_state_bytes'] / 1024:.0f} |")  # fmt: skip
    return [*out, ""]


def target_label(record: dict[str, Any], result: dict[str, Any]) -> str:
    """``"omniglot: test"``; a backbone of another dataset ``"mini-imagenet → omniglot/test"``."""
    source = record.get("base_classes", {}).get("dataset", record["dataset"])
    if source == record["dataset"]:
        return f"{record['dataset']}: {result['target']}"
    return f"{source} → {result['target']}"


def routing_figure(records: list[dict[str, Any]], shot: int, stem: Path) -> list[Path]:
    """SpotTune's routing per block for every target of ``records`` at ``shot``, beside the
    searched schemes' rates; written as ``stem.pdf`` and ``stem.png``."""
    import pandas as pd

    from ptx_utils.plots.common import save_figure
    from ptx_utils.plots.routing import routing_figure as figure

    summaries, searched = {}, {}
    for record in records:
        for result in record["results"]:
            routing = result.get("spottune", {}).get("routing")
            if result["k_shot"] != shot or not routing:
                continue
            label = target_label(record, result)
            frame = pd.DataFrame(routing["per_block"])  # runs on one target add strategies
            summaries[label] = pd.concat([summaries[label], frame]) if label in summaries else frame
            searched[label] = [float(x) for x in result["searched_scheme"].split(" | ")[0].split()]
    if not summaries:
        raise SystemExit(f"no SpotTune routing at {shot}-shot in the given JSON files")
    fig = figure(summaries, searched, title=f"SpotTune routing, 5-way {shot}-shot")
    stem.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, stem)


def compare(paths: list[Path], pairs: list[str], shot: int) -> str:
    """Rows of two runs on the same episodes, paired across them: for each ``"A=B"`` in
    ``pairs``, run 2's strategy B minus run 1's strategy A (points, CI, wins / losses); refused
    unless both runs' (target, shot) results list the same episodes digest."""
    import pandas as pd

    from ptx_utils.evaluation import paired_table

    runs = []
    for path in paths:
        record = json.loads(path.read_text())
        result = next((r for r in record["results"] if r["k_shot"] == shot), None)
        if result is None:
            raise SystemExit(f"{path} has no {shot}-shot result")
        rows = pd.read_csv(path.with_suffix(".csv"))
        rows = rows[(rows["target"] == result["target"]) & (rows["k_shot"] == shot)]
        runs.append((result, rows))
    (first, rows_a), (second, rows_b) = runs
    if first["episodes_digest"] != second["episodes_digest"]:
        raise SystemExit("the two runs were not scored on the same episodes; nothing to pair")
    out = [
        f"Paired across runs on the same {first['test_episodes']} episodes: run 2 ({paths[1]}) "
        f"− run 1 ({paths[0]}), points:",
        "",
        "| run 2's strategy − run 1's | difference | wins / losses |",
        "| --- | --- | --- |",
    ]
    for pair in pairs:
        a, _, b = pair.partition("=")
        both = pd.concat([
            rows_a[rows_a["strategy"] == a].assign(strategy="run 1"),
            rows_b[rows_b["strategy"] == (b or a)].assign(strategy="run 2"),
        ])  # fmt: skip
        if set(both["strategy"]) != {"run 1", "run 2"}:
            raise SystemExit(f"pair {pair!r}: a strategy is missing from one of the runs")
        d = paired_table(both, "run 1").iloc[0]
        out.append(f"| {b or a} − {a} | {100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f} | "
                   f"{d['wins']:.0f} / {d['losses']:.0f} |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, nargs="+")
    p.add_argument(
        "--routing-figure",
        type=Path,
        default=None,
        help="write SpotTune's routing figure of all the JSON files to this stem",
    )
    p.add_argument("--shot", type=int, default=1, help="the routing figure's (or --compare's) shot")
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="A=B",
        help="pair two JSON files' runs (same episodes): run 2's strategy B minus run 1's A",
    )
    args = p.parse_args(argv)
    if args.compare:
        if len(args.json) != 2:
            raise SystemExit("--compare pairs exactly two JSON files")
        print(compare(args.json, args.compare, args.shot))
        return
    records = [json.loads(path.read_text()) for path in args.json]
    if args.routing_figure is not None:
        for path in routing_figure(records, args.shot, args.routing_figure):
            print(path)
        return
    for record in records:
        print(tables(record))


if __name__ == "__main__":
    main()
