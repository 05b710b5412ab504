"""The long survey runs still to do, in order, one at a time: ``benchmarks/survey_queue.json``.

    python benchmarks/survey_queue.py          # every entry: done, partial, started, pending
    nohup nice python benchmarks/survey_queue.py --run > queue.log 2>&1 &  # the unfinished
    python benchmarks/survey_queue.py --run mini-imagenet-1shot         # only that one

An entry is a script and its arguments (``name``, the ``issues`` it answers, ``what`` it
measures). Every script it runs is resumable in its ``--work`` folder, so a run stopped anywhere
continues where it was; the entry is done when its ``--out`` JSON holds a result for every
(target, shot) it asks for. Runs go one after another in one process tree: two torch jobs on
this project's 2 cores slow each other about tenfold, and two runs of one entry would write the
same work folder, so a second ``--run`` on the same queue file stops at once with an error.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
QUEUE = ROOT / "benchmarks" / "survey_queue.json"


def load_queue(path: Path = QUEUE) -> list[dict[str, Any]]:
    """The entries of ``path``; names and ``--out`` paths must be unique (entries may share a
    ``--work`` folder: ``--only`` adds rows on the same search and episodes)."""
    entries = json.loads(path.read_text())
    for key in ("name", "--out"):
        seen = [e["name"] if key == "name" else option(e, key) for e in entries]
        if len(seen) != len(set(seen)):
            raise ValueError(f"{path}: two entries share a {key}: {sorted(seen)}")
    return entries


def option(entry: dict[str, Any], flag: str) -> str | None:
    """The value after ``flag`` in the entry's arguments (None when absent)."""
    args = entry["args"]
    return args[args.index(flag) + 1] if flag in args else None


def expected_results(entry: dict[str, Any]) -> int:
    """How many (target, shot) results the entry's ``--out`` holds when it is done."""
    args = entry["args"]

    def values(flag: str) -> list[str]:
        if flag not in args:
            return []
        rest = args[args.index(flag) + 1 :]
        return rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]

    shots = values("--shots") or ["1", "5"]  # survey.py's default
    return len(shots) * max(1, len(values("--shift-levels")))


def status(entry: dict[str, Any], root: Path = ROOT) -> str:
    """``done``, ``partial (i/n)`` (its JSON holds some results), ``started`` (its work folder
    holds resumable state, no result yet) or ``pending``."""
    out = root / str(option(entry, "--out"))
    n = expected_results(entry)
    have = len(json.loads(out.read_text()).get("results", [])) if out.is_file() else 0
    if have:
        return "done" if have >= n else f"partial ({have}/{n})"
    work = root / str(option(entry, "--work"))
    return "started" if work.is_dir() and any(work.iterdir()) else "pending"


def run(entry: dict[str, Any], root: Path = ROOT) -> int:
    """The entry's script in a child process (cwd ``root``); its exit status."""
    print(f"== {entry['name']}: {entry['what']}", flush=True)
    return subprocess.call([sys.executable, entry["script"], *entry["args"]], cwd=root)


def run_all(chosen: list[dict[str, Any]], *, everything: bool) -> int:
    """Each entry of ``chosen`` in turn (with ``everything``, those done are skipped); the first
    non-zero exit status stops the queue."""
    for e in chosen:
        if status(e) == "done" and everything:
            continue
        code = run(e)
        if code:
            print(f"{e['name']} stopped with exit status {code}; the queue stops here", flush=True)
            return code
    return 0


def hold(queue: Path) -> IO[bytes]:
    """An exclusive lock on ``queue`` (the file itself, nothing written), held while the returned
    file stays open; a :class:`RuntimeError` when another ``--run`` holds it."""
    handle = queue.open("rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"another `survey_queue.py --run` is running on {queue} (it holds its lock); "
            "wait for it to end, or stop it (`pgrep -af survey_queue`) before starting again"
        ) from None
    return handle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run", nargs="?", const="*", metavar="NAME", help="run NAME, or every unfinished entry"
    )
    p.add_argument("--queue", type=Path, default=QUEUE)
    args = p.parse_args(argv)
    entries = load_queue(args.queue)
    if args.run is None:
        for e in entries:
            issues = ", ".join(f"#{i}" for i in e["issues"])
            print(f"{e['name']:<34}{status(e):<15}{issues:<14}{e['what']}")
        return 0
    chosen = [e for e in entries if args.run in ("*", e["name"])]
    if not chosen:
        names = ", ".join(e["name"] for e in entries)
        p.error(f"no entry {args.run!r} in {args.queue}; entries: {names}")
    try:
        lock = hold(args.queue)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    with lock:
        return run_all(chosen, everything=args.run == "*")


if __name__ == "__main__":
    sys.exit(main())
