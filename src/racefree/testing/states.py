"""Crash states: every tree a power loss could leave, built from a recording.

For every prefix of the recorded events (after :meth:`Recording.checkpoint`),
:func:`enumerate_states` yields the trees that could be found after reboot had
the power failed right there, under a deliberately pessimistic model:

* what an ``fsync``/``fdatasync`` of a file covered is on disk. Every other data
  operation on that file (write, truncate, fallocate) is independently dropped
  or applied, so un-synced writes land in any order with each other;
* an un-synced write may also be **torn**: it spans ``pages`` (the ``block``-sized
  pieces of the file it touches) and, as a disk with a volatile cache does,
  may persist **any subset of its pages**: a later page before an earlier one,
  the first and last pages without the middle. Or it is "zero-filled": the
  file's size grew but its data never landed (the NUL-filled file of pitfall W1).
  ``tears="ends"`` keeps the older, milder model: only a prefix or a suffix of
  the pages;
* what an ``fsync`` of a directory covered is on disk; every other name
  operation (create, rename, link, unlink, mkdir) is independently lost or
  kept. A rename is one atomic step (as every journaling file system makes
  it); a cross-directory rename is committed by a sync of either directory.
  An ``fsync`` of a file does not make its name durable (POSIX does not promise
  it, whatever ext4 happens to do). ``sync(2)`` makes everything durable.

**Which subsets.** A write of at most :data:`ALL_SUBSETS_PAGES` pages gets every
subset. A longer one gets a fixed, documented selection: every prefix and every
suffix, every single page lost, every single page kept alone, the first and the
last page kept with the middle lost, the first and last thirds kept with the
middle third lost, every other page (both phases), and
:data:`RANDOM_SUBSETS` subsets drawn with a seeded generator.

**Bounds.** When the choices at one prefix multiply past ``cap``, they are
sampled with a seeded generator, always including "nothing un-synced survived",
"everything survived" and "the last choice of each". ``limit`` bounds the total:
each prefix gets an equal share (water-filled: prefixes with fewer choices
give theirs to the others); below one state per prefix, evenly spaced prefixes
(the last always among them) get one state each, "nothing un-synced
survived". The same ``seed`` gives the same states. Identical trees (with the
same acknowledged operations) are yielded once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from collections.abc import Iterator
from typing import Any

from racefree.testing._disk import write_tree
from racefree.testing.recording import Event, Inode, Recording, build_tree
from racefree.testing.tears import (
    ALL_SUBSETS_PAGES,
    RANDOM_SUBSETS,
    Variant,
    apply_data,
    describe,
    write_variants,
)

__all__ = ["ALL_SUBSETS_PAGES", "RANDOM_SUBSETS", "CrashState", "enumerate_states"]



@dataclasses.dataclass(frozen=True)
class CrashState:
    """One state a power loss could leave: the files after reboot."""

    prefix: int  # how many recorded events had happened (index into Recording.events)
    acked: tuple[str, ...]  # labels of the operations acknowledged by then
    files: dict[str, bytes | None]  # relative path -> bytes (None for a directory)
    choice: str  # what survived, for reports ("after <call>: <what was lost or torn>")
    after: str  # the call after which the power failed

    def materialize(self, dest: str | Any) -> Any:
        """Write this state into the empty or missing directory ``dest``; returns ``dest``."""
        write_tree(dest, self.files)
        return dest


# --------------------------------------------------------------------------- the simulation
class _Sim:
    """Durable state plus pending (un-synced) operations, advanced one event at a time."""

    def __init__(self, rec: Recording, block: int) -> None:
        self.root = rec.root
        self.block = block
        self.durable: dict[int, Inode] = {i: n.copy() for i, n in rec.initial.items()}
        self.pending_data: dict[int, list[tuple[int, Event]]] = {}  # ino -> (index, event)
        self.pending_names: list[Event] = []
        # The bytes of durable inodes, valid while the inode object is unchanged.
        self.cache: dict[int, tuple[Inode, bytes]] = {}

    def apply(self, ev: Event, index: int) -> None:
        kind = ev[0]
        if kind == "new":
            self.durable[ev[1]] = Inode(ev[2])
        elif kind in ("write", "trunc", "falloc"):
            self.pending_data.setdefault(ev[1], []).append((index, ev))
        elif kind == "name":
            self.pending_names.append(ev)
        elif kind == "syncall":
            self.commit_all()
        elif kind == "sync":
            ino = ev[1]
            node = self.durable[ino]
            if node.kind == "dir":
                keep = []
                for nev in self.pending_names:
                    if ino in nev[2]:
                        _apply_names(self.durable, nev)
                    else:
                        keep.append(nev)
                self.pending_names = keep
            else:
                for _, dev in self.pending_data.pop(ino, []):
                    apply_data(node, dev, ("full",), self.block)
                self.cache.pop(ino, None)

    def commit_all(self) -> None:
        for ino, evs in self.pending_data.items():
            for _, dev in evs:
                apply_data(self.durable[ino], dev, ("full",), self.block)
            self.cache.pop(ino, None)
        self.pending_data = {}
        for nev in self.pending_names:
            _apply_names(self.durable, nev)
        self.pending_names = []


class _CopyOnWrite:
    """``own(ino)``: the inode in ``nodes``, copied on first use so the durable one stays."""

    def __init__(self, nodes: dict[int, Inode]) -> None:
        self.nodes = nodes
        self.copied: set[int] = set()

    def __call__(self, ino: int) -> Inode:
        if ino not in self.copied:
            self.nodes[ino] = self.nodes[ino].copy()
            self.copied.add(ino)
        return self.nodes[ino]


def _apply_names(nodes: dict[int, Inode], ev: Event) -> None:
    for dir_ino, name, target in ev[1]:
        entries = nodes[dir_ino].entries
        if target is None:
            entries.pop(name, None)
        else:
            entries[name] = target


# --------------------------------------------------------------------------- enumeration
Item = tuple[str, Any, list[Variant]]


class _Choices:
    """The independent choices at one prefix, with each write's variants computed once."""

    def __init__(self, block: int, tears: str, seed: int, reorder: bool) -> None:
        self.block, self.tears, self.seed, self.reorder = block, tears, seed, reorder
        self._variants: dict[int, list[Variant]] = {}

    def variants(self, index: int, ev: Event) -> list[Variant]:
        if ev[0] != "write":
            return [("drop",), ("full",)]
        hit = self._variants.get(index)
        if hit is None:
            # One generator per write, seeded by the seed and the write's position, so
            # that a write's tears are the same at every prefix and whatever the limit.
            rng = random.Random(self.seed * 1_000_003 + index)
            hit = write_variants(ev[2], ev[3], ev[4], self.block, tears=self.tears, rng=rng)
            self._variants[index] = hit
        return hit

    def items(self, sim: _Sim) -> list[Item]:
        items: list[Item] = []
        for ino, evs in sorted(sim.pending_data.items()):
            if self.reorder:
                for index, ev in evs:
                    items.append(("data", (ino, ev), self.variants(index, ev)))
            else:
                # How many of the file's pending operations survived, in order; the last
                # one that survived may be torn or zero-filled.
                seq: list[Variant] = [("upto", 0, None)]
                for i, (index, ev) in enumerate(evs):
                    for v in self.variants(index, ev)[1:]:
                        seq.append(("upto", i + 1, v))
                items.append(("ordered", (ino, [ev for _, ev in evs]), seq))
        for nev in sim.pending_names:
            items.append(("name", nev, [("lost",), ("kept",)]))
        return items


