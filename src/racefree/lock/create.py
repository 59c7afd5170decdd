"""Creating a lock file: its missing parent directories, and the mode it is created with.

Both happen before the lock file is opened, as a step of their own (the
opening itself is in ``registry``). Neither ever touches an existing file:
a lock file that exists keeps its owner and its mode, whoever made it.

The one exception is :func:`prepare_data_lock`, for the locks racefree keeps
beside a data file (``X.json.lock``, ``X.log.lock``): ``flock`` needs only read
access, so anyone who may open such a lock may hold it for ever and stop every
writer. Their mode therefore gives access only to the classes (owner, group,
others) that may write the data, and an older, more open one that the caller
owns is narrowed to it, as the logging handlers do with their sidecar.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
from functools import partial

from racefree import _fs, _trust

__all__ = [
    "check_mode", "create_with_mode", "data_lock_mode", "make_parents", "prepare_data_lock",
    "trusted_data_mode",
]

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fs.O_NOFOLLOW
# Where a file system has no hard links, the file is created in place instead.
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


def check_mode(mode: int | None) -> int | None:
    """A lock file's ``mode=``: None (``0o666 & ~umask``) or permission bits."""
    if mode is None:
        return None
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be an int (permission bits) or None, not {mode!r}")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits (0 to 0o7777), not {oct(mode)}")
    return mode


def data_lock_mode(data_mode: int | None) -> int:
    """The mode of a lock guarding data of mode ``data_mode``: read and write for each class
    (owner, group, others) that may write the data, and for no other.

    ``None``: the data does not exist yet, and will get ``0o666 & ~umask``.
    """
    if data_mode is None:
        data_mode = 0o666 & ~_fs.umask()
    mode = 0
    for write_bit, rw in ((stat.S_IWUSR, 0o600), (stat.S_IWGRP, 0o060), (stat.S_IWOTH, 0o006)):
        if data_mode & write_bit:
            mode |= rw
    return mode or 0o600


def trusted_data_mode(data: str) -> int | None:
    """The mode of the data file ``data`` (its links followed under racefree's rule), or
    None if it does not exist: what :func:`prepare_data_lock` gives its lock.

    Another user's file, or a link of theirs, in a shared directory raises
    :class:`~racefree.UnsafePathError` before any lock file is made: its mode would
    set the lock's (a 0666 file: a lock anyone may open), and a lock another user
    may open is one they may hold for ever.
    """
    where = _trust.resolve(data)
    if where.st is None:
        return None
    st = _trust.check(where.path, where.st, where.dir_st, "use",
                      again=partial(_fs.stat, where.path, follow_symlinks=False))
    return st.st_mode


def prepare_data_lock(path: str, data_mode: int | None) -> None:
    """Make sure the lock file ``path`` exists with :func:`data_lock_mode` (``data_mode``).

    A missing one is created (``O_EXCL``, never through a link: ``_trust.open_own``)
    with that mode; it is created narrower, by the umask, and widened to it at
    once, so it is never open to more than that. An existing one the caller owns
    that is more open is narrowed to it; anyone else's is left as it is (only its
    owner may change it). The directory must exist (``FileNotFoundError``).
    """
    mode = data_lock_mode(data_mode)
    fd, st, created = _trust.open_own(path, os.O_RDONLY, mode)
    try:
        have = stat.S_IMODE(st.st_mode)
        if created:
            if have != mode:
                _fs.fchmod(fd, mode)
        elif st.st_uid == os.geteuid() and have & 0o777 & ~mode:
            # Made by an older racefree (0o666 & ~umask): readable by users who may not
            # write the data, who could hold the lock and stop every writer.
            _fs.fchmod(fd, have & ~(0o777 & ~mode))
    finally:
        _fs.close(fd)


def make_parents(path: str) -> None:
    """Create the missing directories above the file ``path`` (mode ``0o777 & ~umask``).

    The part of the path that exists is resolved strictly under racefree's
    rule (``racefree._trust``): no directory is ever made through a link another
    user planted in a shared directory, nor inside a directory another user
    made there (``UnsafePathError``). Each new directory is looked at again
    before the next is made inside it: one that another process made meanwhile
    is fine if the rule trusts it, and refused if another user made it first in
    a shared directory (racefree never adopts it as one it just made: that user
    could point it anywhere). Anything else in the way (a file where a directory
    should be) is left for the caller's ``open`` to report. The new directories
    are not fsynced: a lock file holds no data, and after a power loss it is
    simply created again.
    """
    parent = os.path.dirname(os.path.abspath(path))
    missing: list[str] = []
    while True:
        try:
            where = _trust.resolve(parent, strict=True)
        except FileNotFoundError:
            parent, name = os.path.split(parent)
            missing.append(name)
            continue
        if where.st is None:  # the last component is missing
            parent, name = os.path.split(where.path)
            missing.append(name)
            continue
        break
    base = where.path
    for name in reversed(missing):
        with contextlib.suppress(FileExistsError):
            _fs.mkdir(os.path.join(base, name), 0o777)
        # Resolved again: what is there now (ours, or someone else's) must pass the rule.
        base = _trust.resolve(os.path.join(base, name), strict=True).path


def create_with_mode(path: str, mode: int, parents: bool = True) -> None:
    """Create the lock file ``path`` with exactly ``mode`` (not narrowed by the umask), if missing.

    The file is made under a temp name, given its mode, then ``link``-ed to
    ``path``: the lock file never exists with any other mode, so a process of
    another user in the group never finds one it cannot open (with ``O_EXCL``
    and then ``fchmod`` it could, in between). If ``path`` exists already,
    nothing changes. The temp name is that of :func:`racefree.sweep`, which
    removes one left by a killed process. Missing directories are created
    first unless ``parents`` is False (then: ``FileNotFoundError``).
    """
    try:
        _fs.stat(path, follow_symlinks=False)
        return
    except FileNotFoundError:
        pass
    head, name = os.path.split(os.path.abspath(path))
    try:
        head = _trust.resolve(head, strict=True).path  # no temp through an untrusted link
    except FileNotFoundError:
        if not parents:
            raise
        make_parents(path)
        head = _trust.resolve(head, strict=True).path
    path = os.path.join(head, name)
    tmp = os.path.join(head, f".{name[:64]}.{os.getpid()}.{random.getrandbits(32):08x}.rftmp")
    try:
        fd = _fs.open(tmp, _NEW, 0o600)
    except FileNotFoundError:
        if not parents:
            raise
        make_parents(path)
        fd = _fs.open(tmp, _NEW, 0o600)
    try:
        try:
            _fs.fchmod(fd, mode)
        finally:
            _fs.close(fd)
        try:
            _fs.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: it is the lock file now
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            _create_in_place(path, mode)
    finally:
        _fs.unlink(tmp)  # the lock file, if we made it, is its other name


def _create_in_place(path: str, mode: int) -> None:
    # Without hard links: create, then set the bits (a short window with the umask's bits).
    try:
        fd = _fs.open(path, _NEW, 0o600)
    except FileExistsError:
        return
    try:
        _fs.fchmod(fd, mode)
    finally:
        _fs.close(fd)
