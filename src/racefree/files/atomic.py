"""Atomic file replacement: readers see the old contents or the new, never a mix.

The protocol (each step through the :mod:`racefree._fs` seam):

1. create a temp file in the target's directory, under a unique name
   ``.{name}.{pid}.{random}.rftmp``, with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (W3);
2. give it the target's mode bits (and owner, when running as root) (W4);
3. write every byte, looping over short writes (W6);
4. ``fsync`` it (W1) - an error is raised as :class:`DurabilityError`, never retried (W7);
5. ``rename`` it over the target (atomic on POSIX: a reader opens one inode or the other);
6. ``fsync`` the directory, so the new name survives a power loss (W2).

With ``overwrite=False``, step 5 is ``link`` instead (it fails if anything has the
name), then the temp's name is removed: the file is published only if none
exists, atomically, with the same durability.

Any exception (``KeyboardInterrupt`` too) before step 5 removes the temp and leaves
the target untouched. A SIGKILL can leave the temp behind; :func:`racefree.sweep`
(``files.sweep``) removes the temps whose writer is dead (W5). Nothing is
coalesced or deferred: every call that returns has written its bytes (W9).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import stat
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, TextIO, cast, overload

from racefree import _fs, _trust
from racefree._errors import DurabilityError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["TEMP_SUFFIX", "atomic_open", "atomic_write"]

#: Every temp file racefree creates ends with this suffix.
TEMP_SUFFIX = ".rftmp"

# ``.{name}.{pid}.{8 hex}.rftmp`` (``sweep`` reads the pid back). The name part is
# cut so that long names stay within NAME_MAX.
_NAME_KEEP = 64
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fs.O_NOFOLLOW | getattr(os, "O_BINARY", 0)
)
_WINDOWS = os.name == "nt"


def _temp_path(dirname: str, name: str) -> str:
    tag = f"{random.getrandbits(32):08x}"
    return os.path.join(dirname, f".{name[:_NAME_KEEP]}.{os.getpid()}.{tag}{TEMP_SUFFIX}")


def _sync_file(fd: int) -> None:
    # On macOS fsync() stops at the drive's cache; the seam's fdatasync uses F_FULLFSYNC there.
    if sys.platform == "darwin":  # pragma: no cover - not run in CI
        _fs.fdatasync(fd)
    else:
        _fs.fsync(fd)


def _replace(src: str, dst: str) -> None:
    if not _WINDOWS:
        _fs.replace(src, dst)
        return
    # W8, untested: on Windows a replace fails with a sharing violation while any
    # process has the target open. Retry a bounded number of times with jitter, then
    # raise the PermissionError itself (a distinct error, not a timeout).
    for attempt in range(10):  # pragma: no cover - Windows, untested
        try:
            _fs.replace(src, dst)
            return
        except PermissionError:
            if attempt == 9:
                raise
            time.sleep(random.uniform(0.0, 0.001 * 2**attempt))


def _resolve(path: str, follow: bool = True) -> tuple[str, os.stat_result | None]:
    """The file to replace (a symlink's target) and its status, or None if it is new.

    Links are followed under racefree's rule (``racefree._trust``): a link
    that another user planted in a shared directory (sticky, writable by
    others) is refused, and so is an existing file of another user there, which
    racefree would otherwise replace and whose owner and mode it would adopt
    (``fs.protected_regular`` does not see a rename). The status is the
    ``lstat`` that was checked: in a shared directory only the caller or the
    directory's owner may swap a trusted entry, and elsewhere everyone who may
    swap one is trusted, so it still describes the file the rename replaces.
    """
    try:
        where = _trust.resolve(path, follow_last=follow)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            errno.ENOENT, f"No such directory: {os.path.dirname(path)!r}", path
        ) from exc
    st = where.st
    if st is None:  # new, or a dangling (trusted) link: its target is created
        return where.path, None
    if stat.S_ISLNK(st.st_mode):  # follow=False: the link itself is replaced, as any entry
        _trust.check(where.path, st, where.dir_st, "replace")
        return where.path, None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", where.path)
    # A second name: another user's hard link to someone's file (whose mode and owner
    # the new file would take), unless it is racefree's own, gone in microseconds.
    st = _trust.check(where.path, st, where.dir_st, "replace",
                      again=partial(_fs.stat, where.path, follow_symlinks=False))
    if not stat.S_ISREG(st.st_mode):
        # Replacing a device, FIFO or socket with a regular file is never what was meant.
        raise OSError(
            errno.EINVAL, "Not a regular file (atomic writes replace files only)", where.path
        )
    return where.path, st


def _new_only(path: str) -> tuple[str, None]:
    """The target of an ``overwrite=False`` write: ``path`` itself, which must not exist.

    Nothing at ``path`` is followed or looked into: a symlink there, even a
    dangling one, is an existing name. The directory part is resolved under
    racefree's rule, as for any write. This check only fails early; the
    ``link`` that publishes is the atomic one.
    """
    try:
        where = _trust.resolve(path, follow_last=False)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            errno.ENOENT, f"No such directory: {os.path.dirname(path)!r}", path
        ) from exc
    if where.st is None:
        return where.path, None
    raise FileExistsError(errno.EEXIST, "File exists", path)


class _Temp:
    """One temp file on its way to replacing ``target`` (or, ``overwrite=False``, creating it)."""

    __slots__ = ("dirname", "fd", "overwrite", "replaced", "target", "tmp")

    def __init__(
        self, path: str | os.PathLike[str], mode: int | None, overwrite: bool = True,
        follow: bool = True,
    ) -> None:
        if mode is not None and not 0 <= mode <= 0o7777:
            raise ValueError(f"mode must be permission bits (0 to 0o7777), not {mode!r}")
        self.overwrite = overwrite
        if overwrite:
            self.target, st = _resolve(os.fspath(path), follow)
        else:
            self.target, st = _new_only(os.fspath(path))
        self.dirname = os.path.dirname(self.target) or os.curdir
        self.replaced = False
        # When the mode will be set below, the temp starts private (0o600) so that the
        # data is never readable under wider bits. Otherwise open() applies the umask
        # itself: new files get 0o666 & ~umask without reading the process-global
        # umask (os.umask() would change it for every thread while it is read).
        create_mode = 0o666 if st is None and mode is None else 0o600
        for _attempt in range(8):
            self.tmp = _temp_path(self.dirname, os.path.basename(self.target))
            try:
                self.fd = _fs.open(self.tmp, _CREATE_FLAGS, create_mode)
                break
            except FileExistsError:  # W3: never share a temp; draw another name
                continue
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    errno.ENOENT, f"No such directory: {self.dirname!r}", self.target
                ) from exc
        else:  # pragma: no cover - 8 collisions of 32 random bits
            raise FileExistsError(errno.EEXIST, "could not create a unique temp file", self.tmp)
        try:
            if st is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
                # W4: root keeps the owner. chown clears set-id bits, so it goes first.
                _fs.fchown(self.fd, st.st_uid, st.st_gid)
            if mode is not None:
                _fs.fchmod(self.fd, mode)
            elif st is not None:
                _fs.fchmod(self.fd, stat.S_IMODE(st.st_mode))  # W4: keep the mode bits
        except BaseException:
            self.discard()
            raise

    def publish(self, durable: bool) -> None:
        """Sync (if durable), close, rename over the target, sync the directory (if durable)."""
        fd = self.fd
        if durable:
            try:
                _sync_file(fd)
            except OSError as exc:
                # W7: never retried; the target was not touched.
                raise DurabilityError(
                    self.target,
                    exc.errno or errno.EIO,
                    "the new contents were discarded; the file was not replaced",
                ) from exc
        # A failed close(2) still frees the descriptor: never close it twice.
        self.fd = -1
        _fs.close(fd)
        if self.overwrite:
            _replace(self.tmp, self.target)
            self.replaced = True
        else:
            self._link_new()
        if durable and not _WINDOWS:  # Windows cannot open a directory to sync it (untested)
            try:
                _fs.fsync_dir(self.dirname)
            except OSError as exc:
                # W2: the rename happened, but it may not survive a power loss.
                raise DurabilityError(
                    self.target,
                    exc.errno or errno.EIO,
                    "the file was replaced but its directory could not be synced: "
                    "the new contents may or may not be committed",
                ) from exc

    def _link_new(self) -> None:
        """``overwrite=False``: publish under the target's name only if nothing has it.

        ``link`` fails with EEXIST if anything has the name (a file another
        writer made since our first look too), so of racing writers exactly one
        wins and nobody's file is replaced. The directory fsync that follows
        covers the link and the removal of the temp's name.
        """
        _fs.link(self.tmp, self.target)  # FileExistsError: discard() removes the temp
        self.replaced = True
        try:
            _fs.unlink(self.tmp)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{self.target} was created, but its temp name {self.tmp} could not be"
                f" removed: {exc.strerror}",
            ) from exc

    def discard(self) -> None:
        """Close and remove the temp (the target is untouched). Used while an error propagates."""
        # Cleanup errors are dropped here only because the error that brought us here is
        # the one the caller must see; a temp left behind is recognisable and sweep() removes it.
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                _fs.close(fd)
        if not self.replaced:
            with contextlib.suppress(OSError):
                _fs.unlink(self.tmp)


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes | memoryview:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return memoryview(data)
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | str,
    *,
    durable: bool = True,
    mode: int | None = None,
    overwrite: bool = True,
    follow_symlinks: bool = True,
) -> None:
    """Replace the file at ``path`` with ``data`` (``str`` is encoded as UTF-8), atomically.

    Atomic: every reader, in any process, sees either the old contents or ``data``,
    never a mix, a prefix or an empty file. A crash (SIGKILL, power loss) at any
    point leaves the old or the new contents; at worst a temp file
    ``.{name}.{pid}.{random}.rftmp`` stays behind, which :func:`sweep` removes.

    Durable: with ``durable=True`` (the default) the new contents and the new
    directory entry are fsynced before the call returns, so they survive a power
    loss. ``durable=False`` skips both syncs: still atomic for readers and after a
    process crash, but after a power loss or OS crash the file may hold the old
    contents, or (on file systems that do not order data before the rename) be
    empty.

    Mode: an existing file keeps its permission bits (and, when running as root,
    its owner and group); a new file gets ``0o666 & ~umask``; ``mode=`` sets the
    bits explicitly. A symlink at ``path`` is followed: its target is replaced
    and the link stays a link.

    Other users: in a shared directory (sticky and writable by others, such as
    ``/tmp``) a symbolic link is followed, and an existing file replaced, only
    if it belongs to the caller or to the directory's owner, anywhere on the
    path; otherwise :class:`~racefree.UnsafePathError` (a ``PermissionError``)
    is raised before anything is written (see ``docs/security.md``).

    Errors: any exception (``KeyboardInterrupt`` too) before the rename removes
    the temp file and leaves the old file byte-for-byte. A failed fsync of the
    data raises :class:`DurabilityError` (the old file stays; the fsync is never
    retried). A failed fsync of the directory, after the rename, raises
    :class:`DurabilityError` saying the new contents may or may not be committed.
    A missing directory raises ``FileNotFoundError``; a directory at ``path``
    raises ``IsADirectoryError``; a FIFO, device or socket ``OSError(EINVAL)``.

    ``overwrite=False`` publishes only if nothing exists at ``path`` (a symlink
    counts, and is not followed): ``FileExistsError`` otherwise, before any
    write if the name is taken already, else at the publish (another writer
    created it meanwhile: of racing writers exactly one succeeds, and nobody's
    file is replaced). Atomic the same way (``link``, then the temp's name is
    removed: a crash leaves no file or the whole new one), and as durable.

    ``follow_symlinks=False`` replaces what has the name itself: a symbolic link
    there is replaced by the new file, never followed (for a caller that reads
    the file and writes it back, and must not be turned towards another file in
    between: ``racefree check --repair``).
    """
    buf = _as_bytes(data)
    temp = _Temp(path, mode, overwrite, follow_symlinks)
    try:
        _fs.write_all(temp.fd, buf)
        temp.publish(durable)
    except BaseException:
        temp.discard()
        raise


class _SeamWriter(io.RawIOBase):
    """A raw writer on the temp's descriptor whose every write goes through the seam."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.discarding = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, b: ReadableBuffer, /) -> int:
        view = memoryview(b)
        if self.discarding:
            # The temp is being thrown away; a late flush (even from garbage collection)
            # must not write to a descriptor that is closed or, worse, reused.
            return view.nbytes
        _fs.write_all(self._fd, view)
        return view.nbytes

    # close() is RawIOBase's: it marks the writer closed but leaves the descriptor to
    # the _Temp, which syncs it before the rename.


@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: Literal["w"],
    *,
    durable: bool = ...,
    encoding: str = ...,
    errors: str = ...,
    newline: str | None = ...,
    overwrite: bool = ...,
) -> contextlib.AbstractContextManager[TextIO]: ...


