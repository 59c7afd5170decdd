"""A handle's cache of decoded documents: a ``get`` that hits it makes no system call.

Each entry holds a document as the store last parsed it (the *master*, never
handed out) and its *plan*: where its nested dicts and lists are. A hit returns
a copy built from the plan (:func:`copy_doc`): every dict and list in it is
new, its leaves (``str``, ``int``, ``float``, ``bool``, ``None``: all
immutable, and all a JSON parse makes besides dicts and lists) are shared with
the master. So a caller may change the document it got in any way without
changing the master, the store or a later ``get``. The copy costs a fraction
of a parse (about 0.45 µs for the 1 KiB benchmark document against 2 µs for
``json`` and 1.1 µs for ``marshal.loads``, whose strings are new objects).

**Coherence.** A cache belongs to one ``State`` (one view of one generation of
the segments): a new generation (a compaction here or in another process, a
reopen, a fork) starts with an empty cache. Within a State, every change of an
id's index entry drops the id's entry (``drop``, ``drop_keys``) before the
writer advances the end that this process's lock-free readers compare with the
shared header: this process's own writes (``Store.put``, ``Core.apply``) and the
writes of other processes that a read applies when it catches up
(``index.catch_up``). A reader that missed adds the document it read only
under the cache's lock and only if the index still holds the value it read it
at (``add``): a write that changed the id meanwhile has either changed the
index already (nothing is added) or will drop the entry after it (its drop
comes after its index change, under the same lock, taken even when the cache
looks empty). So an entry always holds
the document of the id's current index entry, or of one a write is replacing
right now, whose new end this process's readers have not been shown yet.

**Memory.** At most ``limit`` bytes of *estimated* memory per cache (one per
open handle), in two generations (dicts) that share it. New entries go to the
young one and a hit in the old one moves the entry back to the young one. When
one more entry would pass the limit, room is made in the old generation (its
entries dropped, newest first: ``dict.popitem``) while the young one holds less
than half of the limit; once the young one holds half, it becomes the old one
and the previous old one is dropped. So documents read at random that fit in
the limit are all kept (nothing turns over), and a hot set is kept while what
is read once passes through.
The estimate counts each dict and list (``sys.getsizeof``), 48 bytes per leaf
and per key object, the characters of the document's JSON, and 160 bytes for
the entry itself; it is within a few percent of what ``tracemalloc`` measures
for typical documents, and above it for documents of many small numbers
(``True``, ``False``, ``None`` and small ints are not new objects). A document
whose estimate is more than an eighth of the limit, or nested more than
:data:`PLAN_DEPTH` deep, is not cached. Besides, a cache marks the ids read once
in a bitmap, by their hash: an id is cached at its second read. The marks have two
generations: once the current bitmap holds ``horizon`` marks (``limit // 2048``, at
least :data:`MIN_HORIZON`: 16,384 for the default 32 MiB, half as many ids as the
cache holds documents of about 1 KiB estimated), it becomes the previous one and the
one before is dropped. So an id is remembered for at least ``horizon`` and at most
twice as many other ids read once, with no cliff: a store of up to twice
``horizon`` documents read in turn is cached from its second pass, and a read repeated only
after more other ids than the cache holds, which the cache would have dropped by
then, costs no caching (a cache fuller of documents read that seldom makes every
other read slower). Each bitmap has 32 bits per mark (64 KiB each for the default),
so at most one read in 32 of a new id finds a mark another id set (it is cached at
its first read: a copy).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["MIN_HORIZON", "PLAN_DEPTH", "DocCache", "copy_doc", "plan_of"]

#: Documents nested deeper than this are not cached (copying them recurses once per level).
PLAN_DEPTH = 32
_LEAF = 48  # an object header (str 49 + its characters, int 28, float 24)
_ENTRY = 160  # the dict slot, the entry tuple, the plan's tuples (typical)
#: The fewest ids read once that a cache remembers (see ``DocCache.horizon``).
MIN_HORIZON = 4096

Plan = tuple[tuple[Any, Any], ...]
_getsizeof = sys.getsizeof


class _TooDeep(Exception):
    pass


def _plan(obj: Any, depth: int) -> tuple[Plan, int]:
    size = _getsizeof(obj)
    if type(obj) is dict:
        size += 2 * _LEAF * len(obj)
        items: Iterable[tuple[Any, Any]] = obj.items()
    else:
        size += _LEAF * len(obj)
        items = enumerate(obj)
    subs = []
    for key, value in items:
        kind = type(value)
        if kind is dict or kind is list:
            if depth >= PLAN_DEPTH:
                raise _TooDeep
            sub, n = _plan(value, depth + 1)
            subs.append((key, sub))
            size += n
    return tuple(subs), size


def plan_of(doc: Any) -> tuple[Plan, int] | None:
    """``(plan, estimated bytes)`` of a parsed document, or None if it is not to be cached.

    The plan lists, for each dict or list, the keys (indexes) of its values that
    are dicts or lists, with their own plans.
    """
    try:
        return _plan(doc, 1)
    except (_TooDeep, RecursionError):
        return None


def copy_doc(obj: Any, plan: Plan) -> Any:
    """A copy of ``obj`` whose dicts and lists are all new (leaves shared), following ``plan``."""
    new = obj.copy()
    for key, sub in plan:
        new[key] = copy_doc(obj[key], sub) if sub else obj[key].copy()
    return new


class DocCache:
    """Decoded documents by id, for one ``State`` (see the module docstring).

    ``young.get(id)`` is the lock-free hit path: an entry is ``(master, plan,
    size)``. Every method that changes ``young`` or ``old`` takes the cache's lock;
    lock-free are that hit, a reader's look for an id in ``old`` before
    :meth:`promote` (which looks again under the lock), and :meth:`add`'s
    admission marks (a hint: a lost mark delays a caching by one read).
    """

    __slots__ = (
        "half", "horizon", "limit", "marks", "mask", "mu", "old", "seen", "seen_before",
        "used", "used_old", "young",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.half = limit // 2
        # Admission (see ``add``): a bit per id hash read once, in two generations of
        # ``horizon`` marks, bitmaps of at least 32 bits per mark, made at the first miss.
        self.horizon = max(MIN_HORIZON, limit >> 11)
        self.mask = (1 << (32 * self.horizon - 1).bit_length()) - 1
        self.seen = bytearray()
        self.seen_before = bytearray()
        self.marks = 0  # bits set in ``seen``
        self.young: dict[str, tuple[Any, Plan, int]] = {}
        self.old: dict[str, tuple[Any, Plan, int]] = {}
        self.used = 0  # estimated bytes in ``young``
        self.used_old = 0  # estimated bytes in ``old``
        self.mu = threading.Lock()

    def drop(self, key: str) -> None:
        """Forget ``key`` (its index entry changed). A no-op for a cache that is off.

        Always under the lock, even when the cache looks empty: a reader's ``add``
        checks the index and inserts under the lock, so the writer, which changed
        the index before this call, either comes first (the reader sees the new
        value and adds nothing) or waits for the insert and drops it. A writer
        that skipped the lock because both generations looked empty could end
        between the reader's check and its insert (or while ``promote`` holds an
        entry out of both): the old document would then stay cached until the
        id's next write.
        """
        if self.half:
            with self.mu:
                self._forget(key)

    def drop_keys(self, keys: Iterable[str]) -> None:
        if self.half:  # see drop
            with self.mu:
                for key in keys:
                    self._forget(key)

    def _forget(self, key: str) -> None:
        entry = self.young.pop(key, None)
        if entry is not None:
            self.used -= entry[2]
        entry = self.old.pop(key, None)
        if entry is not None:
            self.used_old -= entry[2]

    def promote(self, key: str) -> tuple[Any, Plan, int] | None:
        """The old generation's entry for ``key``, moved to the young one; None if absent."""
        with self.mu:
            entry = self.old.pop(key, None)
            if entry is not None:
                self.used_old -= entry[2]
                self._put(key, entry)
            return entry

    def add(self, key: str, doc: Any, raw: int, index: dict[str, int], value: int) -> Any:
        """Cache ``doc`` (parsed from ``raw`` bytes at index value ``value``); return a copy
        of it for the caller (the cached one is never handed out), or ``doc`` itself when
        it is not cached.

        Only an id read a second time is cached: the first read only marks its hash
        in a bitmap (two generations of ``horizon`` marks), so reads that never
        repeat pay no copy and keep no document alive (each one kept is work for the
        garbage collector, whatever the cache's size). Without the lock: a mark lost
        to another thread's at the same time only delays a caching by one read.
        """
        h = hash(key) & self.mask
        i, bit, seen = h >> 3, 1 << (h & 7), self.seen
        if not seen:  # made at the first miss; ``seen_before`` first: another thread
            # that finds ``seen`` made indexes ``seen_before`` next
            self.seen_before = bytearray((self.mask >> 3) + 1)
            seen = self.seen = bytearray((self.mask >> 3) + 1)
        if not (seen[i] & bit or self.seen_before[i] & bit):
            if self.marks >= self.horizon:
                # A new generation of marks; the one before is forgotten.
                self.seen_before, seen = seen, bytearray(len(seen))
                self.seen = seen
                self.marks = 0
            seen[i] |= bit
            self.marks += 1
            return doc
        found = plan_of(doc)
        if found is None:
            return doc
        plan, size = found
        size += raw + _ENTRY
        if size > self.half // 4:
            return doc
        try:
            out = copy_doc(doc, plan) if plan else doc.copy()
        except RecursionError:  # a deep call stack: not cached, the parsed one is the caller's
            return doc
        with self.mu:
            # Under the lock a writer drops entries with: if the index still holds
            # ``value``, a write of ``key`` now drops this entry after us.
            if index.get(key) == value:
                self._put(key, (doc, plan, size))
        return out

    def _put(self, key: str, entry: tuple[Any, Plan, int]) -> None:
        young, size = self.young, entry[2]
        old_entry = young.pop(key, None)
        if old_entry is not None:
            self.used -= old_entry[2]
        while self.used + self.used_old + size > self.limit:
            old = self.old
            if self.used < self.half and old:
                # Room from the old generation: the young one is not half full yet.
                self.used_old -= old.popitem()[1][2]
            else:
                # The young generation holds half: it becomes the old one, whose
                # entries are dropped unless a hit moves them back (an approximate
                # LRU with no bookkeeping on a hit in the young generation).
                self.old = young
                self.used_old = self.used
                self.young = young = {}
                self.used = 0
        young[key] = entry
        self.used += size
