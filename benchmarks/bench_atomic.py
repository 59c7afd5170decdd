"""Atomic write of 1 KiB, durable and not: racefree, the peers and the raw system-call floor.

Prints one markdown table. Every row is measured in the same run, interleaved
round by round (so a busy moment of the machine hits every row alike), and
reported as the median over the rounds of the mean time per write.

- raw floor, durable: ``open(O_CREAT|O_EXCL)`` + ``write`` + ``fsync`` + ``close`` +
  ``rename`` + ``fsync(directory)``, each an ``os`` call; not durable: the same
  without the two fsyncs.
- ``racefree.atomic_write`` with ``durable=True`` / ``durable=False``.
- ``atomicwrites.atomic_write`` (always fsyncs the file and the directory; no
  non-durable mode). ``safer`` is measured when it is installed (it is not a dev
  dependency).
- JSON: ``JsonFile.update`` (lock, read, parse, modify, serialise, atomic write)
  against the naive read + modify + write in place (no lock, no temp, no fsync).

Target: durable ``atomic_write`` at most 1.15x the durable floor.

    python benchmarks/bench_atomic.py            # full run, about a minute
    python benchmarks/bench_atomic.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import racefree

DATA = bytes(range(256)) * 4  # 1 KiB
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def raw_durable(directory: str) -> Callable[[], None]:
    path = os.path.join(directory, "f")
    tmp = os.path.join(directory, ".f.tmp")

    def op() -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, DATA)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | _O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)

    return op


def raw_fast(directory: str) -> Callable[[], None]:
    path = os.path.join(directory, "f")
    tmp = os.path.join(directory, ".f.tmp")

    def op() -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, DATA)
        os.close(fd)
        os.replace(tmp, path)

    return op


def racefree_op(durable: bool) -> Callable[[str], Callable[[], None]]:
    def make(directory: str) -> Callable[[], None]:
        path = os.path.join(directory, "f")

        def op() -> None:
            racefree.atomic_write(path, DATA, durable=durable)

        return op

    return make


def atomicwrites_op(directory: str) -> Callable[[], None] | None:
    try:
        import atomicwrites  # type: ignore[import-untyped]  # no stubs published
    except ImportError:
        return None
    path = os.path.join(directory, "f")

    def op() -> None:
        with atomicwrites.atomic_write(path, mode="wb", overwrite=True) as f:
            f.write(DATA)

    return op


def safer_op(durable: bool) -> Callable[[str], Callable[[], None] | None]:
    def make(directory: str) -> Callable[[], None] | None:
        try:
            import safer  # type: ignore[import-not-found]
        except ImportError:
            return None
        path = os.path.join(directory, "f")

        def op() -> None:
            with safer.open(path, "wb", temp_file=True) as f:
                f.write(DATA)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())

        return op

    return make


DOC = {
    "counter": 0,
    "items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(20)],
}


def naive_json(directory: str) -> Callable[[], None]:
    path = os.path.join(directory, "doc.json")
    with open(path, "w") as f:
        json.dump(DOC, f)

    def op() -> None:
        with open(path) as f:
            data = json.load(f)
        data["counter"] += 1
        with open(path, "w") as f:
            json.dump(data, f)

    return op


def jsonfile_op(durable: bool) -> Callable[[str], Callable[[], None]]:
    def make(directory: str) -> Callable[[], None]:
        jf = racefree.JsonFile(os.path.join(directory, "doc.json"), durable=durable, indent=None)
        jf.write(DOC)

        def bump(d: Any) -> Any:
            d["counter"] += 1
            return d

        def op() -> None:
            jf.update(bump)

        return op

    return make


# (label, durable, factory, baseline label)
ROWS: list[tuple[str, bool, Callable[[str], Callable[[], None] | None], str]] = [
    ("raw floor: open+write+fsync+rename+fsync(dir)", True, raw_durable, ""),
    ("racefree.atomic_write", True, racefree_op(True), "raw floor (durable)"),
    ("atomicwrites.atomic_write", True, atomicwrites_op, "raw floor (durable)"),
    ("safer.open (+fsync)", True, safer_op(True), "raw floor (durable)"),
    ("raw floor: open+write+rename", False, raw_fast, ""),
    ("racefree.atomic_write", False, racefree_op(False), "raw floor (not durable)"),
    ("safer.open", False, safer_op(False), "raw floor (not durable)"),
    ("naive JSON read+modify+write (in place, no lock)", False, naive_json, ""),
    ("racefree.JsonFile.update", True, jsonfile_op(True), "naive JSON"),
    ("racefree.JsonFile.update", False, jsonfile_op(False), "naive JSON"),
]


def _baseline_key(label: str, durable: bool) -> str:
    if label.startswith("raw floor"):
        return f"raw floor ({'durable' if durable else 'not durable'})"
    if label.startswith("naive JSON"):
        return "naive JSON"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--dir", default=None, help="directory to write in (default: a temp dir)")
    args = parser.parse_args(argv)
    n, rounds = (20, 3) if args.quick else (300, 15)

    with tempfile.TemporaryDirectory(prefix="bench-atomic-", dir=args.dir) as root:
        ops: list[tuple[int, Callable[[], None]]] = []
        for i, (_label, _durable, factory, _base) in enumerate(ROWS):
            directory = os.path.join(root, str(i))
            os.mkdir(directory)
            op = factory(directory)
            if op is not None:
                op()  # warm up (and create the file the rows rewrite)
                ops.append((i, op))
        samples: dict[int, list[float]] = {i: [] for i, _ in ops}
        for _round in range(rounds):
            for i, op in ops:
                start = time.perf_counter()
                for _ in range(n):
                    op()
                samples[i].append((time.perf_counter() - start) / n * 1e6)

    medians = {i: statistics.median(s) for i, s in samples.items()}
    bases: dict[str, float] = {}
    for i, (label, durable, _f, _b) in enumerate(ROWS):
        key = _baseline_key(label, durable)
        if key and i in medians:
            bases[key] = medians[i]

    print(
        f"Atomic write of 1 KiB (existing file rewritten), median of {rounds} rounds x {n} writes; "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
        f"{', QUICK smoke run' if args.quick else ''}"
    )
    print()
    print("| operation | durable | µs/write | ratio | ratio to |")
    print("|---|---|---:|---:|---|")
    for i, (label, durable, _f, base) in enumerate(ROWS):
        yes = "yes (fsync)" if durable else "no"
        if i not in medians:
            print(f"| {label} | {yes} | not installed | | |")
            continue
        us = medians[i]
        if base:
            print(f"| {label} | {yes} | {us:,.1f} | {us / bases[base]:.2f}x | {base} |")
        else:
            print(f"| {label} | {yes} | {us:,.1f} | 1.00x | (baseline) |")
    ratio = medians[1] / bases["raw floor (durable)"]
    verdict = "met" if ratio <= 1.15 else "NOT met"
    print()
    print(
        "Target: durable racefree.atomic_write <= 1.15x the durable floor: "
        f"{ratio:.2f}x, {verdict}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
