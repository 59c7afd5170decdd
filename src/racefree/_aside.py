"""Copying damaged files aside, durably, before a repair changes them (``racefree check --repair``).

The copy goes to a new directory ``damaged-<UTC time>`` next to the files, and
only in a *held* directory (``racefree._trust.check_held``): one that nobody but
the caller or root can change, from ``/`` down, so that no one can rename the
new directory away and put a link to another directory in its place between
its ``mkdir`` and the copies (``UnsafePathError`` otherwise, before anything is
made). Each source is opened as racefree opens its own files (never through a
link, a regular file of a trusted owner); each copy is created with ``O_EXCL |
O_NOFOLLOW`` (``_trust.open_own``), so nothing planted at a name is followed or
written through. Every copy is fsynced, then the new directory and its parent:
when :func:`copy_aside` returns, the copies survive a power loss, and only then
may the repair change the originals.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from racefree import _fs, _trust
from racefree._errors import UnsafePathError

__all__ = ["copy_aside", "read_regular"]


def read_regular(path: str) -> bytes:
    """The whole file at ``path``: a regular file of a trusted owner, never through a link.

    Opened as racefree opens its own files (``_trust.open_own``): a link, a
    FIFO, a device or another user's file in a shared directory is
    :class:`~racefree.UnsafePathError`.
    """
    fd, _st, _created = _trust.open_own(path, os.O_RDONLY, create=False)
    try:
        return _fs.read_all(fd)
    finally:
        _fs.close(fd)


def copy_aside(directory: str, names: list[str]) -> str:
    """Copy ``directory/name`` for each name into a new ``directory/damaged-<time>/``.

    Returns the new directory's path. Durable when it returns (see the module
    docstring). A name that does not exist is skipped. Raises
    :class:`~racefree.UnsafePathError` if ``directory`` is not held, and
    ``OSError`` (the originals untouched) if anything fails.
    """
    directory = _trust.check_held(directory, "copy damaged files aside in")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        target = os.path.join(directory, f"damaged-{stamp}" + (f"-{n}" if n else ""))
        try:
            _fs.mkdir(target, 0o700)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand repairs in one second
        raise FileExistsError(os.path.join(directory, f"damaged-{stamp}"))
    # In a held directory only the caller or root could have replaced what mkdir made;
    # looked at once more all the same, so that the copies never go anywhere else.
    made = _fs.stat(target, follow_symlinks=False)
    if not stat.S_ISDIR(made.st_mode) or made.st_uid != os.geteuid():
        raise UnsafePathError(target, "was replaced right after racefree made it")
    for name in names:
        try:
            data = read_regular(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        fd, _, _ = _trust.open_own(os.path.join(target, name), os.O_WRONLY)
        try:
            _fs.write_all(fd, data)
            _fs.fsync(fd)
        finally:
            with contextlib.suppress(OSError):
                _fs.close(fd)
    _fs.fsync_dir(target)
    _fs.fsync_dir(directory)
    return target
