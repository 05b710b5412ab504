"""The reproduction table of docs/reproduction.md, rendered from ``benchmarks/reproduce.py``'s rows.

    python benchmarks/reproduction_table.py [--dir benchmarks/results/reproduction]
        [--write [docs/reproduction.md]]

Prints Markdown in the style of LibFewShot's ``reproduce/`` pages: per setting (dataset, backbone,
pre-training method, n-way k-shot) one line per strategy — the published number where a paper
reports this protocol, ptx-kit's mean ± 95 % CI, the scheme, the pre-training (epochs run, the
best epoch, time), the search and test time and the device — then the exact
command of each setting. Every number printed comes from a JSON file; nothing is typed in except
the published numbers in :data:`PAPER`. With ``--write`` the table also replaces the text between
the :data:`BEGIN` and :data:`END` marker lines of that page (nothing else of the page changes).
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

#: The page the table lives in, and the marker lines around it there.
PAGE = "docs/reproduction.md"
BEGIN = "<!-- reproduction-table:begin"
END = "<!-- reproduction-table:end -->"

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


def write_between_markers(page: str | Path, text: str) -> Path:
    """Replace what lies between the page's :data:`BEGIN` and :data:`END` lines with ``text``
    (framed by one blank line each side); refuse a page without exactly one pair."""
    path = Path(page)
    lines = path.read_text().splitlines(keepends=True)
    begins = [i for i, ln in enumerate(lines) if ln.startswith(BEGIN)]
    ends = [i for i, ln in enumerate(lines) if ln.startswith(END)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise SystemExit(
            f"{path}: need one line starting {BEGIN!r} and, after it, one starting {END!r}; "
            f"found {len(begins)} and {len(ends)}"
        )
    body = "\n" + text + "\n"
    path.write_text("".join(lines[: begins[0] + 1]) + body + "".join(lines[ends[0] :]))
    return path


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="benchmarks/results/reproduction")
    p.add_argument(
        "--write", nargs="?", const=PAGE, default=None, metavar="PAGE",
        help=f"also put the table into PAGE between its marker lines (default {PAGE})",
    )  # fmt: skip
    args = p.parse_args(argv)
    text = render(load_rows(args.dir))
    print(text, end="")
    if args.write:
        write_between_markers(args.write, text)
    return text


if __name__ == "__main__":
    main()
