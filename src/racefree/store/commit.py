"""Group commit: one fdatasync shared by the durable writes of every process.

A durable writer appends and publishes its record under the write lock,
releases the lock, and only then waits for durability (``sync``). One process
at a time (the sync lock: ``sync_mu`` for this process's threads, an flock on
``sync.lock`` for processes) reads the published end, fdatasyncs everything
before it and records it as the synced end in the shared header; a writer
whose record is already covered returns without a system call. A failed
fdatasync is never retried: the store is poisoned for every process (W7).

**Gathering.** A sync covers the records published before it starts. Without
more, writers that loop fall into two groups that take turns: while one group's
fdatasync runs, the other group publishes and queues; when the fdatasync ends,
a queued writer starts the next one at once, before the writers just released
have written again, so each fdatasync covers about half of the writers. So
each durable handle claims a *slot* in the header: an open-file-description
write lock on one byte of ``store.shm`` (released by the kernel when the handle
closes or its process dies) and a word where it records the end of its last
published record. A sync records which slots were active around it (published
since the previous synced end); the next leader, before it reads the end to
cover, waits until every one of those other slots has published a record the
synced end does not cover yet, or until a budget runs out (this handle's
measured fdatasync time: the wait never costs more than the next sync would).
A writer that stopped writing is waited for at most once. The wait only
decides *when* the fdatasync starts; what it covers is still read afterwards,
and only what it covered is ever recorded as synced.

The leader gathers *without* the sync lock, and waiters wait for a sync
holding the lock *shared*: the writers a gather waits for are mostly those the
last sync covered, and they learn so under the lock. Were the leader to gather
holding it, they would stay blocked until its budget ran out; were they to wait
exclusively, they would get the lock one after another, each woken only when
the one before let go. A leader that gathered takes the lock again, finds its
record covered if another leader synced meanwhile, and syncs otherwise.

A handle without a slot (a read-only or ``durable=False`` handle, more than
:data:`SLOTS` durable handles, a system without open-file-description locks)
waits for nobody and is waited for by nobody.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import Any, Protocol

from racefree import _fs
from racefree._errors import DurabilityError
from racefree.store.files import (
    SLOTS,
    W_END,
    W_POISON,
    W_RECENT,
    W_SLOT0,
    W_SLOTS,
    W_SYNCED,
    fdatasync,
    seg_name,
)
from racefree.store.index import State
from racefree.store.locks import StoreLocks
from racefree.store.owned import open_file

__all__ = ["claim_slot", "sync"]

#: The longest a leader waits for the writers of the last group (seconds).
GATHER_MAX = 0.001
#: The header bytes whose record locks are the slots (byte 0 is the liveness lock).
_SLOT_BYTE0 = 1
_perf = time.perf_counter
_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB


class Core(Protocol):
    """What group commit needs of a store handle (``store.core.Core``)."""

    dir: str
    state: State
    words: Any
    locks: StoreLocks
    poisoned: bool
    slot: int
    sync_cost: float

    def poison(self) -> None: ...
    def seg_path(self, seg: int) -> str: ...


def claim_slot(fd: int) -> int:
    """A free slot of the header open at ``fd`` (held until ``fd`` is closed), or -1."""
    if not _fs.HAS_OFD_LOCKS:
        return -1
    for slot in range(SLOTS):
        try:
            _fs.ofd_setlk(fd, fcntl.F_WRLCK, _SLOT_BYTE0 + slot, 1)
        except BlockingIOError:
            continue  # another live handle holds it
        except OSError:
            return -1
        return slot
    return -1


def _slots(bits: int) -> list[int]:
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


def _others_recent(core: Core, w: Any) -> int:
    """The other slots that were active around the last sync (0: the single-writer case)."""
    recent: int = w[W_RECENT]
    if core.slot >= 0:
        recent &= ~(1 << core.slot)
    return recent


def _gather(core: Core, w: Any, synced: int) -> None:
    """Wait (briefly) until every other slot active around the last sync has published again."""
    recent = _others_recent(core, w)
    if not recent:
        return  # nobody else wrote around the last sync: the common single-writer case
    others = _slots(recent)
    budget = min(core.sync_cost, GATHER_MAX)
    if not others or budget <= 0:
        return
    deadline = _perf() + budget
    while True:
        # A loop that yields the CPU: the writers it waits for were just released
        # from the last fdatasync and are runnable (on 2 cores, maybe on this one).
        others = [i for i in others if w[W_SLOT0 + i] <= synced]
        if not others or _perf() >= deadline:
            return
        os.sched_yield()


def _active(w: Any, since: int) -> int:
    """The slots that published a record after position ``since``."""
    bits = 0
    for i in _slots(w[W_SLOTS]):
        if w[W_SLOT0 + i] > since:
            bits |= 1 << i
    return bits


def _sync_segment(core: Core, fd: int, seg: int) -> None:
    if fd >= 0:
        try:
            _fs.fdatasync(fd)
        except OSError as exc:  # W7: reported (the path built only now), never retried
            raise DurabilityError(core.seg_path(seg), exc.errno or errno.EIO) from exc
        return
    # Not in this handle's state (closed meanwhile, or rolled by another
    # process after our write): sync the file by name.
    try:
        fd = open_file(core.dir, seg_name(seg), os.O_RDWR, create=False)[0]
    except FileNotFoundError:
        return  # an orphan number: never named by the manifest, nothing to sync
    try:
        fdatasync(fd, core.seg_path(seg))
    finally:
        _fs.close(fd)


def sync(core: Core, endw: int, poisoned_message: str) -> None:
    """Return once every byte before ``endw`` is fdatasynced (the caller holds ``sync_mu``
    and has checked that the handle is open)."""
    fd = core.locks.sync_lock_fd()
    w = core.words
    gathered = False
    while True:
        if not _lead_or_wait(core, fd, endw):
            return  # another process's sync covered it while we waited
        try:
            synced = w[W_SYNCED]
            if synced >= endw:
                return
            if core.poisoned or w[W_POISON]:
                raise DurabilityError(core.dir, errno.EIO, poisoned_message)
            if gathered or not _others_recent(core, w):
                _sync_now(core, endw, synced)
                return
            gathered = True
        finally:
            _fs.flock(fd, fcntl.LOCK_UN)
        # Gather without the sync lock: the writers it waits for were covered
        # by the last sync and may be waiting for this lock only to learn so;
        # holding it, the leader would wait out its whole budget for them.
        _gather(core, w, synced)


def _lead_or_wait(core: Core, fd: int, endw: int) -> bool:
    """Hold the sync lock exclusively (True), or learn that a sync covered ``endw`` (False).

    The processes' half of the sync lock (``sync_mu``: this process's threads').
    While another process leads a sync, wait for it holding the lock *shared*:
    when the leader lets go, every waiter gets a shared hold at once and those
    it covered return together. Waiting exclusively, they would get the lock one
    at a time, each woken only when the one before let go, while the writers
    they hold up could be writing their next records.
    """
    try:
        _fs.flock(fd, _LOCK_EX_NB)
        return True
    except BlockingIOError:
        pass
    _fs.flock(fd, fcntl.LOCK_SH)
    try:
        # Under the lock, shared or not, nobody writes the synced end.
        covered: bool = core.words[W_SYNCED] >= endw
    finally:
        _fs.flock(fd, fcntl.LOCK_UN)
    if covered:
        return False
    _fs.flock(fd, fcntl.LOCK_EX)  # not covered: lead the next sync (or be covered by it)
    return True


def _sync_now(core: Core, endw: int, synced: int) -> None:
    """Under the sync lock: fdatasync what is published, record it as synced."""
    w = core.words
    # Everything published before this load was written before it: one
    # fdatasync covers every writer that published so far (group commit).
    target = max(w[W_END], endw)
    st = core.state
    start = _perf()
    # W_SYNCED < endw: no compaction ran since our write (it would have
    # set W_SYNCED past it), so these segments all still exist.
    for seg in range(synced >> 40, (target >> 40) + 1):
        fd = st.fds.get(seg, -1)
        if fd < 0 and seg != target >> 40 and seg not in st.segs:
            continue  # a number no segment of this generation has
        try:
            _sync_segment(core, fd, seg)
        except DurabilityError:
            # W7: never retried; no process writes to this store again.
            core.poison()
            raise
    cost = _perf() - start
    core.sync_cost = cost if not core.sync_cost else 0.8 * core.sync_cost + 0.2 * cost
    if target > w[W_SYNCED]:
        w[W_SYNCED] = target
    w[W_RECENT] = _active(w, synced)
