"""``racefree check PATH [--repair]``: verify a JSON file, a log, a store, or a directory of them.
"""

from __future__ import annotations

import argparse

from racefree.check.checker import check_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check",
        help="verify racefree files (a JSON file, a log, a store, or a directory holding them)",
        description=(
            "Find racefree's files under PATH and verify each one: JSON files parse, logs' "
            "frames and checksums, stores' segments against their manifest. Prints one line "
            "per file found; exits 1 if anything is damaged. Checking only reads. --repair "
            "removes an incomplete last record of a log or a store (a crash in the middle of "
            "a write), never a whole record, and clears a store's POISONED marker (a failed "
            "fsync) after rewriting its data durably."
        ),
    )
    p.add_argument("path", metavar="PATH", help="a file or directory")
    p.add_argument(
        "--repair", action="store_true",
        help="remove an incomplete last record; rewrite and un-poison a poisoned store"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = check_path(args.path, repair=args.repair)
    damaged = 0
    for f in found:
        if f.ok:
            status = "repaired" if f.repaired else ("note" if f.kind == "temp" else "ok")
        else:
            status = "DAMAGED"
            damaged += 1
        print(f"{status:<8} {f.kind:<7} {f.path}: {f.detail}")
    if not found:
        print(f"nothing racefree found under {args.path}")
    print(f"{len(found)} checked, {damaged} damaged")
    return 1 if damaged else 0
