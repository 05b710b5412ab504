"""``ptx data check NAME``: load every split of a dataset (or those named) and summarise it, or
say what is wrong."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptx_utils.data.errors import DataError
from ptx_utils.data.registry import get_dataset_spec, load_dataset, resolve_root


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: a summary per split, warnings, and errors."""

    name: str
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_dataset(
    name: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    cache: bool | str | Path = True,
    splits: Sequence[str] | None = None,
    **options: Any,
) -> DatasetReport:
    """Load each split of ``name`` (or those of ``splits``), decoding every image once, and
    report per split; a split the dataset does not offer is an error naming those it does."""
    spec = get_dataset_spec(name)
    report = DatasetReport(name)
    try:
        data_root = resolve_root(root, spec) if spec.needs_root else None
        offered = spec.available_splits(data_root, **options)
    except DataError as exc:
        report.errors["*"] = str(exc)
        return report
    unknown = [s for s in splits or () if s not in offered]
    if unknown:
        report.errors["*"] = (
            f"{name} has no split {', '.join(map(repr, unknown))}; its splits here: "
            f"{', '.join(offered)}"
        )
        return report
    splits = list(splits) if splits else offered
    for split in splits:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = load_dataset(
                    name, split, root=root, image_size=image_size, cache=cache, **options
                )
                report.splits[split] = ds.summary()
            except DataError as exc:
                report.errors[split] = str(exc)
        report.warnings += [str(w.message) for w in caught]
    return report


def format_report(report: DatasetReport) -> str:
    """A plain-text table of the report (one row per split), then warnings and errors."""
    lines = [f"dataset {report.name}"]
    if report.splits:
        lines.append(
            f"  {'split':<12}{'classes':>8}{'images':>9}{'per class':>13}"
            f"{'size':>9}{'channels':>10}"
        )
        for split, s in report.splits.items():
            lo, hi = s["images_per_class_min"], s["images_per_class_max"]
            per_class = f"{lo}" if lo == hi else f"{lo}-{hi}"
            size = f"{s['image_size']}x{s['image_size']}"
            lines.append(
                f"  {split:<12}{s['classes']:>8}{s['images']:>9}{per_class:>13}"
                f"{size:>9}{s['channels']:>10}"
            )
        source = next(iter(report.splits.values()))["source"]
        lines.append(f"  source: {source}")
    lines += [f"  warning: {w}" for w in dict.fromkeys(report.warnings)]
    by_message: dict[str, list[str]] = {}
    for split, msg in report.errors.items():
        by_message.setdefault(msg, []).append(split)
    for msg, splits in by_message.items():
        where = "" if splits == ["*"] else f" in split {', '.join(splits)}"
        lines.append(f"  ERROR{where}: {msg}")
    lines.append("  OK" if report.ok else "  FAILED")
    return "\n".join(lines)
