"""Atomic writes, refusing to overwrite, and file-name slugs.

Nothing the kit writes is ever half-written or overwritten: files are written to a temporary name
in the same folder and renamed into place; existing results are refused, never replaced — or,
written again with identical settings (:func:`write_or_match`), kept as they are.
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


def json_text(obj: Any) -> str:
    """``obj`` as the kit writes JSON: indented, keys sorted, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json_text(obj))


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


#: Provenance keys that differ between two runs of identical settings.
VOLATILE_KEYS = ("date", "git_commit", "versions", "python")


def write_or_match(files: dict[Path, str], what: str, fix: str) -> bool:
    """Write every ``path -> text`` atomically, or find them all already written the same.

    None exists: all are written (True). All exist with the same content — JSON compared
    without :data:`VOLATILE_KEYS` at the top level — nothing is written and one line says so
    (False). Otherwise :class:`FileExistsError` names the files that differ (and, for JSON,
    the keys), and nothing is written.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "a.csv"
        >>> write_or_match({f: "x\\n1\\n"}, "results", "use a new run directory")
        True
    """
    existing = [p for p in files if Path(p).exists()]
    if not existing:
        for path, text in files.items():
            atomic_write_text(path, text)
        return True
    problems = []
    for path, text in files.items():
        if not Path(path).exists():
            problems.append(f"{path} is missing")
        elif (differs := _differs(Path(path), text)) is not None:
            problems.append(f"{path} differs{differs}")
    if problems:
        raise FileExistsError(
            f"{what} already exist, written with other settings: {'; '.join(problems)}; "
            f"nothing was overwritten: {fix}"
        )
    print(f"{what}: already written with these settings, kept ({Path(existing[0]).parent})")
    return False


def refuse_if_differs(path: str | Path, text: str, what: str, fix: str) -> None:
    """Before a long step: refuse (:class:`FileExistsError`) if ``path`` exists with other
    content than ``text`` (JSON: up to :data:`VOLATILE_KEYS`), e.g. a settings record."""
    if Path(path).exists() and (differs := _differs(Path(path), text)) is not None:
        raise FileExistsError(
            f"{what} already exist, written with other settings ({path} differs{differs}); "
            f"nothing was overwritten: {fix}"
        )


def _differs(path: Path, text: str) -> str | None:
    """None when ``path`` holds ``text`` (JSON: up to :data:`VOLATILE_KEYS`), else a detail."""
    old = path.read_text()
    if old == text:
        return None
    if path.suffix == ".json":
        try:
            a, b = json.loads(old), json.loads(text)
        except json.JSONDecodeError:
            return ""
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in {*a, *b} - set(VOLATILE_KEYS) if a.get(k) != b.get(k))
            return f" in {', '.join(keys)}" if keys else None
    return ""


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, sep: str = "-") -> str:
    """``text`` as a file-name stem: runs of other characters become ``sep``, trimmed.

    Example:
        >>> slug("full fine-tune 0.01"), slug("omniglot/test", sep="_")
        ('full-fine-tune-0.01', 'omniglot_test')
    """
    return _SLUG.sub(sep, str(text)).strip(sep)
