"""Replaying crash states and checking each: :func:`crash_states` and :func:`explore`.

:func:`crash_states` is the whole method in one call: run ``setup``, record
``operation`` at the seam, build every crash state of the recording, replay
each into a fresh directory and call ``verify`` on it. :func:`explore` is the
second half alone, for a recording made by hand (several operations, each
acknowledged with :meth:`Recorder.mark`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from racefree import _fs
from racefree.testing._disk import read_tree, remove_tree
from racefree.testing.recorder import NoSyncFS, Recorder
from racefree.testing.recording import ModelError, Recording
from racefree.testing.states import CrashState, enumerate_states

__all__ = ["RACEFREE_CACHES", "CrashReport", "Violation", "crash_states", "explore"]

#: racefree's own files that are caches rebuilt from the others on open (the store's
#: shared header, written through ``mmap``): left out of recordings by default.
RACEFREE_CACHES: tuple[str, ...] = ("store.shm",)

#: How many calls before the crash a violation's report shows.
_SHOWN_CALLS = 12


@dataclasses.dataclass(frozen=True)
class Violation:
    """One crash state that failed its check.

    ``directory`` holds the state as it was replayed (kept for a look; None when
    it was not kept); ``after_call`` is the call after which the power failed;
    ``message`` is what the check raised; ``survived`` says what of the un-synced
    work reached the disk; ``calls`` are the recorded calls up to the crash.
    """

    directory: str | None
    after_call: str
    message: str
    survived: str
    acknowledged: tuple[str, ...]
    prefix: int
    calls: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (
            f"[{self.message}] at call {self.prefix} ({self.survived}); "
            f"acked={list(self.acknowledged)}"
        )

    def format(self) -> str:
        """A multi-line report: the state's directory, its files, and the calls before it."""
        lines = [f"power lost after: {self.after_call}", f"check: {self.message}",
                 f"survived: {self.survived}", f"acknowledged: {list(self.acknowledged)}"]
        if self.directory is not None:
            lines.append(f"state kept in: {self.directory}")
            lines += [f"    {line}" for line in _listing(self.directory)]
        shown = self.calls[-_SHOWN_CALLS:]
        lines.append(f"the last {len(shown)} of {len(self.calls)} calls before the crash:")
        first = len(self.calls) - len(shown)
        lines += [f"    #{first + i + 1} {call}" for i, call in enumerate(shown)]
        return "\n".join(lines)


def _listing(directory: str, limit: int = 20) -> list[str]:
    """``size  relative path`` for the files of a kept state (at most ``limit``)."""
    out = [
        f"{'dir' if data is None else f'{len(data)} B':>9}  {rel}"
        for rel, data in read_tree(directory).items()
    ]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


@dataclasses.dataclass
class CrashReport:
    """What an exploration did: distinct states checked, calls recorded, violations found.

    ``workdir`` holds the kept states of the violations (None once removed).
    Exploration stops at ``max_violations`` violations, so ``states`` is then a
    lower bound.
    """

    name: str
    states: int = 0
    calls: int = 0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    workdir: str | None = None

    @property
    def events(self) -> int:
        """The recorded calls (an alias of ``calls``)."""
        return self.calls

    def summary(self) -> str:
        return (
            f"{self.name}: {self.states} crash states from {self.calls} recorded calls, "
            f"{len(self.violations)} violations"
        )

    def format(self, limit: int = 3) -> str:
        """The summary and the first ``limit`` violations in full."""
        parts = [self.summary()]
        for i, v in enumerate(self.violations[:limit], 1):
            parts.append(f"--- violation {i} of {len(self.violations)}\n{v.format()}")
        return "\n".join(parts)

    def raise_on_violation(self) -> None:
        """Raise ``AssertionError`` with :meth:`format` when any state violated its check."""
        if self.violations:
            raise AssertionError(self.format())