def _count(items: list[Item], cap: int) -> int:
    total = 1
    for _, _, variants in items:
        total *= len(variants)
        if total > cap:
            return cap
    return total


def _combos(items: list[Item], quota: int, rng: random.Random) -> Iterator[tuple[int, ...]]:
    sizes = [len(v) for _, _, v in items]
    total = 1
    for s in sizes:
        total *= s
    if total <= quota:
        yield from itertools.product(*(range(s) for s in sizes))
        return
    # Always: nothing un-synced survived; the last variant of each; everything survived.
    picked: list[tuple[int, ...]] = [tuple(0 for _ in sizes), tuple(s - 1 for s in sizes)]
    picked.append(tuple(1 if kind != "ordered" else len(v) - 1 for kind, _, v in items))
    chosen: set[tuple[int, ...]] = set()
    tries = 0
    for combo in picked:
        if combo not in chosen and len(chosen) < quota:
            chosen.add(combo)
            yield combo
    while len(chosen) < quota and tries < quota * 20:
        tries += 1
        combo = tuple(rng.randrange(s) for s in sizes)
        if combo not in chosen:
            chosen.add(combo)
            yield combo


def _quotas(counts: list[int], limit: int | None) -> list[int]:
    """How many states each prefix gets (see "Bounds" in the module doc)."""
    if limit is None or sum(counts) <= limit:
        return counts
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    n = len(counts)
    if limit < n:
        quotas = [0] * n
        for k in range(limit):  # evenly spaced; k = limit - 1 is the last prefix
            quotas[((k + 1) * n) // limit - 1] = 1
        return quotas
    lo, hi = 1, max(counts)
    while lo < hi:  # the largest equal share that fits
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in counts) <= limit:
            lo = mid
        else:
            hi = mid - 1
    quotas = [min(c, lo) for c in counts]
    spare = limit - sum(quotas)
    for i, c in enumerate(counts):
        if spare and c > quotas[i]:
            quotas[i] += 1
            spare -= 1
    return quotas


