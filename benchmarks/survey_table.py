"""Render a ``benchmarks/survey.py`` JSON as Markdown tables (for docs/results.md).

    python benchmarks/survey_table.py benchmarks/results/survey_synthetic_dial_conv4_cpu.json

One table per (target, shot): every strategy's mean ± 95 % CI and the paired difference
searched − strategy (CI, wins / losses), then the strongest strategy that is not the searched
scheme or a variant of it (``searched + AdaBN``) and whether the searched scheme beats it.
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
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    args = p.parse_args(argv)
    print(tables(json.loads(args.json.read_text())))


if __name__ == "__main__":
    main()
