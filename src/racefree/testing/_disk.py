"""The harness's own file I/O: scanning a directory, writing and removing replayed states.

The harness stands on the far side of the seam: it *is* the recording, failing
or crash-replaying file system. Its own reads and writes therefore go to one
private :class:`racefree._fs.FileSystem` instance, the real file system, and
never through the module-level seam functions that :func:`racefree._fs.use`
swaps: replaying a crash state must not be recorded, and a fault injected
into the code under test must not hit the harness.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod

from racefree import _fs

__all__ = ["REAL", "read_bytes", "read_tree", "remove_tree", "write_tree"]

#: The real file system, whatever :func:`racefree._fs.use` has installed.
REAL = _fs.FileSystem()

Tree = dict[str, "bytes | None"]


def read_bytes(path: str) -> bytes:
    """The whole regular file at ``path``: never through a final symlink, never blocking.

    A FIFO or a device at the name raises ``OSError(EINVAL)``: another user may
    swap one in (a rename, in a shared directory) between the scan's ``lstat``
    and this open, and a blocking open of a FIFO would hang the harness for ever.
    """
    data = _read_regular(path)
    if data is None:
        raise OSError(errno.EINVAL, "not a regular file (it changed since it was looked at)",
                      path)
    return data


def _read_regular(path: str) -> bytes | None:
    """The whole file at ``path`` if it is a regular file (checked on the descriptor), else None."""
    fd = REAL.open(path, os.O_RDONLY | _fs.O_NOFOLLOW | _fs.O_NONBLOCK)
    try:
        if not statmod.S_ISREG(REAL.fstat(fd).st_mode):
            return None
        parts: list[bytes] = []
        while chunk := REAL.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        REAL.close(fd)


def read_tree(path: str | os.PathLike[str], *, ignore: tuple[str, ...] = ()) -> Tree:
    """A directory as ``relative path -> bytes`` (``None`` for a directory).

    Symbolic links and other special files are left out, as are names in ``ignore``.
    """
    base = os.fspath(path)
    out: Tree = {}

    def walk(directory: str, prefix: str) -> None:
        for name in sorted(REAL.listdir(directory)):
            if name in ignore:
                continue
            full = os.path.join(directory, name)
            st = REAL.stat(full, follow_symlinks=False)
            if statmod.S_ISDIR(st.st_mode):
                out[prefix + name] = None
                walk(full, prefix + name + "/")
            elif statmod.S_ISREG(st.st_mode):
                data = _read_regular(full)  # None: swapped for a special file since
                if data is not None:
                    out[prefix + name] = data

    walk(base, "")
    return out


def write_tree(dest: str | os.PathLike[str], files: Tree) -> str:
    """Create ``dest`` (and missing parents) holding ``files``; returns its path."""
    root = os.fspath(dest)
    _makedirs(root)
    for rel, data in sorted(files.items()):
        target = os.path.join(root, *rel.split("/"))
        if data is None:
            _makedirs(target)
            continue
        _makedirs(os.path.dirname(target))
        fd = REAL.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _fs.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[REAL.write(fd, view):]
        finally:
            REAL.close(fd)
    return root


def _makedirs(path: str) -> None:
    if not path:
        return
    try:
        st = REAL.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        _makedirs(os.path.dirname(path))
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
            REAL.mkdir(path, 0o755)
        st = REAL.stat(path, follow_symlinks=False)
    if not statmod.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything under it, never following a symbolic link.

    A missing ``path`` is not an error; any other failure is raised.
    """
    top = os.fspath(path)
    try:
        st = REAL.stat(top, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not statmod.S_ISDIR(st.st_mode):
        REAL.unlink(top)
        return
    for name in REAL.listdir(top):
        remove_tree(os.path.join(top, name))
    REAL.rmdir(top)
