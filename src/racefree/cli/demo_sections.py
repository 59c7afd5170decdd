"""The sections of ``racefree demo``, and what they share: the race, the conversations.

A section is a function ``(Setup) -> Outcome`` listed in :data:`SECTIONS`;
:func:`run_together` starts its worker processes and releases them at once.
The first section is the naive code (read the JSON, add the conversation,
write it back, no lock: pitfalls S1 and S2); the next ones use racefree.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from racefree import _fs

__all__ = [
    "SECTIONS", "Outcome", "Section", "Setup", "conversation", "jsonfile_section",
    "naive_section", "run_together", "store_section",
]

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
    from racefree.files.jsonfile import JsonFile

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


# -- the store section ------------------------------------------------------------------


def _store_worker(location: str, process: int, saves: int) -> int:
    from racefree.backends.dispatch import open_store

    with open_store(location, durable=False) as store:
        for i in range(saves):
            conv = conversation(process, i)
            store.put(conv["id"], conv)
            store.update("stats", lambda d: {"saves": d["saves"] + 1}, default={"saves": 0})
    return 0


def store_section(setup: Setup) -> Outcome:
    """racefree's Store: one document per conversation, and a shared counter by update()."""
    import time

    from racefree.backends.dispatch import open_store

    location = os.path.join(setup.workdir, "store")
    if setup.store_url is not None:
        # A fresh named store for this run, so that a shared database's other
        # stores are never touched; its documents are deleted afterwards.
        sep = "&" if "?" in setup.store_url else "?"
        location = f"{setup.store_url}{sep}store=racefree-demo-{os.getpid()}-{time.time_ns()}"
    start = time.perf_counter()
    run_together(setup, _store_worker, location)
    seconds = time.perf_counter() - start
    with open_store(location, durable=False) as store:
        kept = len(store) - ("stats" in store)
        counted = store.get("stats", {}).get("saves", 0)
        store.check()
        if setup.store_url is not None:
            with store.batch() as b:
                for key in list(store):
                    b.delete(key)
    note = "" if counted == setup.total else f"the shared counter says {counted}"
    return Outcome(
        label="racefree store",
        how="Store.put per conversation + Store.update of a shared counter",
        kept=kept if counted == setup.total else min(kept, counted),
        expected=setup.total,
        note=note,
        seconds=seconds,
    )


#: The demo's sections, in the order they run. Add a section by appending a function.
SECTIONS: list[Section] = [naive_section, jsonfile_section, store_section]
