"""LaTeX: escaping, and the one booktabs table builder every table of the kit uses."""

from __future__ import annotations

from collections.abc import Sequence

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def booktabs_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str | None = None,
) -> str:
    """A booktabs ``tabular`` (left column ``l``, the rest ``c``), wrapped in a ``table`` with
    ``caption`` when given. ``header`` and the first cell of each row are escaped; the other
    cells are LaTeX already. Needs ``\\usepackage{booktabs}``.

    Example:
        >>> print(booktabs_table(["Strategy", "5-shot"], [["a_b", "1.00"]]).splitlines()[4])
        a\\_b & 1.00 \\\\
    """
    lines = []
    if caption is not None:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines += [
        "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        lines.append(" & ".join([latex_escape(row[0]), *row[1:]]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption is not None:
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def mean_ci_cell(mean: float, ci: float) -> str:
    """``xx.xx $\\pm$ y.yy`` in percent for fractions; ``--`` when the mean is not finite."""
    if not (mean == mean and abs(mean) != float("inf")):
        return "--"
    return f"{100 * mean:.2f} $\\pm$ {100 * ci:.2f}"