@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: Literal["wb"],
    *,
    durable: bool = ...,
    overwrite: bool = ...,
) -> contextlib.AbstractContextManager[BinaryIO]: ...


def atomic_open(
    path: str | os.PathLike[str],
    mode: str,
    *,
    durable: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
    overwrite: bool = True,
) -> contextlib.AbstractContextManager[IO[str]] | contextlib.AbstractContextManager[IO[bytes]]:
    """``with atomic_open(path, "w") as f:`` - write a file that appears whole or not at all.

    ``mode`` is ``"w"`` (text, ``encoding`` UTF-8 by default) or ``"wb"``. The block
    writes to a temp file in the same directory. On normal exit the temp replaces
    ``path`` with the guarantees of :func:`atomic_write` (durable unless
    ``durable=False``; mode bits kept; a symlink is written through). If the block
    raises anything (``KeyboardInterrupt`` too), nothing is published: the temp is
    removed, the old file stays byte-for-byte, and the exception propagates.
    Readers never see what the block has written until it exits.

    ``overwrite=False``: as for :func:`atomic_write`, the file is published only
    if nothing exists at ``path``; ``FileExistsError`` when the ``with``
    statement starts if the name is taken, else at the end of the block if
    another writer created it meanwhile (nothing is published then).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', not {mode!r}")
    manager = _atomic_open(path, mode == "wb", durable, encoding, errors, newline, overwrite)
    return cast("contextlib.AbstractContextManager[IO[str]]", manager)


@contextlib.contextmanager
def _atomic_open(
    path: str | os.PathLike[str],
    binary: bool,
    durable: bool,
    encoding: str,
    errors: str,
    newline: str | None,
    overwrite: bool,
) -> Iterator[IO[str] | IO[bytes]]:
    temp = _Temp(path, None, overwrite)
    raw = _SeamWriter(temp.fd)
    file: IO[str] | IO[bytes] | None = None
    try:
        buffered = io.BufferedWriter(raw)
        if binary:
            file = buffered
        else:
            file = io.TextIOWrapper(buffered, encoding=encoding, errors=errors, newline=newline)
        yield file
        file.close()  # flushes what the block wrote into the temp (closing twice is harmless)
        temp.publish(durable)
    except BaseException:
        raw.discarding = True
        # Closing a discarding writer cannot fail; were it to, the error already on its way
        # is the one the caller must see, and the temp must still go.
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        temp.discard()
        raise
