"""After a rotation, outside the write lock: the rotated file's fsyncs and its compression.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`, kept apart so that
each module reads in one sitting. The rotating process queues a job under the
lock; ``handle()`` runs it once the handler's thread lock and the file lock are
both released, so no writer, in any process or thread, waits for an fsync or
for gzip.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from racefree import _fs
from racefree.logging import compress as _gzip

__all__ = ["RotationFinisher"]


class _Finish:
    """Work left after a rotation, done by the rotating process outside the write lock."""

    __slots__ = ("compress", "fd", "path")

    def __init__(self, fd: int, path: str, compress: bool) -> None:
        self.fd = fd  # the rotated file, still open
        self.path = path  # the name it was rotated to
        self.compress = compress  # False with a custom rotator: the file is the rotator's


class RotationFinisher:
    """The after-rotation work of a shared log handler (mixin)."""

    baseFilename: str
    durable: Any
    compress: bool
    lock: Any
    _dir: str
    _side: Any
    _finish: list[_Finish | _gzip.Claim]
    _finish_mutex: threading.Lock
    _deferred: list[BaseException]

    if TYPE_CHECKING:  # defined by the class this is mixed into

        def _sync(self, fn: Callable[[Any], None], target: Any, path: str) -> None:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _open_shared(self) -> None:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _rotated_candidates(self, path: str) -> Iterable[str]:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

        def _exclusive(self) -> AbstractContextManager[None]:
            raise NotImplementedError  # pragma: no cover - SharedFileHandler defines it

    # -- after a rotation, outside the lock -------------------------------
    def _queue_claims(self, claims: list[_gzip.Claim]) -> None:
        """Backups a rotation's sweep claimed (their compressor died): compress them later."""
        with self._finish_mutex:
            self._finish.extend(claims)

    def _sweep_locked(self, listing: Iterable[str], plain_backups: Iterable[str]) -> None:
        """During a rotation with ``compress``: adopt backups whose compressor died.

        A backup that cannot be adopted safely (its temp file is another user's,
        say) stays as it is; the error is reported after the record is written
        (through ``handleError``), and the rotation goes on.
        """
        if self.compress:
            name = os.path.basename(self.baseFilename)
            claims, errors = _gzip.sweep_locked(self._dir, name, listing, plain_backups)
            self._queue_claims(claims)
            self._deferred.extend(errors)

    def _run_finish(self) -> None:
        with self._finish_mutex:
            jobs, self._finish = self._finish, []
        for i, job in enumerate(jobs):
            try:
                if isinstance(job, _gzip.Claim):
                    self._compress(job)
                else:
                    self._finish_one(job)
            except BaseException:
                for rest in jobs[i + 1:]:  # not done: close; a later sweep adopts them
                    if isinstance(rest, _gzip.Claim):
                        rest.release()
                    else:
                        _fs.close(rest.fd)
                raise

    def _finish_one(self, job: _Finish) -> None:
        try:
            if self.durable:
                # The rotated file's last records, then the renames (pitfall W2).
                self._sync(_fs.fsync, job.fd, job.path)
                self._sync(_fs.fsync_dir, self._dir, self._dir)
        except BaseException:
            _fs.close(job.fd)
            raise
        if not job.compress:
            _fs.close(job.fd)
            return
        name = os.path.basename(self.baseFilename)
        claimed = _gzip.claim(job.fd, job.path, self._dir, name)  # owns job.fd now
        if claimed is not None:
            self._compress(claimed)

    def _compress(self, job: _gzip.Claim) -> None:
        """Gzip a claimed backup into ``<backup>.gz`` without holding the write lock.

        Reads through the descriptor claimed with it (the backup's name may
        shift meanwhile), writes the claimed temp file, then, under the lock
        for two renames, puts the ``.gz`` where the backup is now and removes
        the plain backup. A crash leaves the plain backup, or the ``.gz``;
        never neither. A custom ``rotator`` is not combined with this.
        """
        try:
            try:
                sync = None
                if self.durable:
                    tmp = job.tmp

                    def sync(fd: int) -> None:
                        self._sync(_fs.fsync, fd, tmp)

                _gzip.compress_into(job, sync)
            except BaseException:
                _fs.unlink(job.tmp)
                raise
            # The handler's thread lock first: flock cannot exclude another
            # thread of this process (one open file description), and its
            # unlock here would release the lock under a thread mid-record.
            with self.lock if self.lock is not None else _NULL:
                if self._side is None:  # pragma: no cover - closed meanwhile
                    self._open_shared()
                with self._exclusive():
                    placed = _gzip.place_locked(job, self._rotated_candidates(job.path))
        finally:
            job.release()
        if placed and self.durable:
            self._sync(_fs.fsync_dir, self._dir, self._dir)


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _NullContext()
