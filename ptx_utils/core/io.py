"""Atomic writes, refusing to overwrite, and file-name slugs.

Nothing the kit writes is ever half-written or overwritten: files are written to a temporary name
in the same folder and renamed into place, and existing results are refused, never replaced.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save(path: str | Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Let ``writer`` write binary content to a file object that lands at ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        writer(f)
    return Path(path)


def refuse_existing(paths: Iterable[str | Path], what: str, fix: str) -> None:
    """Raise :class:`FileExistsError` if any of ``paths`` exists; nothing is written then.

    Args:
        paths: the files about to be written.
        what: what they hold, for the message (``"results 'test'"``).
        fix: what the user can do instead (``"use a new run directory"``).

    Example:
        >>> refuse_existing(["/nonexistent/a.csv"], "results", "use a new run directory")
    """
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        raise FileExistsError(
            f"{what} already exist ({', '.join(existing)}); nothing was overwritten: {fix}"
        )


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, sep: str = "-") -> str:
    """``text`` as a file-name stem: runs of other characters become ``sep``, trimmed.

    Example:
        >>> slug("full fine-tune 0.01"), slug("omniglot/test", sep="_")
        ('full-fine-tune-0.01', 'omniglot_test')
    """
    return _SLUG.sub(sep, str(text)).strip(sep)