def _points(rec: Recording) -> list[int]:
    """The prefixes that are crash points: a fresh inode has no state of its own (its name
    comes with the next event)."""
    return [
        p for p in range(rec.start, len(rec.events) + 1)
        if p == rec.start or rec.events[p - 1][0] != "new"
    ]


def _advance(rec: Recording, block: int) -> Iterator[tuple[int, _Sim]]:
    sim = _Sim(rec, block)
    for i, ev in enumerate(rec.events[: rec.start]):
        sim.apply(ev, i)
    sim.commit_all()
    for prefix in range(rec.start, len(rec.events) + 1):
        if prefix > rec.start:
            sim.apply(rec.events[prefix - 1], prefix - 1)
            if rec.events[prefix - 1][0] == "new":
                continue
        yield prefix, sim


def enumerate_states(
    rec: Recording,
    *,
    block: int = 4096,
    cap: int = 256,
    seed: int = 0,
    reorder: bool = True,
    tears: str = "pages",
    limit: int | None = None,
) -> Iterator[CrashState]:
    """Every distinct crash state of ``rec`` after its checkpoint (see the module doc).

    ``block`` is the page size of tears; ``cap`` bounds the states of one prefix;
    ``limit`` bounds the total; ``reorder=False`` keeps each file's un-synced data
    operations in order (a prefix of them survives, the last one possibly torn: a
    milder, ext4 ``data=ordered``-like model).
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, not {block}")
    choices = _Choices(block, tears, seed, reorder)
    points = _points(rec)
    quotas = dict(zip(points, [cap] * len(points), strict=True))
    if limit is not None:
        counts = [_count(choices.items(sim), cap) for _, sim in _advance(rec, block)]
        quotas = dict(zip(points, _quotas(counts, limit), strict=True))
    seen: set[bytes] = set()
    for prefix, sim in _advance(rec, block):
        quota = quotas[prefix]
        if quota == 0:
            continue
        acked = tuple(label for at, label in rec.marks if at <= prefix)
        after = rec.trace[prefix - 1] if prefix else "start"
        items = choices.items(sim)
        rng = random.Random(f"{seed}:{prefix}")
        for combo in _combos(items, quota, rng):
            files, what = _state(sim, items, combo, block)
            # The same tree is checked again once more operations were acknowledged:
            # "old value" is fine before an acknowledgement and a violation after it.
            digest = _digest(files) + repr(acked).encode()
            if digest in seen:
                continue
            seen.add(digest)
            yield CrashState(prefix, acked, files, f"after {after}: {what}", after)


def _state(
    sim: _Sim, items: list[Item], combo: tuple[int, ...], block: int
) -> tuple[dict[str, bytes | None], str]:
    # Copy on write: only the inodes a choice changes are copied.
    nodes = dict(sim.durable)
    own = _CopyOnWrite(nodes)
    desc: list[str] = []
    for (kind, what, variants), idx in zip(items, combo, strict=True):
        v = variants[idx]
        if kind == "data":
            ino, ev = what
            if v[0] != "drop":
                apply_data(own(ino), ev, v, block)
            if v[0] != "full":
                offset = ev[2] if ev[0] == "write" else 0
                desc.append(f"{ev[0]}@ino{ino}:{describe(v, offset, block)}")
        elif kind == "ordered":
            ino, evs = what
            _, upto, last = v
            for j, ev in enumerate(evs[:upto]):
                apply_data(own(ino), ev, last if j == upto - 1 else ("full",), block)
            if upto < len(evs) or (last is not None and last[0] != "full"):
                offset = evs[upto - 1][2] if upto and evs[upto - 1][0] == "write" else 0
                tail = describe(last, offset, block) if last is not None else "-"
                desc.append(f"ino{ino}:{upto}/{len(evs)}:{tail}")
        elif v[0] == "kept":
            for dir_ino, _name, _target in what[1]:
                own(dir_ino)
            _apply_names(nodes, what)
        else:
            desc.append(f"lost {what[3]}")
    files = build_tree(nodes, sim.root, sim.cache)
    return files, ", ".join(desc) or "everything survived"


def _digest(files: dict[str, bytes | None]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for rel, data in sorted(files.items()):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(b"D" if data is None else b"F%d:" % len(data) + data)
    return h.digest()
