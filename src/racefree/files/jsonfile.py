"""``JsonFile``: a JSON document in one file, updated by many threads, tasks and processes.

Every change is a read-modify-write under one :class:`~racefree.FileLock` on the
sidecar ``{file}.lock`` (S1: no lost update), published with
:func:`~racefree.atomic_write` (S2: never written in place, never torn). A file
that does not parse raises :class:`~racefree.CorruptFileError` and is never
overwritten (S3: the seed's ``readAll`` read it as empty and then wiped it).

Reads take no lock: since every write is an atomic rename, a reader opens either
the old file or the new one and reads it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from racefree import _fs, _trust
from racefree._errors import DurabilityError, UnsafePathError
from racefree.files.atomic import atomic_write
from racefree.files.jsontext import decode, encode
from racefree.lock.create import prepare_data_lock, trusted_data_mode
from racefree.lock.filelock import FileLock

__all__ = ["JsonFile"]

_T = TypeVar("_T")

# The lock files whose read-modify-write (edit/update) the current thread or task is
# inside. A write of the same file from within would be overwritten by the outer
# publish - a lost update the reentrant lock cannot see - so it raises instead.
_EDITING: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "racefree_json_editing", default=frozenset()
)


def _lock_path(path: str) -> tuple[str, UnsafePathError | None]:
    """``{the file, links resolved under the rule}.lock``, and why it may not be used, if so.

    The lock is racefree's own file, so it is never made or used below a directory
    another user made in a shared directory (``strict`` resolution): such a file
    may still be read (as the kernel would read it), but every write refuses.
    """
    try:
        return _resolved(path, strict=True) + ".lock", None
    except UnsafePathError as exc:
        return _resolved(path, strict=False) + ".lock", exc


def _resolved(path: str, *, strict: bool) -> str:
    try:
        return _trust.resolve(path, strict=strict).path
    except FileNotFoundError:
        # A directory on the way does not exist (yet): resolve what does, keep the rest.
        head, tail = os.path.split(os.path.abspath(path))
        return os.path.join(_resolved(head, strict=strict), tail)


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking ``func`` in a worker thread; if cancelled, wait for it to finish first.

    The thread cannot be stopped. Returning early would let the caller release the
    lock while the thread still writes: another writer could then read the file
    before this write lands and overwrite it (S1). So cancellation waits, then raises.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(func, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({fut})
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what propagates
        raise


class JsonFile:
    """One JSON document in the file ``path``, shared safely by threads, tasks and processes.

    ``default`` is what :meth:`read` returns (a fresh deep copy each time) while the
    file does not exist; it must be JSON-serialisable. ``durable=True`` makes
    every write fsynced before it returns (see :func:`~racefree.atomic_write`).
    ``indent`` is passed to :func:`json.dumps` (``None`` writes compact JSON,
    several times faster to encode). ``timeout`` bounds the wait for the lock
    (:class:`~racefree.LockTimeout`, nothing written); None waits forever.

    The lock is the sidecar file ``{realpath(path)}.lock``, so a symlink and its
    target share one lock. It is never deleted (see ``docs/locks.md``). Its mode
    gives read and write access only to the classes (owner, group, others) that
    may write the JSON file (``flock`` needs only read access: a user who could
    open the lock could hold it for ever); an older, more open one the caller
    owns is narrowed at the first write. Links are followed only under
    racefree's rule (``docs/security.md``): a link or a file another user
    planted in a shared directory such as ``/tmp`` raises
    :class:`~racefree.UnsafePathError` (here, or at the first read or write),
    and nothing is read from it or written through it.

    Values are written with ``allow_nan=False``: NaN and infinities are not JSON,
    and writing them raises ``ValueError`` before anything is written. Reading
    accepts them (Python's ``json`` does), so a file another program wrote opens.
    A document nested deeper than Python can encode raises
    :class:`~racefree.LimitError` (a ``ValueError``) before anything is written; a
    string holding a lone surrogate is written as a JSON ``\\u`` escape (the
    document is then written with ASCII escapes) and reads back equal. See
    :mod:`racefree.files.jsontext`.

    After a :class:`~racefree.DurabilityError` the object refuses further writes
    (the state of the disk is unknown); reads still work. Open a new ``JsonFile``
    once the file has been checked.
    """

    __slots__ = (
        "_broken", "_default", "_durable", "_indent", "_lock", "_lock_ready", "_path", "_refused",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default: Any = None,
        durable: bool = True,
        indent: int | str | None = 2,
        timeout: float | None = None,
    ) -> None:
        self._path = os.fspath(path)
        encode(default, None)  # a default that cannot be written fails here
        self._default = copy.deepcopy(default)
        self._durable = durable
        self._indent = indent
        # Two names of one file (a link and its target) must share one lock, or updates
        # through each name would not exclude each other (S1). The link is resolved under
        # racefree's rule: a link another user planted in a shared directory is refused
        # here, before a lock file is created next to its target. The file's directory
        # must exist: its lock does not create it either.
        lock_path, self._refused = _lock_path(self._path)
        self._lock = FileLock(lock_path, timeout=timeout, make_parents=False)
        self._lock_ready = False
        self._broken: DurabilityError | None = None

    @property
    def path(self) -> str:
        """The JSON file."""
        return self._path

    @property
    def lock(self) -> FileLock:
        """The lock every write takes; hold it to make several calls one step."""
        return self._locking()

    def _locking(self) -> FileLock:
        """The lock, its file made (once per object) with the mode of a data lock.

        ``flock`` needs only read access: a lock file others may read lets them
        hold it for ever and stop every writer. So it gives read and write only to
        the classes (owner, group, others) that may write the JSON file (its mode,
        or a new file's), and an older, more open one the caller owns is narrowed
        (``lock.create.prepare_data_lock``).
        """
        if self._refused is not None:
            raise UnsafePathError(self._refused.path or self._path, self._refused.reason)
        if not self._lock_ready:
            data = self._lock.path[: -len(".lock")]  # the file, its links resolved
            # The mode of a file the rule trusts only: another user's 0666 file in a
            # shared directory would otherwise make root's lock one they may hold.
            prepare_data_lock(self._lock.path, trusted_data_mode(data))
            self._lock_ready = True
        return self._lock

    def __repr__(self) -> str:
        return f"<JsonFile {self._path!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self._path, self._default, self._durable, self._indent, self._lock.timeout),
        )

    # -- the steps ----------------------------------------------------------
    def _load(self) -> Any:
        # Opened without following an untrusted link, never blocking on a FIFO.
        try:
            fd, _st = _trust.open_followed(self._path, os.O_RDONLY)
        except FileNotFoundError:
            return copy.deepcopy(self._default)
        try:
            raw = _fs.read_all(fd)
        finally:
            _fs.close(fd)
        return decode(self._path, raw)

    def _encode(self, obj: Any) -> bytes:
        # TypeError (not serialisable), ValueError (NaN, a cycle, an integer too long to
        # convert) or LimitError (nested too deeply) here, before any write.
        return encode(obj, self._indent)

    def _check_nesting(self) -> None:
        # Checked before taking the lock: an owner that already holds it and is inside an
        # edit of this file is nesting. (A task created inside an edit inherits the
        # context var but not the hold, so it is not mistaken for nesting.)
        if self._lock.path in _EDITING.get() and self._lock.held_by_me:
            raise RuntimeError(
                f"{self._path} is being edited by this thread or task: a write from inside "
                "edit()/update() would be overwritten when the edit publishes"
            )

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise DurabilityError(
                self._path,
                self._broken.errno or 0,
                "an earlier fsync of this file failed; this JsonFile refuses further writes",
            )

    def _publish(self, data: bytes) -> None:
        try:
            atomic_write(self._path, data, durable=self._durable)
        except DurabilityError as exc:
            self._broken = exc
            raise

    def _publish_obj(self, obj: Any) -> None:
        self._publish(self._encode(obj))

    @contextlib.contextmanager
    def _editing(self) -> Iterator[None]:
        token = _EDITING.set(_EDITING.get() | {self._lock.path})
        try:
            yield
        finally:
            _EDITING.reset(token)

    # -- the API ----------------------------------------------------------------
    def read(self) -> Any:
        """The document as last published (or a deep copy of ``default`` if there is no file).

        Takes no lock: every publish is an atomic rename, so the file read is one
        whole version. Raises :class:`~racefree.CorruptFileError` (with the byte
        offset and line) if the file is not one valid UTF-8 JSON document that
        Python can read (nested too deeply, an integer of more digits than
        Python converts); an empty file is corrupt too, never "no data".
        :class:`~racefree.UnsafePathError` for another user's file (or link) in a
        shared directory, a FIFO or a device: nothing is read from them.
        """
        return self._load()

    def write(self, obj: Any) -> None:
        """Replace the document with ``obj``, under the lock.

        ``obj`` is serialised first: ``TypeError``/``ValueError`` (``LimitError``
        for a document nested too deeply) leave the file untouched. Atomic;
        durable when it returns if ``durable=True``. Does not read the file, so
        it replaces even a corrupt one.
        """
        data = self._encode(obj)
        self._check_nesting()
        with self._locking():
            self._check_writable()
            self._publish(data)

    def update(self, fn: Callable[[Any], Any]) -> Any:
        """Apply ``fn`` to the current document and publish what it returns; return that.

        The lock is held from the read to the publish, so concurrent updates from
        any thread, task or process are applied one after another: none is lost.
        ``fn`` gets a private copy it may mutate, and must return the new document.
        Returning None raises ``TypeError`` and writes nothing (it is almost always
        an in-place mutation that forgot ``return``; use :meth:`edit` for those, or
        ``write(None)`` to store ``null``). A corrupt file raises
        :class:`~racefree.CorruptFileError` before ``fn`` runs, and is left as it is;
        an exception from ``fn`` writes nothing.
        """
        self._check_nesting()
        with self._locking():
            self._check_writable()
            with self._editing():
                value = fn(self._load())
            if value is None:
                raise TypeError(
                    f"the update function for {self._path} returned None; return the new "
                    "document (nothing was written)"
                )
            self._publish_obj(value)
        return value

    @contextlib.contextmanager
    def edit(self) -> Iterator[Any]:
        """``with jf.edit() as data:`` mutate ``data`` in place; it is published at the end.

        Holds the lock from the read to the publish (as :meth:`update`). If the
        block raises, nothing is published. ``data`` must be a mutable document
        (a dict or list; pass ``default={}`` for a file that may not exist yet).
        """
        self._check_nesting()
        with self._locking():
            self._check_writable()
            with self._editing():
                data = self._load()
                yield data
            self._publish_obj(data)

    # -- async twins -------------------------------------------------------------
    async def aread(self) -> Any:
        """:meth:`read` in a worker thread: the event loop never blocks on the disk."""
        return await _in_thread(self._load)

    async def awrite(self, obj: Any) -> None:
        """:meth:`write` for coroutines: waits for the lock without blocking the loop.

        Cancellation while waiting for the lock writes nothing. Cancellation during
        the publish waits for it to finish (so the lock is not released under a
        write in flight), then raises ``CancelledError``: the write may have landed.
        """
        data = self._encode(obj)
        self._check_nesting()
        async with self._locking():
            self._check_writable()
            await _in_thread(self._publish, data)

    async def aupdate(self, fn: Callable[[Any], Any]) -> Any:
        """:meth:`update` for coroutines; ``fn`` may be a coroutine function.

        ``fn`` runs on the event loop; the file is read and written in a worker
        thread. Cancellation as for :meth:`awrite`: before the publish nothing is
        written; during it the write finishes, then ``CancelledError`` is raised.
        """
        self._check_nesting()
        async with self._locking():
            self._check_writable()
            with self._editing():
                value = fn(await _in_thread(self._load))
                if inspect.isawaitable(value):
                    value = await value
            if value is None:
                raise TypeError(
                    f"the update function for {self._path} returned None; return the new "
                    "document (nothing was written)"
                )
            await _in_thread(self._publish_obj, value)
        return value

    @contextlib.asynccontextmanager
    async def aedit(self) -> AsyncIterator[Any]:
        """``async with jf.aedit() as data:`` - :meth:`edit` for coroutines.

        The lock is held across the block (other tasks wait without blocking the
        loop); the file is read and written in a worker thread. An exception or a
        cancellation inside the block publishes nothing.
        """
        self._check_nesting()
        async with self._locking():
            self._check_writable()
            with self._editing():
                data = await _in_thread(self._load)
                yield data
            await _in_thread(self._publish_obj, data)


def _rebuild(
    path: str, default: Any, durable: bool, indent: int | str | None, timeout: float | None
) -> JsonFile:
    return JsonFile(path, default=default, durable=durable, indent=indent, timeout=timeout)
