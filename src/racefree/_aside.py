"""Copying damaged files aside, durably, before a repair changes them (``racefree check --repair``).

The copy goes to a new directory ``damaged-<UTC time>`` next to the files. Each
source is opened with ``O_NOFOLLOW`` and checked with ``fstat`` to be a regular
file; each copy is created with ``O_EXCL | O_NOFOLLOW`` (``_trust.open_own``), so
nothing planted at a name is followed or written through. Every copy is fsynced,
then the new directory and its parent: when :func:`copy_aside` returns, the
copies survive a power loss, and only then may the repair change the originals.
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
    """The whole file at ``path``, which must be a regular file (never through a link)."""
    fd = _fs.open(path, os.O_RDONLY | _fs.O_NOFOLLOW | _fs.O_NONBLOCK)
    try:
        st = _fs.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(path, f"is {_trust.describe(st)}, not a regular file")
        return _fs.read_all(fd)
    finally:
        _fs.close(fd)


def copy_aside(directory: str, names: list[str]) -> str:
    """Copy ``directory/name`` for each name into a new ``directory/damaged-<time>/``.

    Returns the new directory's path. Durable when it returns (see the module
    docstring). A name that does not exist is skipped. Raises ``OSError`` (the
    originals untouched) if anything fails.
    """
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
