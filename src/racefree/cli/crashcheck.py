"""``racefree crashcheck [--check CMD] -- PROGRAM [ARGS...]``: power-loss states of any program."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from racefree.testing.crashcheck import CannotRun, Options, Progress, Report
from racefree.testing.crashcheck import run as run_crashcheck

__all__ = ["add_parser", "run"]

_SHOWN = 5  # reproducers printed in full


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "crashcheck",
        help="check any program against every state a power loss could leave its files in",
        description=(
            "Run PROGRAM under strace, recording its file-system calls on the files under "
            "DIR; build every state a power loss could leave (un-synced writes dropped, "
            "reordered or torn into any subset of their pages; un-synced creates, renames and "
            "unlinks lost); run CMD on each state, with {} replaced by the state's directory "
            "(also in RACEFREE_CRASH_STATE; the program's output up to the crash is in the "
            "file named by RACEFREE_CRASH_OUTPUT). Exit status 0 of CMD means consistent. "
            "Without --check, racefree's own checker runs (JSON files must parse, racefree "
            "logs and stores must verify). Prints a table and a verdict with a reproducer for "
            "each violation; exits 1 when any state violates, 2 when the program could not "
            "be recorded."
        ),
    )
    p.add_argument("--dir", default=".", metavar="DIR",
                   help="the directory whose files are modelled (default: the current one)")
    p.add_argument("--check", default=None, metavar="CMD",
                   help="a shell command run on each state; {} is the state's directory")
    p.add_argument("--limit", type=int, default=2000, metavar="N",
                   help="check at most N states, shared among the crash points (default 2000; "
                   "0: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled states (default 0)")
    p.add_argument("--block-size", type=int, default=4096, metavar="B",
                   help="the page size of torn writes, in bytes (default 4096)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long one check may run (default 60)")
    p.add_argument("--keep", action="store_true",
                   help="keep the working directory (the trace, the states) even on a pass")
    p.add_argument("--plain", action="store_true", help="plain progress lines, even with rich")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        print("racefree crashcheck: error: give the program to run after --", file=sys.stderr)
        return 2
    if args.block_size < 1 or args.limit < 0:
        print("racefree crashcheck: error: --block-size must be >= 1 and --limit >= 0",
              file=sys.stderr)
        return 2
    opts = Options(program=program, directory=args.dir, check=args.check,
                   limit=args.limit or None, seed=args.seed, block_size=args.block_size,
                   keep=args.keep, check_timeout=args.timeout)
    display = _display(plain=args.plain)
    try:
        report = run_crashcheck(opts, display.show)
    except CannotRun as exc:
        display.stop()
        print(f"racefree crashcheck: {exc}", file=sys.stderr)
        return 2
    display.stop()
    print_report(report)
    return 0 if report.ok else 1


def _display(*, plain: bool) -> Any:
    if not plain and sys.stderr.isatty():
        try:
            from rich.console import Console
            from rich.progress import Progress as Bar
        except ImportError:  # rich is the optional "cli" extra
            pass
        else:
            return _RichDisplay(Bar(console=Console(stderr=True), transient=True))
    return _PlainDisplay()


class _PlainDisplay:
    """Progress as a line on stderr every couple of seconds."""

    def __init__(self) -> None:
        self._last = -10.0

    def show(self, p: Progress) -> None:
        if p.phase == "checking" and p.elapsed - self._last < 2.0:
            return
        self._last = p.elapsed
        print(f"[{p.elapsed:6.1f}s] {p.phase}: {p.states} states checked, "
              f"{p.violations} violations", file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


class _RichDisplay:
    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.bar.start()
        self.task = self.bar.add_task("recording", total=None)

    def show(self, p: Progress) -> None:
        self.bar.update(self.task, completed=p.states, total=p.limit,
                        description=f"{p.phase}: {p.states} states, {p.violations} violations")

    def stop(self) -> None:
        self.bar.stop()


def print_report(r: Report) -> None:
    """The table of crash points with violations, the reproducers and the verdict (stdout)."""
    o = r.options
    print(f"program:   {shlex.join(o.program)}")
    print(f"modelled:  {r.directory} ({r.calls} file-system calls recorded)")
    print(f"check:     {o.check or 'racefree check (JSON files, racefree logs and stores)'}")
    print(f"model:     pages of {o.block_size} B, seed {o.seed}, "
          f"limit {o.limit if o.limit is not None else 'none'}")
    for note in r.notes:
        print(f"note:      {note}")
    bad = [(call, n) for call, n in r.by_call.items() if n[1]]
    if bad:
        width = min(70, max(len(c) for c, _ in bad))
        print(f"\n{'power lost after':<{width}}  {'states':>7}  {'violate':>7}")
        for call, (states, violations) in bad:
            print(f"{call[:width]:<{width}}  {states:>7}  {violations:>7}")
    for i, f in enumerate(r.failures[:_SHOWN], 1):
        print(f"\nviolation {i} of {r.violations}: power lost after {f.after_call}")
        print(f"  survived:  {f.survived}")
        print(f"  check:     {f.message}")
        if f.output:
            print(f"  output so far: {f.output.strip()[-200:]!r}")
        if f.directory is not None:
            print(f"  state:     {f.directory}")
            if o.check is not None:
                print(f"  reproduce: RACEFREE_CRASH_STATE={shlex.quote(f.directory)} "
                      f"RACEFREE_CRASH_OUTPUT={shlex.quote(f.directory + '.out')} "
                      f"sh -c {shlex.quote(o.check.replace('{}', shlex.quote(f.directory)))}")
            else:
                print(f"  reproduce: racefree check {shlex.quote(f.directory)}")
    if r.ok:
        print(f"\nPASS: {r.states} crash states after {r.calls} calls, 0 violations "
              f"({r.elapsed:.1f} s)")
    else:
        print(f"\nFAIL: {r.violations} of {r.states} crash states violate the check; "
              f"states kept in {r.workdir}")
