"""``racefree check PATH [--repair]``: verify a JSON file, a log, a store, or a directory of them.
"""

from __future__ import annotations

import argparse
import os

from racefree.check.checker import check_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check",
        help="verify racefree files (a JSON file, a log, a store, or a directory holding them)",
        description=(
            "Find racefree's files under PATH and verify each one: JSON files parse, logs' "
            "frames and checksums, stores' segments against their manifest, lock files' "
            "owner records. Other files are skipped. Prints one line per file; exits 1 if "
            "anything is damaged. Checking only reads. --repair removes an incomplete last "
            "record of a log or a store (a crash in the middle of a write), clears a store's "
            "POISONED marker (a failed fsync) after rewriting its data durably, and salvages "
            "a damaged store or log: it copies the damaged files to damaged-<time>/ next to "
            "them, keeps every intact record, drops the damaged ones and prints each one "
            "lost; it exits 0 when the result opens, and changes nothing when it cannot."
        ),
    )
    p.add_argument("path", metavar="PATH", help="a file or directory")
    p.add_argument(
        "--repair", action="store_true",
        help="remove an incomplete last record; rewrite and un-poison a poisoned store; "
             "salvage a damaged store or log",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = check_path(args.path, repair=args.repair)
    damaged = skipped = 0
    for f in found:
        if f.kind == "skipped":
            status = "skipped"
            skipped += 1
        elif f.ok:
            status = "repaired" if f.repaired else ("note" if f.kind == "temp" else "ok")
        else:
            status = "DAMAGED"
            damaged += 1
        print(f"{status:<8} {f.kind:<7} {f.path}: {f.detail}")
        for line in f.lost:
            print(f"         {line}")
    checked = len(found) - skipped
    if not checked:
        print(f"nothing racefree found under {args.path}")
    print(f"{checked} checked, {damaged} damaged" + (f", {skipped} skipped" if skipped else ""))
    if damaged:
        return 1
    # A file named on the command line that is not racefree's: nothing was checked.
    return 1 if not checked and not os.path.isdir(args.path) else 0
