"""``racefree demo``: several processes save chat conversations into one JSON file at once.

Each section of the demo runs the same scenario with one way of saving and reports
how many of the saves survived. The first is the naive read-then-write (load the
JSON, add the conversation, write it back, no lock: what the seed did, pitfalls S1
and S2); the next ones use racefree. A section is a function ``(Setup) -> Outcome``
listed in :data:`SECTIONS`; :func:`run_together` starts its worker processes and
releases them at one barrier, so that they really do race.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _fs

__all__ = ["SECTIONS", "Outcome", "Setup", "add_parser", "conversation", "run", "run_together"]

# How long one section's workers may take before they are killed (the demo is bounded).
_DEADLINE = 60.0


@dataclass(frozen=True)
class Setup:
    """What every section gets: its own empty directory, and the size of the race."""

    workdir: str
    processes: int
    saves: int  # per process
    store_url: str | None = None  # a postgresql:// URL for the store section, if given

    @property
    def total(self) -> int:
        return self.processes * self.saves


@dataclass(frozen=True)
class Outcome:
    """What one section kept. ``must_keep_all`` marks a racefree section: losing is a failure."""

    label: str  # "naive", "racefree"
    how: str  # one line on the code that ran
    kept: int
    expected: int
    note: str = ""
    must_keep_all: bool = True
    seconds: float = 0.0


Section = Callable[[Setup], Outcome]


def conversation(process: int, i: int) -> dict[str, Any]:
    """The chat conversation that process ``process`` saves as its ``i``-th save."""
    cid = f"p{process}-c{i:03d}"
    return {
        "id": cid,
        "title": f"Conversation {i} of process {process}",
        "messages": [
            {"role": "user", "content": f"Question {i}: how do I save this without losing it?"},
            {"role": "assistant", "content": "Lock, read, modify, write a temp file, rename."},
        ],
    }


# -- running workers together --------------------------------------------------------


def _child(
    worker: Callable[[str, int, int], int],
    path: str,
    index: int,
    saves: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        barrier.wait(_DEADLINE)  # every process starts saving at the same moment
        results.put((index, worker(path, index, saves), ""))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put((index, 0, f"{type(exc).__name__}: {exc}"))


def run_together(setup: Setup, worker: Callable[[str, int, int], int], path: str) -> list[int]:
    """Run ``worker(path, index, saves)`` in ``setup.processes`` processes released together.

    ``worker`` must be a module-level function (it is pickled where processes are
    spawned). Returns each worker's result, by index. A worker that fails makes
    this raise ``RuntimeError``; workers still running after the deadline are killed
    and this raises ``TimeoutError``.
    """
    # fork starts workers fastest; elsewhere (macOS, Windows) spawn is the safe default.
    if sys.platform.startswith("linux"):
        ctx: Any = multiprocessing.get_context("fork")
    else:
        ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(setup.processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child,
            args=(worker, path, k, setup.saves, barrier, results),
            daemon=True,
        )
        for k in range(setup.processes)
    ]
    out = [0] * setup.processes
    deadline = time.monotonic() + _DEADLINE
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            try:
                index, value, error = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"the demo's workers did not finish in {_DEADLINE:.0f}s"
                ) from None
            if error:
                raise RuntimeError(f"a demo worker failed: {error}")
            out[index] = value
    finally:
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        results.close()
    return out


def _count(path: str) -> tuple[int, str]:
    """How many distinct conversations the file holds (0 and a note if it does not parse)."""
    try:
        data = json.loads(_fs.read_file(path))
    except FileNotFoundError:
        return 0, "the file was never written"
    except ValueError:
        return 0, "the file itself is corrupt"
    return (len(data), "") if isinstance(data, dict) else (0, "the file is not a JSON object")


# -- the naive section -----------------------------------------------------------------


def _naive_worker(path: str, process: int, saves: int) -> int:
    corrupt_reads = 0
    for i in range(saves):
        conv = conversation(process, i)
        # The seed's code: json.load(open(path)), add one, json.dump(data, open(path, "w")).
        # It is spelled with racefree's file-system seam (the package calls the OS only
        # there), but each call is exactly what open/read/write do: no lock, no temp file.
        try:
            data = json.loads(_fs.read_file(path))
        except FileNotFoundError:
            data = {}
        except ValueError:
            # Another process has truncated the file and not yet rewritten it. The seed's
            # readAll took that for "empty" (S3), and so does this: the next write wipes all.
            corrupt_reads += 1
            data = {}
        data[conv["id"]] = conv
        fd = _fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _fs.write_all(fd, json.dumps(data).encode())
        finally:
            _fs.close(fd)
    return corrupt_reads


def naive_section(setup: Setup) -> Outcome:
    """The seed's read-then-write with no lock: updates are lost (S1), files torn (S2)."""
    path = os.path.join(setup.workdir, "naive.json")
    start = time.perf_counter()
    corrupt = sum(run_together(setup, _naive_worker, path))
    seconds = time.perf_counter() - start
    kept, problem = _count(path)
    notes = [problem] if problem else []
    if corrupt:
        notes.append(f"{corrupt} reads found a half-written file and started over from empty")
    return Outcome(
        label="naive",
        how="json.load, add the conversation, json.dump - no lock, written in place",
        kept=kept,
        expected=setup.total,
        note="; ".join(notes),
        must_keep_all=False,
        seconds=seconds,
    )


