"""README.md and docs/: every python block runs, every relative link resolves, the README is short.

Each page's Python blocks run in order, in one namespace, in an empty folder (so what they write
lands there). Blocks that are shell commands are fenced as ```bash and are not run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced block whose info string is ``python``."""
    out = []
    for m in _FENCE.finditer(text):
        if m.group(2).strip().split(" ")[0] == "python":
            out.append((text.count("\n", 0, m.start(3)) + 1, m.group(3)))
    return out


def _prose(text: str) -> str:
    """The page without its fenced blocks (links inside code are not links)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the page's headings (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2``... for repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", _prose(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=_rel)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code in blocks:
        # The file name and line make a traceback point at the page and the block's line.
        exec(compile("\n" * (line - 1) + code, _rel(page), "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_examples_are_found() -> None:
    """The extractor sees the API guide's examples (a changed fence style would hide them)."""
    assert len(python_blocks((ROOT / "docs" / "api.md").read_text())) >= 5


def test_readme_is_a_short_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for m in _LINK.finditer(_prose(text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{_rel(page)}: " + "; ".join(broken)


def test_every_docs_page_is_listed_in_the_index() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    missing = [p.name for p in PAGES[1:] if p.name != "index.md" and f"]({p.name})" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
