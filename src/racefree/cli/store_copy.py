"""``racefree store copy SRC DST``: move a document store between backends, verified.

SRC and DST are store locations as :func:`racefree.open_store` takes them: a
directory, a ``file://`` URL, or a ``postgresql://`` URL (with ``?store=NAME``).
The copy keeps every document's version: a reader that remembers versions
for ``expect_version`` sees the same numbers on the other side.

How it works, and what it guarantees:

- The source is read in one consistent snapshot; writes to it after that are
  not copied (stop the writers first to move a live store).
- The destination must hold no documents (``--force`` allows re-running an
  interrupted copy into the same destination: each document is set at its
  exact version, so a re-run is idempotent).
- Documents are written in chunks of ``--chunk``; each chunk is one atomic,
  durable write (a record or a transaction), so an interrupted copy leaves
  whole documents only. Progress goes to stderr.
- At the end the destination is read back in one snapshot and compared with the
  source snapshot: the same ids, the same versions, equal documents. Any
  difference is an error (exit code 1), naming the first id that differs.

Not copied: the versions remembered for deleted ids (so an id deleted in the
source, re-created in the destination, starts again at version 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from racefree._errors import RacefreeError

__all__ = ["add_copy_parser", "copy_store", "run_copy"]


def add_copy_parser(parser: Any) -> argparse.ArgumentParser:
    """Add the copy arguments to ``parser`` (or to a new ``copy`` subparser of a subparsers action).

    Returns the parser that has them, with ``func=run_copy`` set.
    """
    if hasattr(parser, "add_parser"):  # a subparsers action
        parser = parser.add_parser(
            "copy",
            help="copy a store to another backend (file <-> PostgreSQL), verified",
            description=__doc__.split("\n\n")[0] if __doc__ else None,
        )
    parser.add_argument("src", metavar="SRC", help="source store: directory or URL")
    parser.add_argument("dst", metavar="DST", help="destination store: directory or URL")
    parser.add_argument(
        "--chunk", type=int, default=500, metavar="N",
        help="documents per atomic write (default 500)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="allow a destination that already holds documents (re-run of a copy)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(func=run_copy)
    result: argparse.ArgumentParser = parser
    return result


def _shown(location: str) -> str:
    """The location as messages show it: a URL without its password."""
    from racefree.pg.driver import is_pg_url, parse_url

    if not is_pg_url(location):
        return location
    url = parse_url(location)
    store = url.params.get("store")
    return f"{url.display} (store {store!r})" if store else url.display


def _open_source(location: str) -> Any:
    from racefree.backends.dispatch import open_store, parse_target

    kind, where = parse_target(location)
    if kind == "file":
        if not os.path.isfile(os.path.join(where, "MANIFEST")):
            raise ValueError(f"no store at {where!r} (no MANIFEST there)")
        # Only read: a user who may only read the source store can copy it out.
        return open_store(location, readonly=True)
    return open_store(location)


class _Progress:
    """Progress on stderr: one updating line on a terminal, a few lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = -1
        self.start = time.monotonic()

    def show(self, done: int, total: int) -> None:
        if self.quiet:
            return
        pct = 100 if total == 0 else done * 100 // total
        if self.tty:
            print(f"\rcopying: {done}/{total} documents ({pct}%)", end="", file=sys.stderr)
        elif pct // 10 != self.last // 10 or done == total:
            print(f"copying: {done}/{total} documents ({pct}%)", file=sys.stderr)
        self.last = pct

    def end(self) -> None:
        if not self.quiet and self.tty:
            print(file=sys.stderr)


def copy_store(src: Any, dst: Any, *, chunk: int = 500, force: bool = False,
               progress: Any = None) -> int:
    """Copy every document of ``src`` into ``dst`` at its version, then verify; the count.

    ``progress(done, total)`` is called after each chunk. Raises ``ValueError``
    if ``dst`` holds documents (unless ``force``), :class:`RacefreeError` if
    the verification finds a difference.
    """
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, not {chunk}")
    if not force and len(dst) != 0:
        raise ValueError(
            f"the destination already holds {len(dst)} documents (use --force to copy over them)"
        )
    rows = src.items_with_versions()  # one snapshot
    for start in range(0, len(rows), chunk):
        dst.put_at_versions(rows[start:start + chunk])
        if progress is not None:
            progress(min(start + chunk, len(rows)), len(rows))
    if progress is not None and not rows:
        progress(0, 0)
    _verify(rows, dst.items_with_versions())
    return len(rows)


def _verify(want: list[tuple[str, int, Any]], got: list[tuple[str, int, Any]]) -> None:
    if len(got) != len(want):
        raise RacefreeError(
            f"verification failed: the destination holds {len(got)} documents,"
            f" the source snapshot {len(want)}"
        )
    for (k1, v1, d1), (k2, v2, d2) in zip(want, got, strict=True):
        if k1 != k2:
            raise RacefreeError(f"verification failed: id {k1!r} in the source, {k2!r} here")
        if v1 != v2:
            raise RacefreeError(
                f"verification failed: {k1!r} is version {v1} in the source, {v2} here"
            )
        # JSON text, not ==: 1 == 1.0 and key order does not count for dict equality.
        if json.dumps(d1) != json.dumps(d2):
            raise RacefreeError(f"verification failed: the document {k1!r} differs")


def run_copy(args: argparse.Namespace) -> int:
    """Run ``racefree store copy``; the exit code."""
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise ValueError("SRC and DST are the same store")
    from racefree.backends.dispatch import open_store

    src = _open_source(args.src)
    try:
        dst = open_store(args.dst)
        try:
            bar = _Progress(args.quiet)
            try:
                n = copy_store(src, dst, chunk=args.chunk, force=args.force, progress=bar.show)
            finally:
                bar.end()
        finally:
            dst.close()
    finally:
        src.close()
    print(f"copied {n} documents from {_shown(args.src)} to {_shown(args.dst)};"
          f" verified: same ids, versions and documents")
    return 0
