"""The files a store owns, opened, read and replaced under racefree's trust rule.

A store directory may sit where other local users can create entries (a
sticky, world-writable temporary directory; a group's shared directory), and
any of them may plant a symbolic link, a FIFO, a device or a file of their own
at a name the store is about to use (``MANIFEST``, ``store.lock``,
``store.shm``, a segment, ``POISONED``). So the store never opens one of its
files by a plain path:

- the store directory is resolved once, under the rule of :mod:`racefree._trust`
  (every link on the way trusted), and it and every directory above it must be
  trusted entries of their parents, so no untrusted user can swap a component
  of the path the store keeps using;
- each file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with
  ``fstat`` on the descriptor then used (``_trust.open_own``): a regular file,
  trusted if it already existed, created with ``O_EXCL`` if new;
- small files (``MANIFEST``, the first segment while a store is being created)
  are read with a bound, so a file that keeps growing is an error, not an
  endless read;
- the ``MANIFEST`` is replaced by renaming a temp file of its own over the
  *name* (a rename never follows a link at its target), never through a link.

Every refusal is :class:`racefree.UnsafePathError` (a ``PermissionError``)
naming the path and the reason, raised before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat

from racefree import _fs, _trust
from racefree._errors import CorruptFileError, DurabilityError, UnsafePathError
from racefree.lock.create import data_lock_mode

__all__ = [
    "header_mappable",
    "open_file",
    "open_lock",
    "read_small",
    "replace_file",
    "resolve_dir",
    "unlink_own",
]

#: Temp files of :func:`replace_file` end like every racefree temp (``sweep`` knows them).
_TEMP_SUFFIX = ".rftmp"
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_WRITING = os.O_WRONLY | os.O_RDWR


def resolve_dir(path: str, *, create: bool) -> tuple[str, os.stat_result]:
    """The store directory, resolved under the rule: ``(absolute path with no link, its stat)``.

    Creates it (one ``mkdir``) if missing and ``create``. The directory and every
    directory above it must be trusted entries of their parents (see
    ``_trust``): otherwise another user could rename a component and send the
    store's later writes elsewhere. ``UnsafePathError`` if not; ``FileNotFoundError``
    if it is missing (and not ``create``); ``NotADirectoryError`` for a file.
    """
    for _attempt in range(8):
        # Strictly: never through (or into) a directory another user made in a shared
        # directory, so one made there first, in place of ours, is refused, not adopted.
        where = _trust.resolve(path, strict=True)
        if where.st is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no store directory", path)
            # A racing creator (or a planted entry) wins the mkdir: look at what is there.
            with contextlib.suppress(FileExistsError):
                _fs.mkdir(where.path)
            continue
        if not stat.S_ISDIR(where.st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a store directory", where.path)
        _check_ancestors(where.path, where.st, where.dir_st)
        return where.path, where.st
    raise FileNotFoundError(errno.ENOENT, "the store directory keeps changing", path)


def _check_ancestors(path: str, st: os.stat_result, parent_st: os.stat_result) -> None:
    # ``resolve`` checks the links it follows; a directory that is no link can
    # still belong to another user in a shared directory (``/tmp/theirs/store``):
    # they could rename ``store`` away and put a link in its place between two of
    # our calls. Each component must be one the rule trusts.
    while True:
        _trust.check(path, st, parent_st, "use")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path, st = parent, parent_st
        grand = os.path.dirname(parent)
        parent_st = _fs.stat(grand, follow_symlinks=False)


def open_file(
    directory: str, name: str, flags: int, *, create: bool, mode: int = 0o666
) -> tuple[int, os.stat_result, bool]:
    """Open the store's file ``name``: ``(fd, fstat, created)``; never through a link.

    ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO or a device never blocks the open), a
    regular file checked on the descriptor, trusted if it existed, ``O_EXCL``
    if new (``create``). ``UnsafePathError`` otherwise, with nothing changed.
    """
    return _trust.open_own(os.path.join(directory, name), flags, mode, create=create)


def open_lock(
    directory: str, name: str, flags: int, *, create: bool
) -> tuple[int, os.stat_result, bool]:
    """Open one of the store's lock files (``store.lock``, ``sync.lock``, ``store.shm``).

    As :func:`open_file`, with the mode of a data lock: read and write only for
    the classes (owner, group, others) that may write the store's data (the
    MANIFEST's mode, or a new file's). ``flock`` needs only read access, so a
    user who could open one of them could hold it for ever and stop every
    writer. A new one is created with that mode; an older, more open one the
    caller owns is narrowed to it when opened for writing. A user it keeps out
    gets ``PermissionError``.
    """
    try:
        manifest = _fs.stat(os.path.join(directory, "MANIFEST"), follow_symlinks=False)
        data_mode: int | None = manifest.st_mode if stat.S_ISREG(manifest.st_mode) else None
    except FileNotFoundError:
        data_mode = None
    mode = data_lock_mode(data_mode)
    fd, st, created = open_file(directory, name, flags, create=create, mode=mode)
    try:
        have = stat.S_IMODE(st.st_mode)
        if created and have != mode:
            _fs.fchmod(fd, mode)  # created narrower (the umask): widened to the mode, never past
            st = _fs.fstat(fd)
        elif flags & _WRITING and st.st_uid == os.geteuid() and have & 0o777 & ~mode:
            # Made by an older racefree (0o666 & ~umask), readable by users who may not
            # write the store: closed to them (by a writer: a read-only handle changes
            # nothing).
            _fs.fchmod(fd, have & ~(0o777 & ~mode))
            st = _fs.fstat(fd)
    except BaseException:
        _fs.close(fd)
        raise
    return fd, st, created


def read_small(directory: str, name: str, limit: int) -> bytes:
    """The whole of the store's small file ``name`` (at most ``limit`` bytes).

    Opened as :func:`open_file` does; a file larger than ``limit`` (or one that
    grows past it while read) is :class:`CorruptFileError`, never an endless read.
    """
    fd, st, _ = open_file(directory, name, os.O_RDONLY, create=False)
    path = os.path.join(directory, name)
    try:
        if st.st_size > limit:
            raise CorruptFileError(path, f"{st.st_size} bytes, more than the {limit} it may hold")
        parts: list[bytes] = []
        got = 0
        while True:
            block = _fs.pread(fd, limit + 1 - got, got)
            if not block:
                break
            parts.append(block)
            got += len(block)
            if got > limit:
                raise CorruptFileError(path, f"grew past the {limit} bytes it may hold")
        return b"".join(parts)
    finally:
        _fs.close(fd)


def replace_file(directory: str, name: str, data: bytes) -> None:
    """Replace the store's file ``name`` with ``data``, atomically, durably, never through a link.

    A temp file of its own (``O_CREAT | O_EXCL | O_NOFOLLOW``, a unique name in
    the store directory) gets every byte and an fsync, then is renamed over the
    name (a rename replaces a link itself, never its target), and the directory
    is fsynced. An existing file must be trusted (it keeps its mode, and its
    owner when the caller is root); a link or another user's file there is
    refused (``UnsafePathError``) and nothing is replaced. A failed fsync is
    :class:`DurabilityError`, never retried. Any error before the rename
    removes the temp and leaves the file as it was.
    """
    target = os.path.join(directory, name)
    old = _existing(directory, target)
    fd, tmp = _create_temp(directory, name)
    renamed = False
    try:
        if old is not None:
            if os.geteuid() == 0:  # W4: root keeps the (trusted) owner; chown clears set-id bits
                _fs.fchown(fd, old.st_uid, old.st_gid)
            _fs.fchmod(fd, stat.S_IMODE(old.st_mode))
        _fs.write_all(fd, data)
        try:
            _fs.fsync(fd)
        except OSError as exc:
            raise DurabilityError(
                target, exc.errno or errno.EIO, "the file was not replaced"
            ) from exc
        fd, closing = -1, fd
        _fs.close(closing)
        _fs.replace(tmp, target)
        renamed = True
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                _fs.close(fd)
        if not renamed:
            # The error being raised is the one the caller must see; a temp left
            # behind is recognisable and ``racefree.sweep`` removes it.
            with contextlib.suppress(OSError):
                _fs.unlink(tmp)
    try:
        _fs.fsync_dir(directory)
    except OSError as exc:
        raise DurabilityError(
            directory, exc.errno or errno.EIO,
            f"{name} was replaced but the directory could not be synced: the change may or"
            " may not be committed",
        ) from exc


def _existing(directory: str, target: str) -> os.stat_result | None:
    try:
        st = _fs.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        return None
    dir_st = _fs.stat(directory, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(target, f"is {_trust.describe(st)}, not a regular file to replace")
    _trust.check(target, st, dir_st, "replace")
    return st


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fs.O_NOFOLLOW
    for _attempt in range(8):
        tmp = os.path.join(
            directory, f".{name}.{os.getpid()}.{random.getrandbits(32):08x}{_TEMP_SUFFIX}"
        )
        try:
            return _fs.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # never share a temp (W3): draw another name
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", directory)


def unlink_own(directory: str, name: str, *, keep_untrusted: bool = False) -> bool:
    """Remove the store's file ``name`` if it is there and trusted; False if it is not removed.

    An entry the rule does not trust (another user's, in a shared store
    directory) is left where it is: the store never removes what it did not
    make. That raises ``UnsafePathError``, or, with ``keep_untrusted`` (an
    orphan sweep: such a file is not the store's, so not its orphan), returns False.
    """
    path = os.path.join(directory, name)
    try:
        st = _fs.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    dir_st = _fs.stat(directory, follow_symlinks=False)
    if keep_untrusted and not _trust.trusted(st, dir_st):
        return False
    _trust.check(path, st, dir_st, "remove")
    try:
        _fs.unlink(path)
    except FileNotFoundError:
        return False
    return True


def header_mappable(st: os.stat_result) -> bool:
    """Whether a file may be mapped and read without a system call: only its owner may truncate it.

    A shared mapping of a file that someone truncates kills every process that
    then touches it (SIGBUS). The store maps its shared header only when the
    caller owns it and neither its group nor others may write it: then only the
    caller's own user (or root) could truncate it, and they could kill the
    process anyway. Otherwise the header is read and written with
    ``pread``/``pwrite``, which see a truncated file as a short read.
    """
    return st.st_uid == os.geteuid() and not st.st_mode & _GROUP_OTHER_WRITE