def explore(
    name: str,
    rec: Recording,
    check: Callable[[Path, CrashState], None],
    workdir: str | os.PathLike[str],
    *,
    max_violations: int = 5,
    keep: bool = True,
    block: int = 4096,
    cap: int = 256,
    seed: int = 0,
    reorder: bool = True,
    tears: str = "pages",
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> CrashReport:
    """Replay every crash state of ``rec`` into a fresh directory and run ``check`` on it.

    ``check(directory, state)`` opens the state with the public API and raises on a
    violation (an ``AssertionError``, or whatever opening the state raised). It runs
    under :class:`NoSyncFS` (syncs are free: the replayed state's durability is not
    what is tested). A passing state's directory is removed at once; a violating one
    is kept when ``keep`` is true. See :func:`racefree.testing.states.enumerate_states`
    for the other arguments; ``progress(states_so_far)`` is called after each state.
    """
    report = CrashReport(name, calls=len(rec.events) - rec.start, workdir=os.fspath(workdir))
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    states = enumerate_states(rec, block=block, cap=cap, seed=seed, reorder=reorder,
                              tears=tears, limit=limit)
    with _fs.use(NoSyncFS()):
        for i, state in enumerate(states):
            report.states += 1
            dest = work / f"state-{i:05d}"
            state.materialize(dest)
            try:
                check(dest, state)
            except Exception as exc:  # a violation: kept with the state that showed it
                report.violations.append(Violation(
                    directory=os.fspath(dest) if keep else None,
                    after_call=state.after,
                    message=f"{type(exc).__name__}: {exc}",
                    survived=state.choice,
                    acknowledged=state.acked,
                    prefix=state.prefix,
                    calls=tuple(rec.trace[rec.start : state.prefix]),
                ))
                if not keep:
                    remove_tree(dest)
                if len(report.violations) >= max_violations:
                    break
            else:
                remove_tree(dest)
            if progress is not None:
                progress(report.states)
    return report


def crash_states(
    operation: Callable[[Path], Any],
    verify: Callable[[Path, bool], Any],
    *,
    setup: Callable[[Path], Any] | None = None,
    limit: int | None = None,
    seed: int = 0,
    block_size: int = 4096,
    directory: str | os.PathLike[str] | None = None,
    ignore: tuple[str, ...] = RACEFREE_CACHES,
    max_violations: int = 10,
    name: str | None = None,
) -> CrashReport:
    """Check ``operation`` against every state a power loss could leave.

    1. ``setup(directory)`` prepares an empty directory (not a crash point: what it
       leaves counts as durable);
    2. ``operation(directory)`` runs with every file-system call racefree makes
       recorded (code built on racefree: ``Store``, ``JsonFile``, ``atomic_write``, ...);
    3. every crash state of the recording (see :mod:`racefree.testing.states`, with
       ``block_size`` as the page size of tears, ``limit`` and ``seed`` as bounds) is
       replayed into a fresh directory and ``verify(directory, acknowledged)`` is
       called with it; ``acknowledged`` is whether ``operation`` had returned when
       the power failed. ``verify`` signals a violation by raising
       ``AssertionError`` (any other exception it lets through, such as an error
       opening the state, counts as a violation too).

    Returns a :class:`CrashReport`; exploration stops after ``max_violations``.
    Work happens under ``directory`` (default: a new temporary directory, removed
    when nothing violated; kept, with each violating state, otherwise).

    Only calls made through racefree are recorded: ``ModelError`` is raised when
    ``operation`` changed files in the directory some other way (use ``racefree
    crashcheck`` for any program). An exception from ``setup`` or ``operation`` is
    raised as it is, with nothing explored. ``operation`` runs in this process;
    threads it starts are recorded too, other processes are not. Not thread-safe
    against another recording in this process.
    """
    own = directory is None
    work = Path(tempfile.mkdtemp(prefix="racefree-crash-") if directory is None else directory)
    run = work / "run"
    run.mkdir(parents=True)
    if setup is not None:
        setup(run)
    rec = Recorder(run, ignore=ignore)
    with _fs.use(rec):
        rec.checkpoint()
        operation(run)
        rec.mark("returned")
    diff = rec.differences()
    if diff:
        raise ModelError(
            f"operation changed {diff} without going through racefree's calls; crash_states "
            "models only those (racefree crashcheck traces any program)"
        )
    label = name or getattr(operation, "__qualname__", None) or repr(operation)
    report = explore(
        label, rec, lambda root, state: verify(root, bool(state.acked)), work / "states",
        max_violations=max_violations, block=block_size, seed=seed, limit=limit,
    )
    if own and not report.violations:
        remove_tree(work)
        report.workdir = None
    return report
