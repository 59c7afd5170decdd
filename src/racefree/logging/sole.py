"""The log's only writer counts what it appends instead of asking the kernel for the size.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`. A writer
decides whether a record makes the file reach ``maxBytes`` from the file's
size: ``lseek(fd, 0, SEEK_END)`` while holding the lock shared, one system call
per record. A handler that no other writer shares the log with can instead add
up what it appends, exactly, and skip that call. It may import the sidecar
module only.
"""

from __future__ import annotations

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

    def _ask_alone(self, writers: int) -> None:
        """Holding the lock shared: is this handler the log's only writer, from now on?

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
        assert self._side is not None
        alone = not writers & UNCOUNTED and self._side.words is not None and self._side.alone()
        self._sole = writers if alone else -1
        self._sole_seen = writers
        self._recheck = RECHECK
