"""``racefree torture DIR``: check racefree's guarantees on this file system, with SIGKILLs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from racefree.torture.run import Options, Progress, Result
from racefree.torture.run import run as run_torture
from racefree.torture.worker import KINDS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "torture",
        help="test racefree's guarantees on a file system (processes, SIGKILLs, checks)",
        description=(
            "Probe what the file system under DIR offers (flock across processes, O_EXCL, "
            "atomic rename, fsync timing), then run PROCESSES workers mixing JSON-file "
            "updates, store operations, log appends and FileLock/LockFile critical sections "
            "in a fresh directory under DIR, SIGKILL one at random about every "
            "KILL_INTERVAL seconds and restart it, and finally check every acknowledged "
            "operation, lock exclusion and every file. Exits 1 on any violation (the run's "
            "directory is then kept for a look; on success it is removed)."
        ),
    )
    p.add_argument("directory", metavar="DIR", help="an existing directory on the file system")
    p.add_argument("--processes", type=int, default=8, help="worker processes (default 8)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument(
        "--kill-interval", type=float, default=1.0,
        help="mean seconds between SIGKILLs (default 1; 0 kills nobody)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for a repeatable schedule")
    p.add_argument(
        "--only", default=None, metavar="KINDS",
        help=f"comma-separated operation kinds to run (default all: {','.join(KINDS)})",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's directory on success")
    p.add_argument(
        "--url", default=None, metavar="POSTGRES_URL",
        help="run the store and lock kinds against PostgreSQL (open_store/open_lock) "
        "instead of files in DIR; the JSON file, log and LockFile kinds stay in DIR",
    )
    p.add_argument("--plain", action="store_true", help="plain progress lines, even with rich")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.only.split(",") if k.strip()) if args.only else KINDS
    opts = Options(
        directory=args.directory, processes=args.processes, seconds=args.seconds,
        kill_interval=args.kill_interval, seed=args.seed, kinds=kinds, keep=args.keep,
        url=args.url,
    )
    display = _display(plain=args.plain)
    try:
        result = run_torture(opts, display.show)
    finally:
        display.stop()
    display.final(result)
    return 0 if result.ok else 1


def _display(*, plain: bool) -> Any:
    if not plain and sys.stdout.isatty():
        try:
            from racefree.torture.display import RichDisplay
        except ImportError:  # rich is the optional "cli" extra
            pass
        else:
            return RichDisplay()
    return PlainDisplay()


class PlainDisplay:
    """Progress as a plain line every few seconds; the final report as aligned text."""

    def __init__(self) -> None:
        self._last = -10.0

    def show(self, p: Progress) -> None:
        if p.elapsed - self._last < 2.0 and p.elapsed < p.seconds:
            return
        self._last = p.elapsed
        acked = sum(p.acked.values())
        print(f"[{p.elapsed:5.1f}/{p.seconds:.0f}s] {acked} operations acknowledged, "
              f"{p.kills} workers killed", flush=True)

    def stop(self) -> None:
        pass

    def final(self, r: Result) -> None:
        print(f"\nfile system under test: {r.root}")
        for probe in r.probe.probes:
            mark = {True: "ok", False: "FAIL", None: "--"}[probe.ok]
            print(f"  {mark:<4} {probe.name:<32} {probe.result}")
        for w in r.probe.warnings:
            print(f"  WARNING: {w}")
        print(f"\n{'check':<44} {'acked':>8} {'in flight':>10}  result")
        for row in r.rows:
            print(f"{row.check:<44} {row.acked:>8} {row.in_flight:>10}  "
                  f"{'ok' if not row.problems else 'FAIL'}")
            for problem in row.problems[:10]:
                print(f"    - {problem}")
        verdict = "PASS" if r.ok else "FAIL"
        print(f"\n{verdict}: {r.kills} SIGKILLs in {r.seconds:.1f} s (seed {r.seed})"
              + ("" if r.ok else f"; the run's files are kept in {r.root}"))
