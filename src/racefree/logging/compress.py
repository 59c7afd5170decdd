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
import stat
import zlib
from collections.abc import Callable, Iterable

from racefree import _fs, _trust
from racefree._errors import UnsafePathError

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
    :meth:`Claim.release`. The temp file is racefree's own: created with
    ``O_EXCL`` (a file someone planted there is never written into: a link, a
    FIFO or another user's file raises :class:`~racefree.UnsafePathError`), and
    given the backup's mode (and owner, as root) so that a 0600 log's backup
    does not become a 0644 ``.gz``.
    """
    try:
        st = _fs.fstat(src)
        tmp = tmp_path(directory, base_name, st.st_ino)
        out, _, created = _trust.open_own(tmp, os.O_RDWR, 0o600)
    except BaseException:
        _fs.close(src)
        raise
    try:
        _fs.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The path must still name what we locked: a compressor that finished
        # renamed its temp file to .gz, and we may have opened that inode
        # just before the rename.
        if _fs.stat(tmp, follow_symlinks=False).st_ino != _fs.fstat(out).st_ino:
            raise BlockingIOError
        if not created:
            _fs.ftruncate(out, 0)  # what a dead compressor left is redone from the start
        _fs.fchmod(out, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            _fs.fchown(out, st.st_uid, st.st_gid)
    except (BlockingIOError, FileNotFoundError):
        _fs.close(out)
        _fs.close(src)
        return None
    except BaseException:
        _fs.close(out)
        _fs.close(src)
        raise
    return Claim(src, path, st.st_ino, tmp, out)


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
    dir_st = None
    for path in candidates:
        # lstat, and only a regular file the rule trusts: a link another user planted
        # at an older name (``app.log.1 -> app.log.3``), or a hard link of theirs to
        # the backup, would otherwise be taken for it, and the .gz renamed over the
        # newer backup's .gz (that backup lost) while this one stays plain.
        try:
            st = _fs.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if dir_st is None:
            # One directory for every candidate (the log's). Following links: it may be
            # reached through one (resolved under the rule when the log was opened);
            # its own mode decides.
            dir_st = _fs.stat(os.path.dirname(path) or os.curdir)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != job.ino \
                or not _trust.trusted(st, dir_st):
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
) -> tuple[list[Claim], list[UnsafePathError]]:
    """Under the write lock: claim plain backups nobody compresses; remove dead temp files.

    ``backups`` are the plain backup paths that exist. Only a regular file of
    a trusted owner with one link is adopted (a hard link planted at a backup's
    name would otherwise get another file compressed into a ``.gz``). A temp
    file whose claim is free and whose backup is gone is a dead compressor's
    leftover; other users' files are left alone. Returns the claims and the
    refusals (reported by the caller after the record is written).
    """
    pattern = re.compile(rf"^\.{re.escape(base_name)}\.(\d+)\.gz\.tmp$")
    dir_st = _fs.stat(directory)
    claims: list[Claim] = []
    errors: list[UnsafePathError] = []
    inos = set()
    for path in backups:
        try:
            src, st, _ = _trust.open_own(path, os.O_RDONLY, create=False)
        except FileNotFoundError:
            continue
        except UnsafePathError as exc:
            errors.append(exc)
            continue
        if st.st_nlink != 1:
            _fs.close(src)
            errors.append(UnsafePathError(path, f"has {st.st_nlink} links: not compressed"))
            continue
        inos.add(st.st_ino)
        try:
            job = claim(src, path, directory, base_name)
        except UnsafePathError as exc:
            errors.append(exc)
            continue
        if job is not None:
            claims.append(job)
    for name in listing:
        m = pattern.match(name)
        if m is None or int(m.group(1)) in inos:
            continue
        tmp = os.path.join(directory, name)
        try:
            st = _fs.stat(tmp, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not _trust.trusted(st, dir_st):
                continue  # not a leftover of ours: someone else's file, left alone
            fd, _, _ = _trust.open_own(tmp, os.O_RDONLY, create=False)
        except FileNotFoundError:
            continue
        except UnsafePathError as exc:
            errors.append(exc)
            continue
        try:
            _fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fs.unlink(tmp)  # its compressor is dead and its backup gone
        except (BlockingIOError, FileNotFoundError):
            pass  # a live compressor holds it, or another sweep removed it first
        finally:
            _fs.close(fd)
    return claims, errors