# -- the JsonFile section -----------------------------------------------------------------


def _jsonfile_worker(path: str, process: int, saves: int) -> int:
    from .._jsonfile import JsonFile

    jf = JsonFile(path, default={}, indent=None)
    for i in range(saves):
        conv = conversation(process, i)

        def add(data: dict[str, Any], conv: dict[str, Any] = conv) -> dict[str, Any]:
            data[conv["id"]] = conv
            return data

        jf.update(add)
    return 0


def jsonfile_section(setup: Setup) -> Outcome:
    """racefree's JsonFile.update: a locked read-modify-write, published atomically."""
    path = os.path.join(setup.workdir, "racefree.json")
    start = time.perf_counter()
    run_together(setup, _jsonfile_worker, path)
    seconds = time.perf_counter() - start
    kept, problem = _count(path)
    return Outcome(
        label="racefree",
        how="JsonFile.update - locked read-modify-write, atomic durable publish",
        kept=kept,
        expected=setup.total,
        note=problem,
        seconds=seconds,
    )


#: The demo's sections, in the order they run. Add a section by appending a function.
SECTIONS: list[Section] = [naive_section, jsonfile_section]

from .store import store_section  # noqa: E402  (defined there; it imports this module lazily)

SECTIONS.append(store_section)


# -- output -------------------------------------------------------------------------------


def _summary(o: Outcome) -> str:
    lost = o.expected - o.kept
    text = f"{o.label}: kept {o.kept} of {o.expected} conversation saves "
    text += f"({lost} lost)" if lost else "(none lost)"
    return f"{text}; {o.note}" if o.note else text


def _print_plain(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        print(_summary(o))
        print(f"    {o.how} ({o.seconds:.2f} s)")


def _print_rich(outcomes: list[Outcome]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    table = Table(show_lines=False)
    for name in ("code", "kept", "lost", "notes", "time"):
        table.add_column(name, justify="right" if name in ("kept", "lost", "time") else "left")
    for o in outcomes:
        lost = o.expected - o.kept
        style = "green" if lost == 0 else "red"
        table.add_row(
            f"[bold]{o.label}[/bold]\n{o.how}",
            f"[{style}]{o.kept} / {o.expected}[/{style}]",
            f"[{style}]{lost}[/{style}]",
            o.note,
            f"{o.seconds:.2f} s",
        )
    console = Console()
    console.print(table)
    for o in outcomes:
        console.print(_summary(o), markup=False, highlight=False)
    return True


def run(args: argparse.Namespace) -> int:
    """Run every section in a fresh temp directory and print what each kept."""
    if args.processes < 2 or args.saves < 1:
        raise ValueError("--processes must be at least 2 and --saves at least 1")
    print(
        f"racefree demo: {args.processes} processes each save {args.saves} chat conversations "
        "into one JSON file, all at the same time.",
        flush=True,
    )
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="racefree-demo-") as root:
        for i, section in enumerate(SECTIONS):
            workdir = os.path.join(root, str(i))
            _fs.mkdir(workdir)
            setup = Setup(workdir, args.processes, args.saves, args.url)
            outcomes.append(section(setup))
    if args.plain or not sys.stdout.isatty() or not _print_rich(outcomes):
        _print_plain(outcomes)
    failed = [o for o in outcomes if o.must_keep_all and o.kept != o.expected]
    if failed:
        print(f"racefree demo: FAILED: {', '.join(o.label for o in failed)} lost updates")
        return 1
    naive = [o for o in outcomes if not o.must_keep_all and o.kept == o.expected]
    if naive:
        print("(the naive code was lucky this time: run the demo again to see it lose saves)")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="show lost updates with naive JSON saving, and none with racefree",
        description=(
            "Several processes save chat conversations into one JSON file at once, first "
            "with the naive read-then-write code, then with racefree, and the demo prints "
            "how many saves each kept. Runs in a temp directory; takes a few seconds."
        ),
    )
    parser.add_argument("--processes", type=int, default=4, help="processes (default 4)")
    parser.add_argument(
        "--saves", type=int, default=100, help="conversations each process saves (default 100)"
    )
    parser.add_argument("--plain", action="store_true", help="plain text output, no table")
    parser.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help="run the store section on this store location instead of a temp directory, "
        "e.g. postgresql://user@host/db (a fresh named store, emptied afterwards)",
    )
    parser.set_defaults(func=run)
