"""The README's reproduction table, rendered from the row JSONs of ``benchmarks/reproduce.py``.

    python benchmarks/reproduction_table.py [--dir benchmarks/results/reproduction]

Prints Markdown in the style of LibFewShot's ``reproduce/`` pages: per setting (dataset, backbone,
pre-training method, n-way k-shot) one line per strategy — the published number where a paper
reports this protocol, ptx-kit's mean ± 95 % CI, the scheme, the pre-training (epochs run, the
best epoch, time), the search and test time and the device — then the exact
command of each setting. Every number printed comes from a JSON file; nothing is typed in except
the published numbers in :data:`PAPER`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Published numbers: (dataset, backbone, method, k_shot, strategy) -> (accuracy %, source).
#: CloserLook's Baseline++ and P-Transfer's "fixed" fine-tune only the new classifier on a frozen
#: backbone: our linear probe.
PAPER: dict[tuple[str, str, str, int, str], tuple[float, str]] = {
    ("mini-imagenet", "conv4", "baseline++", 1, "linear probe"): (48.24, "CloserLook"),
    ("mini-imagenet", "conv4", "baseline++", 5, "linear probe"): (66.43, "CloserLook"),
    ("mini-imagenet", "conv6", "baseline++", 1, "linear probe"): (48.29, "CloserLook"),
    ("mini-imagenet", "conv6", "baseline++", 5, "linear probe"): (68.09, "CloserLook"),
    ("mini-imagenet", "conv6", "baseline++", 1, "searched"): (53.55, "P-Transfer"),
    ("mini-imagenet", "resnet12", "baseline++", 1, "linear probe"): (59.35, "P-Transfer"),
    ("mini-imagenet", "resnet12", "baseline++", 1, "searched"): (64.21, "P-Transfer"),
    ("mini-imagenet", "resnet12", "baseline++", 5, "linear probe"): (77.51, "P-Transfer"),
    ("mini-imagenet", "resnet12", "baseline++", 5, "searched"): (80.38, "P-Transfer"),
}
# P-Transfer's Conv6 1-shot "fixed" number differs from CloserLook's for the same protocol.
P_TRANSFER_CONV6_FIXED = 52.52

STRATEGY_ORDER = ("searched", "linear probe", "full fine-tune", "last-1", "BN-affine")


def load_rows(directory: str | Path) -> list[dict[str, Any]]:
    """Every row JSON in ``directory``, sorted by setting and strategy order."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        order = STRATEGY_ORDER.index(r["strategy"]) if r["strategy"] in STRATEGY_ORDER else 99
        return (r["dataset"], r["backbone"], r["method"], r["n_way"], r["k_shot"], order)

    return sorted(rows, key=key)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _paper(r: dict[str, Any]) -> str:
    found = PAPER.get((r["dataset"], r["backbone"], r["method"], r["k_shot"], r["strategy"]))
    if found is None:
        return "—"
    number, source = found
    extra = ""
    if r["backbone"] == "conv6" and r["k_shot"] == 1 and r["strategy"] == "linear probe":
        extra = f"; P-Transfer {P_TRANSFER_CONV6_FIXED:.2f}"
    return f"{number:.2f} ({source}{extra})"


def _pretrain(info: dict[str, Any]) -> str:
    """``30 ep (best 8), 7.7 min`` from a row's ``pretrain`` record (or where the weights came
    from when the row used a given checkpoint)."""
    if "config" not in info:
        return f"given `{info.get('checkpoint', '?')}`"
    epochs = info["config"].get("epochs", "?")
    seconds = sum(h.get("seconds", 0.0) for h in info.get("history", []))
    return f"{epochs} ep (best {info['best_epoch']}), {_minutes(seconds)}"


def render(rows: Iterable[dict[str, Any]]) -> str:
    """The Markdown table and the commands, one numbered command per setting."""
    rows = list(rows)
    commands: list[str] = []
    lines = [
        "| setting | strategy (scheme) | paper | ptx-kit | pre-train | search + test | device "
        "| cmd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["command"] not in commands:
            commands.append(r["command"])
        setting = (
            f"{r['dataset']} {r['backbone']} {r['method']} {r['n_way']}-way {r['k_shot']}-shot"
        )
        ours = f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} (n={r['n_episodes']})"
        if r["strategy"] == "searched":
            ours = f"**{ours}**"
        # The search and the test of all strategies are one job per setting: on the first row.
        first = r["strategy"] == "searched"
        time = (
            f"search {r['search_candidates']} schemes {_minutes(r['search_seconds'])}, "
            f"test (all strategies) {_minutes(r['test_seconds'])}"
            if first
            else ""
        )
        pretrained = _pretrain(r["pretrain"]) if first else ""
        number = commands.index(r["command"]) + 1
        scheme = r["scheme"].replace("|", "\\|")  # a bare | would end the table cell
        lines.append(
            f"| {setting} | {r['strategy']} (`{scheme}`) | {_paper(r)} | {ours} | {pretrained} "
            f"| {time} | {r['device']} | [{number}] |"
        )
    lines.append("")
    lines.extend(f"[{i}] `{c}`  " for i, c in enumerate(commands, 1))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="benchmarks/results/reproduction")
    args = p.parse_args(argv)
    text = render(load_rows(args.dir))
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
