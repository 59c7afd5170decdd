"""Compression of rotated log files (``compress=True``): once each, by one process, off the lock.

A backup ``app.log.N`` is compressed through a temp file named after the
backup's inode, ``.app.log.<inode>.gz.tmp``, whose ``flock`` is the claim: the
process that holds it compresses that backup, nobody else does. The claim is
taken without the write lock (the rotating process, after releasing it) or
with it (a later rotation that finds a plain backup nobody holds: its
compressor died), and a claim is checked to still name the temp file at the
path, so a compressor that already finished (renamed the temp file to
``.gz``) is never redone (pitfall L1). Placing the result, under the write
lock, is two renames: the ``.gz`` goes where the backup is *now* (backups shift
while it compresses), the plain backup goes.
"""

from __future__ import annotations

import fcntl
import os
import re
import zlib
from collections.abc import Callable, Iterable

from racefree import _fs

__all__ = ["Claim", "claim", "compress_into", "place_locked", "sweep_locked", "tmp_path"]

_CHUNK = 1 << 20


class Claim:
    """A backup this process has the right to compress: its descriptor and the locked temp file."""

    __slots__ = ("ino", "out", "path", "src", "tmp")

    def __init__(self, src: int, path: str, ino: int, tmp: str, out: int) -> None:
        self.src = src  # the rotated file, open for reading
        self.path = path  # where it was when claimed
        self.ino = ino
        self.tmp = tmp
        self.out = out  # the temp file, flock()ed: the claim

    def release(self) -> None:
        """Close both descriptors (which drops the claim)."""
        for fd in (self.out, self.src):
            if fd >= 0:
                _fs.close(fd)
        self.out = self.src = -1


def tmp_path(directory: str, base_name: str, ino: int) -> str:
    return os.path.join(directory, f".{base_name}.{ino}.gz.tmp")


def claim(src: int, path: str, directory: str, base_name: str) -> Claim | None:
    """Claim the backup open at ``src``; None if another process compresses it (or did).

    Takes ownership of ``src``: it is closed when the claim fails, else by
    :meth:`Claim.release`.
    """
    ino = _fs.fstat(src).st_ino
    tmp = tmp_path(directory, base_name, ino)
    out = _fs.open(tmp, os.O_RDWR | os.O_CREAT | _fs.O_NOFOLLOW, 0o666)
    try:
        _fs.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The path must still name what we locked: a compressor that finished
        # renamed its temp file to .gz, and we may have opened that inode
        # just before the rename (or made a new file just after it).
        if _fs.stat(tmp).st_ino != _fs.fstat(out).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        _fs.close(out)
        _fs.close(src)
        return None
    except BaseException:
        _fs.close(out)
        _fs.close(src)
        raise
    _fs.ftruncate(out, 0)  # what a dead compressor left is redone from the start
    return Claim(src, path, ino, tmp, out)


def compress_into(job: Claim, sync: Callable[[int], None] | None) -> None:
    """Write the gzip of the backup into the claimed temp file (no lock held)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    offset = 0
    while True:
        block = _fs.pread(job.src, _CHUNK, offset)
        if not block:
            break
        offset += len(block)
        _fs.write_all(job.out, packer.compress(block))
    _fs.write_all(job.out, packer.flush())
    if sync is not None:
        sync(job.out)


def place_locked(job: Claim, candidates: Iterable[str]) -> bool:
    """Under the write lock: rename the .gz next to where the backup is now, drop the plain one.

    False when the backup is gone (``backupCount`` deleted it meanwhile): the
    temp file is removed instead.
    """
    for path in candidates:
        try:
            if _fs.stat(path).st_ino != job.ino:
                continue
        except FileNotFoundError:
            continue
        # A crash between the two leaves both: the .gz is whole (renamed into
        # place), the plain copy a duplicate, never a loss.
        _fs.replace(job.tmp, path + ".gz")
        _fs.unlink(path)
        return True
    _fs.unlink(job.tmp)
    return False


def sweep_locked(
    directory: str, base_name: str, listing: Iterable[str], backups: Iterable[str]
) -> list[Claim]:
    """Under the write lock: claim plain backups nobody compresses; remove dead temp files.

    ``backups`` are the plain backup paths that exist. A temp file whose
    claim is free and whose backup is gone is a dead compressor's leftover.
    """
    pattern = re.compile(rf"^\.{re.escape(base_name)}\.(\d+)\.gz\.tmp$")
    inos = {}
    for path in backups:
        try:
            inos[_fs.stat(path).st_ino] = path
        except FileNotFoundError:
            continue
    claims = []
    for ino, path in inos.items():
        try:
            src = _fs.open(path, os.O_RDONLY | _fs.O_NOFOLLOW, 0)
        except FileNotFoundError:
            continue
        if _fs.fstat(src).st_ino != ino:  # pragma: no cover - renamed under the lock: impossible
            _fs.close(src)
            continue
        job = claim(src, path, directory, base_name)
        if job is not None:
            claims.append(job)
    for name in listing:
        m = pattern.match(name)
        if m is None or int(m.group(1)) in inos:
            continue
        tmp = os.path.join(directory, name)
        try:
            fd = _fs.open(tmp, os.O_RDONLY | _fs.O_NOFOLLOW, 0)
        except FileNotFoundError:
            continue
        try:
            _fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fs.unlink(tmp)  # its compressor is dead and its backup gone
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            _fs.close(fd)
    return claims
