"""``racefree crashcheck``: the crash states of any program, in any language.

:func:`run` records ``PROGRAM`` with ``strace -f`` (:mod:`racefree.testing.strace`),
builds every crash state of the files under ``DIR`` under the same model as
:func:`racefree.testing.crash_states` (:mod:`racefree.testing.states`), and runs
a check on each state: a shell command (``{}`` replaced by the state's
directory; exit status 0 means consistent) or, without one, racefree's own
checker (``racefree check``: JSON files parse, racefree logs and stores verify).

Each check sees, besides the state's directory (``RACEFREE_CRASH_STATE``), the
program's output up to the crash (a file named by ``RACEFREE_CRASH_OUTPUT``):
what the program had reported done, so a check can require it. The call after
which the power failed is in ``RACEFREE_CRASH_CALL``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable

from racefree.testing._disk import REAL, read_bytes, remove_tree, write_tree
from racefree.testing.recording import Recording
from racefree.testing.states import CrashState, enumerate_states
from racefree.testing.strace import StraceReader, strace_command

__all__ = ["INSTALL_HINT", "CannotRun", "Failure", "Options", "Progress", "Report", "run"]

#: What ``crashcheck`` says, in one line, where strace is missing.
INSTALL_HINT = (
    "racefree crashcheck needs strace: install it (Debian/Ubuntu: apt-get install strace; "
    "Fedora: dnf install strace; Alpine: apk add strace) and run again"
)


class CannotRun(RuntimeError):
    """crashcheck could not record or model the program (the message says why)."""


@dataclasses.dataclass
class Options:
    """What to record and how to check it (the command line's options)."""

    program: list[str]
    directory: str = "."
    check: str | None = None
    limit: int | None = 2000
    seed: int = 0
    block_size: int = 4096
    keep: bool = False
    check_timeout: float = 60.0
    max_kept: int = 20


@dataclasses.dataclass
class Progress:
    phase: str  # "recording" | "modelling" | "checking"
    states: int
    violations: int
    elapsed: float
    limit: int | None


@dataclasses.dataclass
class Failure:
    """A crash state that failed its check: where to look and how it came about."""

    directory: str | None  # kept for a look (None past ``max_kept``)
    after_call: str  # the call after which the power failed
    survived: str  # what of the un-synced work reached the disk
    output: str  # the program's output up to the crash
    message: str  # what the check printed (its last lines) and its exit status


@dataclasses.dataclass
class Report:
    options: Options
    directory: str
    calls: int = 0
    states: int = 0
    violations: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    by_call: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # [states, bad]
    notes: list[str] = dataclasses.field(default_factory=list)
    workdir: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.violations == 0


def run(opts: Options, progress: Callable[[Progress], None] | None = None) -> Report:
    """Record ``opts.program``, check every crash state of ``opts.directory``; see the module doc.

    Raises :class:`CannotRun` when strace is missing (with :data:`INSTALL_HINT`), when
    the program cannot be traced or exits non-zero, or when what it does cannot be
    modelled. Violating states are kept under the report's ``workdir`` (the first
    ``max_kept``); the whole working directory is removed when nothing violated,
    unless ``keep``.
    """
    strace = shutil.which("strace")
    if strace is None:
        raise CannotRun(INSTALL_HINT)
    directory = REAL.realpath(opts.directory)
    if not _is_dir(directory):
        raise CannotRun(f"{opts.directory} is not a directory")
    started = time.monotonic()

    def tell(phase: str, report: Report) -> None:
        if progress is not None:
            progress(Progress(phase, report.states, report.violations,
                              time.monotonic() - started, opts.limit))

    work = tempfile.mkdtemp(prefix="racefree-crashcheck-")
    report = Report(opts, directory, workdir=work)
    try:
        rec = Recording(directory)
        tell("recording", report)
        _record(strace, opts.program, rec, work, report)
        tell("modelling", report)
        _explore(rec, opts, work, report, lambda: tell("checking", report))
    except BaseException:
        if not report.failures and not opts.keep:
            remove_tree(work)
            report.workdir = None
        raise
    report.elapsed = time.monotonic() - started
    if report.ok and not opts.keep:
        remove_tree(work)
        report.workdir = None
    return report


def _record(strace: str, program: list[str], rec: Recording, work: str, report: Report) -> None:
    trace = os.path.join(work, "trace.txt")
    out, err = os.path.join(work, "program.out"), os.path.join(work, "program.err")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fout, ferr = REAL.open(out, flags, 0o644), REAL.open(err, flags, 0o644)
    try:
        proc = subprocess.run(strace_command(strace, trace, program), stdout=fout,
                              stderr=ferr, check=False)
    except OSError as exc:
        raise CannotRun(f"cannot start strace: {exc}") from exc
    finally:
        REAL.close(fout)
        REAL.close(ferr)
    if proc.returncode != 0:
        tail = _tail(err)
        raise CannotRun(f"{shlex.join(program)} exited with status {proc.returncode} under "
                        f"strace; its crash states are not checked.{tail}")
    reader = StraceReader(rec, os.getcwd())
    lines = read_bytes(trace).decode("ascii", errors="replace").splitlines()
    try:
        reader.feed(lines)
    except AssertionError as exc:  # a ModelError: the recording cannot be modelled
        raise CannotRun(f"cannot model what {program[0]} did: {exc}") from exc
    report.calls = reader.calls
    report.notes += reader.notes
    diff = rec.differences()
    if diff:
        report.notes.append(
            f"the recording does not explain the final contents of {diff} (written through "
            "mmap or by a process strace did not follow): crash states show the recorded "
            "writes only"
        )


def _tail(path: str, lines: int = 8) -> str:
    try:
        text = read_bytes(path)[-(1 << 16) :].decode(errors="replace")
    except OSError:
        return ""
    shown = text.strip().splitlines()[-lines:]
    return ("\n  " + "\n  ".join(shown)) if shown else ""


def _explore(rec: Recording, opts: Options, work: str, report: Report,
             tell: Callable[[], None]) -> None:
    states_dir = os.path.join(work, "states")
    REAL.mkdir(states_dir, 0o755)
    last = 0.0
    for i, state in enumerate(enumerate_states(rec, block=opts.block_size, seed=opts.seed,
                                               limit=opts.limit)):
        dest = os.path.join(states_dir, f"state-{i:05d}")
        write_tree(dest, state.files)
        output = "".join(state.acked)
        out_file = dest + ".out"
        write_tree(states_dir, {os.path.basename(out_file): output.encode()})
        problem = _check(opts, dest, out_file, state)
        report.states += 1
        counts = report.by_call.setdefault(state.after, [0, 0])
        counts[0] += 1
        if problem is None:
            remove_tree(dest)
            remove_tree(out_file)
        else:
            report.violations += 1
            counts[1] += 1
            kept = len(report.failures) < opts.max_kept
            if not kept:
                remove_tree(dest)
                remove_tree(out_file)
            report.failures.append(Failure(dest if kept else None, state.after,
                                           state.choice.split(": ", 1)[-1], output, problem))
        now = time.monotonic()
        if now - last > 0.2:
            last = now
            tell()
    tell()


def _check(opts: Options, dest: str, out_file: str, state: CrashState) -> str | None:
    """None when the state is consistent; else what the check said."""
    if opts.check is None:
        from racefree.check.checker import check_path

        bad = [f for f in check_path(dest) if not f.ok]
        if not bad:
            return None
        return "; ".join(f"DAMAGED {f.kind} {os.path.relpath(f.path, dest)}: {f.detail}"
                         for f in bad)
    command = opts.check.replace("{}", shlex.quote(dest))
    env = {**os.environ, "RACEFREE_CRASH_STATE": dest, "RACEFREE_CRASH_OUTPUT": out_file,
           "RACEFREE_CRASH_CALL": state.after}
    try:
        done = subprocess.run(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=opts.check_timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"the check did not finish in {opts.check_timeout} s"
    if done.returncode == 0:
        return None
    text = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
    return f"exit status {done.returncode}" + (": " + " | ".join(text[-3:]) if text else "")


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(REAL.stat(path).st_mode)
    except OSError:
        return False
