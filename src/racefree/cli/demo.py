"""``racefree demo``: several processes save chat conversations into one JSON file at once.

Each section of the demo (``demo_sections``) runs the same scenario with one way
of saving and reports how many of the saves survived; this module runs them in a
temp directory and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from racefree import _fs
from racefree.cli.demo_sections import (
    SECTIONS,
    Outcome,
    Section,
    Setup,
    conversation,
    run_together,
)

__all__ = [
    "SECTIONS", "Outcome", "Section", "Setup", "add_parser", "conversation", "run", "run_together",
]


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
