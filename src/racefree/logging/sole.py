"""Writers append without the lock; the log's only writer also counts what it appends.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`.

**Without the lock.** A record held the lock shared for its ``write(2)``: two
``flock`` calls, which cost about as much as the write. The shared hold only
keeps exclusive steps out (a rotation, a newcomer's open, a repair, a large
record), and each of those takes the lock exclusively. So a writer takes a
*slot* in the sidecar (:meth:`.sidecar.Sidecar.enter_free`, under the lock) and
then, for each record: stores 1 in its slot, loads the fence word, the
generation and the torn-record mark, and writes only if they are what they
were under the lock; then stores 0. Whoever takes the lock exclusively while
other handlers hold slots first bumps the fence word, runs an asymmetric memory
barrier (:mod:`.barrier`) and waits while a held slot is 1
(:meth:`.sidecar.Sidecar.fence`). Both sides store, then load what the other
stores, with a barrier between the two (Dekker's), so either the exclusive
holder sees the record in progress and waits for it, or the writer sees the
new fence word, lets go of its slot and takes the locked path, where it waits
for the exclusive holder like any writer and takes a slot again afterwards. A
writer killed in a record leaves its slot at 1, but the slot's lock dies with
it, and a word without a held lock means nothing.

**The only writer counts.** A writer decides whether a record makes the file
reach ``maxBytes`` from the file's size: ``lseek(fd, 0, SEEK_END)``, one system
call per record. A handler that no other writer shares the log with can instead
add up what it appends, exactly, and skip that call. It may import the sidecar
module only.
"""

from __future__ import annotations

import os

from racefree.logging.sidecar import UNCOUNTED, Sidecar

__all__ = ["RECHECK", "SoleWriter"]

#: Measures of the file between two questions whether this handler is the only writer.
RECHECK = 1024


class SoleWriter:
    """Whether this handler is the log's only writer, and the size it counted if so."""

    _side: Sidecar | None
    #: What the last ``lseek`` said plus what this handler appended since; -1: unknown.
    _size: int
    #: The writers word when :meth:`Sidecar.alone` said so; -1: not alone.
    _sole: int
    #: The writers word :meth:`Sidecar.alone` was last asked at.
    _sole_seen: int
    #: Measures left before asking again.
    _recheck: int
    #: The fence word while appending without the lock (-1: with it).
    _free: int
    #: The index of this handler's slot in the sidecar's words (while ``_free`` >= 0).
    _slot_w: int

    def _ask_alone(self, writers: int) -> None:
        """Holding the lock: is this handler the log's only writer, from now on? And take a slot.

        The slot (:meth:`Sidecar.enter_free`, with the fence word read now,
        under the lock) lets the handler append without the lock until an
        exclusive holder moves the fence word on; see the module docstring.

        The only writer tracks the file's size itself (``_size``: what the
        last ``lseek`` said plus what it appended since) instead of asking the
        kernel at every record: nobody else appends. It is the only writer
        while the writers word stays what it was when :meth:`Sidecar.alone`
        said so: a process that opens the log to write takes its read lock on
        the writer byte first and then bumps the word under the exclusive hold,
        so no record of a newcomer can land while a handler still believes it
        is alone. Asked holding the lock shared, before the ``lseek`` (a writer
        that leaves meanwhile has finished its records by then), when the word
        moves on and every :data:`RECHECK` measures (a writer that left). Never
        alone where the control block is read with ``pread``, nor once a writer
        could not be counted (:data:`UNCOUNTED`). Bytes appended by programs that
        are not racefree's handlers are counted at the next ``lseek`` (at the
        latest, after the next rotation).
        """
        side = self._side
        assert side is not None
        alone = not writers & UNCOUNTED and side.words is not None and side.alone()
        self._sole = writers if alone else -1
        self._sole_seen = writers
        # Measured again after the answer: a writer that left before it may
        # have appended since this handler's last measure.
        self._size = -1
        self._recheck = RECHECK
        # The fence word read under the lock: an exclusive holder after this
        # hold finds the slot taken and moves the word on (see the module docstring).
        self._free = side.enter_free(os.getpid())
        if self._free >= 0:
            self._slot_w = side.slot_word()
