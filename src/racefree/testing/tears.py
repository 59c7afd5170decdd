"""The tear model: what of one un-synced write may reach the disk.

A write touches ``n`` pages: the ``block``-sized pieces of the file it
covers (the first and last may be partial). After a power loss, as on a disk
with a volatile cache, any subset of them may have landed, each independently
of the others and of every other write. See :mod:`racefree.testing.states`
for which subsets are explored.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from racefree.testing.recording import Event, Inode

__all__ = ["ALL_SUBSETS_PAGES", "RANDOM_SUBSETS", "TEARS", "Variant", "apply_data", "describe",
           "write_variants"]

#: Writes of at most this many pages persist every subset of them.
ALL_SUBSETS_PAGES = 5
#: Seeded random subsets added to the fixed selection for longer writes.
RANDOM_SUBSETS = 8
#: The tear models: any subset of a write's pages, or only a prefix or a suffix.
TEARS = ("pages", "ends")

Variant = tuple[Any, ...]  # ("drop",) ("full",) ("zero",) ("pages", mask, npages)


def _pieces(offset: int, length: int, block: int) -> int:
    if length <= 0:
        return 0
    end = offset + length
    return (end + block - 1) // block - offset // block


def write_variants(
    offset: int, data: bytes, before: int, block: int, *, tears: str = "pages",
    rng: random.Random | None = None,
) -> list[Variant]:
    """What may reach the disk of one un-synced write (see the module doc).

    ``before`` is the file's size before the write (a write past it may be
    "zero-filled"). The list starts with ``("drop",)`` and ``("full",)``.
    """
    if tears not in TEARS:
        raise ValueError(f"tears must be one of {TEARS}, not {tears!r}")
    variants: list[Variant] = [("drop",), ("full",)]
    if offset + len(data) > before:
        variants.append(("zero",))
    n = _pieces(offset, len(data), block)
    full = (1 << n) - 1
    masks: set[int] = set()
    for k in range(1, n):  # prefixes and suffixes: the only tears of the "ends" model
        masks.add((1 << k) - 1)
        masks.add(full ^ ((1 << k) - 1))
    if tears == "pages" and n >= 2:
        if n <= ALL_SUBSETS_PAGES:
            masks.update(range(1, full))
        else:
            for i in range(n):
                masks.add(full ^ (1 << i))  # one page lost
                masks.add(1 << i)  # one page alone
            masks.add(1 | (1 << (n - 1)))  # first and last kept, the middle lost
            third = max(1, n // 3)
            masks.add(((1 << third) - 1) | (full ^ ((1 << (n - third)) - 1)))
            masks.add(sum(1 << i for i in range(0, n, 2)))
            masks.add(sum(1 << i for i in range(1, n, 2)))
            gen = rng or random.Random(0)
            for _ in range(RANDOM_SUBSETS):
                masks.add(gen.getrandbits(n))
    masks.discard(0)
    masks.discard(full)
    variants.extend(("pages", m, n) for m in sorted(masks))
    return variants


def describe(variant: Variant, offset: int, block: int) -> str:
    """A short name for a variant: ``drop``, ``zero``, ``head/BYTES``, ``tail/BYTES``,
    ``pages/0-2,5of8`` (the pages kept)."""
    if variant[0] != "pages":
        return str(variant[0])
    _, mask, n = variant
    kept = [i for i in range(n) if mask >> i & 1]

    def cut(i: int) -> int:  # the bytes of the write before its page i
        return (offset // block + i) * block - offset

    if kept == list(range(len(kept))):
        return f"head/{cut(len(kept))}"
    if kept == list(range(n - len(kept), n)):
        return f"tail/{cut(n - len(kept))}"
    runs: list[str] = []
    for _, group in itertools.groupby(enumerate(kept), lambda p: p[1] - p[0]):
        idx = [i for _, i in group]
        runs.append(str(idx[0]) if len(idx) == 1 else f"{idx[0]}-{idx[-1]}")
    return f"pages/{','.join(runs)}of{n}"


def apply_data(node: Inode, op: Event, variant: Variant, block: int) -> None:
    kind = variant[0]
    if kind == "drop":
        return
    data = node.data
    if op[0] == "write":
        _, _, offset, payload, _ = op
        end = offset + len(payload)
        if kind == "zero":  # the size reached the disk, the data did not
            if end > len(data):
                data.extend(b"\0" * (end - len(data)))
            return
        if kind == "full":
            pieces = [(offset, payload)]
        else:
            _, mask, n = variant
            first = offset // block
            pieces = []
            for i in range(n):
                if mask >> i & 1:
                    lo = max(offset, (first + i) * block)
                    hi = min(end, (first + i + 1) * block)
                    pieces.append((lo, payload[lo - offset : hi - offset]))
        for at, piece in pieces:
            if at > len(data):
                data.extend(b"\0" * (at - len(data)))
            data[at : at + len(piece)] = piece
    elif op[0] == "trunc":
        length = op[2]
        if length < len(data):
            del data[length:]
        else:
            data.extend(b"\0" * (length - len(data)))
    elif op[0] == "falloc":
        end = op[2] + op[3]
        if end > len(data):
            data.extend(b"\0" * (end - len(data)))
