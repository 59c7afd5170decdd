"""The sidecar ``.app.log.lock``: the log's lock and its control block, opened under the trust rule.

Every process that logs to ``app.log`` opens this small file, which is never
deleted (pitfall L1). Its ``flock`` is the *rotation lock*: writers append
without it once they hold a slot (:meth:`Sidecar.enter_free`), or hold it shared
for the length of one ``write(2)``, so any number of them append at once; a
rotation, a record larger than :data:`SHARED_MAX`, a newcomer's open and a
torn-tail repair hold it exclusively, after fencing the slots out
(:meth:`Sidecar.fence`). Its first 64 bytes are the *control block*, read with
``pread`` and written with ``pwrite``, and mapped (with the slots, for the
writers' hot path) only where nobody but its owner may write it: a mapping of a
file that someone truncates kills every process that touches it with SIGBUS
(pitfall T6), so where others may write it a short read is a typed error
instead:

====== ===== ==========================================================
offset type  field
====== ===== ==========================================================
0      u64   generation: bumped by each rotation (and by ``mode="w"``)
8      u64   write in progress: the size the file will have after the
             record an exclusive writer is writing, all ones after a
             shared writer's write failed part-way, 0 otherwise
16     u64   writers: bumped by each process that opens the log to write
             (under the exclusive hold), see :meth:`Sidecar.alone`; top bit
             (:data:`UNCOUNTED`): a writer could not be counted
24     u64   fence: bumped by an exclusive holder while writers append
             without the lock (:meth:`Sidecar.fence`)
32     f64   next timed rollover (epoch seconds), 0.0 until first use
40     u64   the schedule the rollover time was computed for (``when``,
             ``interval``, ``utc``, ``atTime``: a crc32 plus one), 0 if unknown
64     u64   slot 0: 1 while the writer holding the slot appends without
             the lock (meaningless unless its lock is held); then one
             slot every 64 bytes (a cache line each), :data:`SLOTS` in all
====== ===== ==========================================================

The file is :data:`FILE_SIZE` bytes (one page). Byte 63 (:data:`WRITER_BYTE`)
carries an open-file-description read lock held by every writer; the first byte
of each slot, a write lock held by the writer that appends without the lock
using it. These are lock ranges, not data.

The file is racefree's own, so it is opened with ``O_NOFOLLOW | O_NONBLOCK``,
checked with ``fstat`` to be a regular file of a trusted owner and 0, 64 (an
earlier layout, extended) or :data:`FILE_SIZE`
bytes long before anything is read from it, and created with ``O_EXCL``
(:func:`racefree._trust.open_own`). Its mode gives read and write access only
to the classes (owner, group, others) that may write the log itself: ``flock``
needs no more than read access, so a sidecar others can read would let any of
them hold the lock.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import time
from collections.abc import Callable

from racefree import _fs, _trust
from racefree._errors import LockTimeout, UnsafePathError
from racefree.logging import barrier as _barrier

__all__ = ["CONTROL_SIZE", "FILE_SIZE", "SHARED_MAX", "SLOTS", "UNKNOWN_END", "Sidecar",
           "sidecar_mode"]

#: The control block's header (the words every writer reads).
CONTROL_SIZE = 64
#: The whole file: the header, then the slots of the writers that append without the lock.
FILE_SIZE = 4096
SLOT0 = 64
SLOT_STRIDE = 64
SLOTS = (FILE_SIZE - SLOT0) // SLOT_STRIDE
#: Records up to this size are appended under the shared hold; larger ones
#: under the exclusive hold, with the write-in-progress mark (a large write(2)
#: is the one a SIGKILL can cut between pages, see ``SharedFileHandler``).
SHARED_MAX = 4096

#: The write-in-progress value of a shared writer whose write failed part-way.
UNKNOWN_END = (1 << 64) - 1
HEAD = struct.Struct("<QQ")  # generation, write in progress
OFF_GEN = 0
OFF_DIRTY = 8
OFF_WRITERS = 16
OFF_EPOCH = 24
OFF_ROLLOVER = 32
OFF_SCHEDULE = 40
#: The index of the fence word in :attr:`Sidecar.words`.
W_EPOCH = OFF_EPOCH // 8
#: The byte of the sidecar on which every writing handler holds an
#: open-file-description read lock, for as long as its sidecar is open.
WRITER_BYTE = 63
#: Set in the writers word by a handler that could not take that lock: from
#: then on no handler of this log trusts a size it counted itself.
UNCOUNTED = 1 << 63
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_LOCK_NB = fcntl.LOCK_NB
_ZERO8 = bytes(8)
#: Slots tried (from the writer's hint on) before it keeps the lock for its records.
_SLOT_TRIES = 8
#: Seconds a wait lasts, at most, after a wait timed out (until one succeeds).
STALLED_WAIT = 0.01
#: Seconds a wait for the lock polls between ``sched_yield`` calls, before it sleeps.
YIELD_POLLS = 0.001
#: Seconds a wait for the lock polls at the shortest interval before it backs off.
FAST_POLLS = 0.005


def sidecar_mode(log_mode: int) -> int:
    """Read and write for each class (owner, group, others) that may write the log."""
    mode = 0
    for write_bit, rw in ((stat.S_IWUSR, 0o600), (stat.S_IWGRP, 0o060), (stat.S_IWOTH, 0o006)):
        if log_mode & write_bit:
            mode |= rw
    return mode or 0o600


class Sidecar:
    """One open file description of ``.NAME.lock``: its lock and its control block."""

    __slots__ = ("_map", "counted", "fd", "free_ok", "path", "slot", "stalled", "timeout", "words")

    def __init__(self, path: str, log_mode: int, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        # Set when a wait for the lock timed out; cleared when a wait succeeds.
        self.stalled = False
        mode = sidecar_mode(log_mode)
        fd, st, created = _trust.open_own(path, os.O_RDWR, mode)
        try:
            if created:
                # Not the umask's: whoever may write the log must be able to lock it.
                _fs.fchmod(fd, mode)
            if created or st.st_size in (0, CONTROL_SIZE):
                # Its creator extends it right after the O_EXCL create (and an
                # earlier layout's 64 bytes get their slots); two processes
                # extending it to the same size clear nothing.
                _fs.ftruncate(fd, FILE_SIZE)
            elif st.st_size != FILE_SIZE:
                raise UnsafePathError(
                    path, f"is {st.st_size} bytes, not a log control file ({FILE_SIZE} bytes)"
                )
            if not created and st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
                # Made by an older version (mode 0666 & ~umask): close it to
                # whoever may not write the log, so they cannot hold its lock.
                _fs.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
            # The control words, mapped, when nobody but this user (or root) may
            # write the file: then only they could cut it short under the mapping,
            # and they could kill the process anyway. Otherwise (a log its group or
            # others write) every read is a pread, so that no one can kill a logging
            # process with SIGBUS (T6). The mapping saves the hot path a system call;
            # its one store is a writer's "in a record" slot (see fence).
            self._map = None
            self.words: memoryview | None = None
            now = _fs.fstat(fd)
            if now.st_uid == os.geteuid() and not now.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                self._map = _fs.mmap(fd, FILE_SIZE, writable=True)
                self.words = memoryview(self._map).cast("Q")
            # The slot this sidecar holds to append without the lock (-1: none), and
            # whether it may (False once membarrier or the slot locks failed).
            self.slot = -1
            self.free_ok = True
            # Counted among the log's writers (see alone), mapped or not: a writer
            # nobody could see would let another believe it is alone.
            self.counted = False
            if _fs.HAS_OFD_LOCKS:
                try:
                    _fs.ofd_setlk(fd, fcntl.F_RDLCK, WRITER_BYTE, 1)
                    self.counted = True
                except OSError:
                    # A conflicting lock there (racefree never takes one), or a file
                    # system without these locks: the handler marks the log as
                    # having an uncounted writer (UNCOUNTED) when it opens it.
                    self.counted = False
        except BaseException:
            _fs.close(fd)
            raise
        self.fd = fd

    # -- the control block (pread / pwrite: a truncated file is an error, not a SIGBUS) --
    def read(self, length: int) -> bytes:
        data = _fs.pread(self.fd, length, 0)
        if len(data) != length:
            raise self.truncated()
        return data

    def truncated(self) -> UnsafePathError:
        return UnsafePathError(self.path, "log control file was truncated by someone else")

    def head(self) -> tuple[int, int]:
        """(generation, write-in-progress end)."""
        gen, dirty = HEAD.unpack(self.read(HEAD.size))
        return int(gen), int(dirty)

    def writers(self) -> int:
        """The writers word: how many times a process opened the log to write."""
        return int(_U64.unpack_from(self.read(OFF_WRITERS + 8), OFF_WRITERS)[0])

    def alone(self) -> bool:
        """Whether no other open sidecar (process or handler) is counted among the writers.

        Each writing handler holds a read lock on :data:`WRITER_BYTE` of its own
        open sidecar (an open-file-description lock: the kernel drops it when
        the sidecar is closed or its process dies); this asks whether a write
        lock there would conflict with another's. False where nothing is counted.
        """
        if not self.counted:
            return False
        return _fs.ofd_getlk(self.fd, fcntl.F_WRLCK, WRITER_BYTE, 1) == fcntl.F_UNLCK

    def rollover(self) -> float:
        value = float(_F64.unpack_from(self.read(CONTROL_SIZE), OFF_ROLLOVER)[0])
        # Anything but a finite positive time is "not set": recomputed under the lock.
        return value if value > 0 and value != float("inf") else 0.0

    def put_u64(self, offset: int, value: int) -> None:
        _fs.pwrite_all(self.fd, _U64.pack(value), offset)

    def put_rollover(self, value: float) -> None:
        _fs.pwrite_all(self.fd, _F64.pack(value), OFF_ROLLOVER)

    def schedule(self) -> int:
        """The mark of the schedule the stored rollover time belongs to (0: unknown)."""
        return int(_U64.unpack_from(self.read(CONTROL_SIZE), OFF_SCHEDULE)[0])

    def put_schedule(self, at: float, mark: int) -> None:
        """Store a rollover time and the mark of the schedule it was computed for."""
        _fs.pwrite_all(self.fd, _F64.pack(at) + _U64.pack(mark), OFF_ROLLOVER)

    # -- the lock ------------------------------------------------------------
    def lock(self, op: int, gen: int = -1) -> bool:
        """Take the lock (``LOCK_SH`` or ``LOCK_EX``), waiting at most ``timeout`` seconds.

        Raises :class:`~racefree.LockTimeout` when the lock stays held longer
        (whoever may write the log can hold it: a stopped or hostile process);
        nothing is held then. After one timeout, a wait lasts at most
        :data:`STALLED_WAIT` instead of ``timeout``, so that records do not each
        wait the full time while the lock stays held; the first wait that gets
        the lock ends that state.

        With ``gen`` >= 0, the wait also ends, returning False with nothing
        held, once the generation is no longer ``gen``: a writer that waits to
        rotate a full file need not wait any more once another process rotated
        it. True: the lock is held.
        """
        try:
            _fs.flock(self.fd, op | _LOCK_NB)
        except BlockingIOError:
            if not self._wait(op, gen):
                return False
        if op == fcntl.LOCK_EX:
            try:
                self.fence()
            except BaseException:
                # Not left held after a LockTimeout, an interrupt during the wait
                # or a truncated sidecar.
                self.unlock()
                raise
        return True

    def generation(self) -> int:
        """The current generation (a mapped load, or a ``pread``)."""
        words = self.words
        if words is not None:
            return int(words[0])
        return self.head()[0]

    def _wait(self, op: int, gen: int = -1) -> bool:
        """Poll for the lock (:meth:`lock`): True once held, False once ``gen`` moved on."""

        def ready() -> bool | None:
            if gen >= 0 and self.generation() != gen:
                return False
            try:
                _fs.flock(self.fd, op | _LOCK_NB)
            except BlockingIOError:
                return None
            return True

        return self._poll(ready)

    def _poll(self, ready: Callable[[], bool | None]) -> bool:
        """Call ``ready`` until it answers True or False; LockTimeout after ``timeout``.

        The one wait of the sidecar: for the lock, and for writers to leave a
        record (:meth:`fence`). Polled rather than a blocking flock: a blocking
        flock cannot be given a timeout. Contention is short (a rotation, a
        large record: about 0.2 ms), so for the first YIELD_POLLS seconds a poll
        gives the processor away (sched_yield) instead of sleeping: with more
        writers than processors, every writer waits for each rotation, and a
        sleep's timer wake-up per poll costs the rotating process its processor;
        the yield runs whoever is runnable, the rotator among them. Then sleeps
        (each at least the timer slack, ~50 us) until FAST_POLLS, then backing
        off: a long hold is a stopped or hostile holder. After one timeout, a
        wait lasts at most STALLED_WAIT until one succeeds (True).
        """
        timeout = self.timeout
        if timeout is not None and self.stalled:
            timeout = min(timeout, STALLED_WAIT)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        delay = 0.00002
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.stalled = True
                raise LockTimeout(self.path, self.timeout)
            if now - start < YIELD_POLLS:
                os.sched_yield()
            else:
                time.sleep(delay)
                if now - start > FAST_POLLS:
                    delay = min(delay * 2, 0.0002 if now - start < 0.05 else 0.005)
            answer = ready()
            if answer is not None:
                if answer:
                    self.stalled = False
                return answer

    # -- writers that append without the lock (racefree.logging.sole) ------------
    def enter_free(self, hint: int) -> int:
        """Holding the lock (shared or not): the fence word, to append without the lock; or -1.

        Takes a slot (a write lock on its first byte, tried from ``hint`` on), so
        that every later exclusive holder fences this handler out
        (:meth:`fence`) before it rotates, and registers the process for the
        other side's barrier (:mod:`racefree.logging.barrier`). -1 where that
        cannot be done: no writable mapping, an uncounted writer, no
        ``membarrier``, no free slot among the few tried.
        """
        words = self.words
        if words is None or not self.counted or not self.free_ok:
            return -1
        if self.slot < 0:
            if not _barrier.register():
                self.free_ok = False
                return -1
            for k in range(_SLOT_TRIES):
                slot = (hint + k) % SLOTS
                try:
                    _fs.ofd_setlk(self.fd, fcntl.F_WRLCK, SLOT0 + slot * SLOT_STRIDE, 1)
                except BlockingIOError:
                    continue  # another writer's
                except OSError:
                    self.free_ok = False
                    return -1
                # A writer that died in a record left its word set: cleared before use.
                words[(SLOT0 + slot * SLOT_STRIDE) // 8] = 0
                self.slot = slot
                break
            else:
                return -1
        return int(words[W_EPOCH])

    def slot_word(self) -> int:
        """The index in :attr:`words` of this sidecar's slot (after :meth:`enter_free`)."""
        return (SLOT0 + self.slot * SLOT_STRIDE) // 8

    def leave_free(self) -> None:
        """Stop appending without the lock: the fence word moved (or the handler closes).

        Letting go of the slot tells an exclusive holder waiting in :meth:`fence`
        without a barrier that this handler's records take the lock from now on.
        """
        if self.slot >= 0:
            _fs.ofd_setlk(self.fd, fcntl.F_UNLCK, SLOT0 + self.slot * SLOT_STRIDE, 1)
            self.slot = -1

    def fence(self) -> None:
        """Just after taking the lock exclusively: no other writer appends without it any more.

        Writers may be appending without the lock (see :mod:`racefree.logging.sole`).
        Store a new fence word, run the barrier, then wait while any other
        held slot says "in a record": a record begun before its writer could
        see the new word ends before this returns, and every later record of
        it sees the word, leaves that mode and waits for this hold like any
        writer. Without this, a rotation could rename and compress the file
        while such a record was still to be written into it. Nothing to do
        (one ``F_OFD_GETLK``) when no other handler holds a slot. Waits at
        most ``timeout`` seconds for a writer stopped in the middle of a
        record: then :class:`~racefree.LockTimeout` (and :meth:`lock`, its
        one caller, lets go of the lock).
        """
        try:
            held = _fs.ofd_getlk(self.fd, fcntl.F_WRLCK, SLOT0, FILE_SIZE - SLOT0) != fcntl.F_UNLCK
        except OSError:
            return  # no such locks here: no writer could have taken a slot either
        if not held:
            return  # nobody else appends without the lock (a writer that died let go)
        epoch = _U64.unpack_from(self.read(OFF_EPOCH + 8), OFF_EPOCH)[0]
        self.put_u64(OFF_EPOCH, (epoch + 1) & UNKNOWN_END)
        fenced = _barrier.fence()
        if not self._fenced_out(fenced):
            # Bounded as a wait for the lock: after one timeout, at most STALLED_WAIT,
            # so that a slot held "in a record" for good (a stopped writer; in a log
            # others may write, anyone who may lock the sidecar) does not make every
            # exclusive step wait the full time, as a held flock would not.
            self._poll(lambda: True if self._fenced_out(fenced) else None)
        if fenced:
            # A record a writer ended after the first barrier (seen at 0 at once, or
            # waited for): its write's effects may still trail the store of 0 on a
            # weakly ordered processor; a second barrier makes them visible here
            # before anything is renamed.
            _barrier.fence()

    def _fenced_out(self, fenced: bool) -> bool:
        """Whether no other writer is in a record without the lock (see :meth:`fence`)."""
        if not fenced:
            # No barrier (a sandbox without membarrier): only writers letting go of
            # their slots (at their next record, seeing the fence word; or closing,
            # or dying) says they left the mode.
            return _fs.ofd_getlk(
                self.fd, fcntl.F_WRLCK, SLOT0, FILE_SIZE - SLOT0) == fcntl.F_UNLCK
        slots = self.read(FILE_SIZE)[SLOT0:]
        if not slots.strip(b"\0"):
            return True
        for slot in range(SLOTS):
            at = slot * SLOT_STRIDE
            if slot != self.slot and slots[at:at + 8] != _ZERO8 and _fs.ofd_getlk(
                    self.fd, fcntl.F_WRLCK, SLOT0 + at, 1) != fcntl.F_UNLCK:
                return False  # in a record, and alive (a dead writer's word means nothing)
        return True

    def unlock(self) -> None:
        _fs.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        words, self.words = self.words, None
        mapped, self._map = self._map, None
        if words is not None:
            words.release()
        if mapped is not None:
            mapped.close()
        if fd >= 0:
            _fs.close(fd)
