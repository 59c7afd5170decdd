"""The files of a :class:`racefree.Store` directory, and the shared header every process maps.

A store directory holds::

    MANIFEST            {"racefree": "store", "format": 1, "gen": G, "segments": [N, ...]}
                        the live segments, replaced atomically (the commit point of a
                        segment roll and of a compaction)
    seg-NNNNNNNN.rfs    segments of framed records (see ``store.segment``); a file that the
                        MANIFEST does not list is an orphan (an unfinished roll or
                        compaction) and is never read
    store.lock          flock: held by a writer while it appends (the write lock)
    sync.lock           flock: held by the one process running the group commit fdatasync
    store.shm           a 4 KiB header every process maps (like SQLite's wal-index):
                        the published end, the synced end, the generation, counters.
                        It is a cache of the files: the first process to open the store
                        rebuilds it from them (it holds a shared flock on it while open,
                        so "exclusive flock succeeds" means "nobody else has it open").
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
from typing import Any

from racefree import _fs, _json
from racefree._errors import CorruptFileError, DurabilityError, FormatError
from racefree.files.atomic import TEMP_SUFFIX, atomic_write
from racefree.store.segment import SEG_HEADER, SEG_MAGIC

MANIFEST = "MANIFEST"
LOCK = "store.lock"
SYNC_LOCK = "sync.lock"
SHM = "store.shm"
#: Present once an fsync failed: every process refuses writes until it is cleared (W7).
POISONED = "POISONED"
FORMAT = 1
SHM_SIZE = 4096
SHM_MAGIC = 0x3130304D48535246  # "RFSHM001", little-endian

# Word indexes of the shared header (u64 each).
W_MAGIC = 0
W_END = 1  # published end: seg << 40 | offset; every byte before it is a complete frame
W_SYNCED = 2  # every byte before this position has been fdatasynced
W_GEN = 3  # compaction generation (the MANIFEST's "gen" once published)
W_POISON = 4  # an fdatasync failed: no process writes any more (pitfall W7)
W_DEAD = 5  # bytes of overwritten and deleted records (a hint for auto-compaction)
W_TOTAL = 6  # bytes of all records
W_INPROG = 7  # a compaction to this generation is in flight (0: none)

_ZERO_CHUNK = bytes(1 << 20)
# A MANIFEST lists segment numbers: a few hundred bytes; one larger than this is damage.
_MANIFEST_MAX = 1 << 20
_SEG_MAX = (1 << 24) - 1  # segment numbers have 24 bits in the index (segment.pack)


def seg_name(n: int) -> str:
    return f"seg-{n:08d}.rfs"


def seg_number(name: str) -> int | None:
    if name.startswith("seg-") and name.endswith(".rfs") and name[4:-4].isdigit():
        return int(name[4:-4])
    return None


def read_manifest(directory: str) -> tuple[int, list[int]]:
    """``(gen, segments)`` from the MANIFEST.

    ``FormatError`` if it is not ours (or from a newer racefree); in a directory
    that holds segments, a MANIFEST that does not parse as a store's is
    :class:`CorruptFileError` (damage, never "not a store"), as is one larger
    than any MANIFEST racefree writes (it is not read whole).
    """
    path = os.path.join(directory, MANIFEST)
    fd = _fs.open(path, os.O_RDONLY)
    try:
        raw = _fs.pread(fd, _MANIFEST_MAX + 1, 0)
    finally:
        _fs.close(fd)
    if len(raw) > _MANIFEST_MAX:
        raise CorruptFileError(path, f"the MANIFEST is larger than {_MANIFEST_MAX} bytes: damaged")
    try:
        data: Any = _json.parse(json.loads, raw)
        ok = isinstance(data, dict) and data.get("racefree") == "store"
    except (ValueError, _json.TooDeep):
        ok = False
    if not ok:
        # A store names itself in its MANIFEST; anything else in a directory that
        # holds segments is a MANIFEST that was damaged (replaced, emptied, torn).
        if _has_segments(directory):
            raise CorruptFileError(path, "the MANIFEST is damaged: it does not name the store's"
                                   " segments (racefree check --repair salvages them)")
        raise FormatError(path, "not a racefree store manifest")
    if data.get("format") != FORMAT:
        raise FormatError(path, f"store format {data.get('format')!r} is not supported")
    segs = data.get("segments")
    gen = data.get("gen")
    if (
        not isinstance(gen, int)
        or not isinstance(segs, list)
        or not segs
        or not all(isinstance(s, int) and 0 < s <= _SEG_MAX for s in segs)
        or segs != sorted(set(segs))
    ):
        raise CorruptFileError(path, "malformed manifest")
    return gen, segs


def _has_segments(directory: str) -> bool:
    try:
        return any(seg_number(name) is not None for name in _fs.listdir(directory))
    except OSError:
        return False


def write_manifest(directory: str, gen: int, segs: list[int]) -> None:
    """Replace the MANIFEST atomically and durably (always fsynced: it names durable data)."""
    body = {"racefree": "store", "format": FORMAT, "gen": gen, "segments": segs}
    atomic_write(os.path.join(directory, MANIFEST), json.dumps(body) + "\n", durable=True)


def create_segment(directory: str, n: int, size: int, *, zero_fill: bool) -> int:
    """Create segment ``n`` of ``size`` bytes and return its descriptor (read-write).

    With ``zero_fill`` the space is written with real zeros and fdatasynced once,
    so that later commits overwrite allocated blocks: an fdatasync then has no
    size or extent change to commit and costs about half of one after an append.
    Without it the file is sparse (``ftruncate``). Either way the header is
    written and the file and directory entry are synced before this returns, so a
    MANIFEST that lists the segment never names a missing or headerless file.
    The caller holds the write lock, so any file already at this name is an
    orphan of a dead writer and is replaced.
    """
    path = os.path.join(directory, seg_name(n))
    with contextlib.suppress(FileNotFoundError):
        _fs.unlink(path)
    fd = _fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _fs.O_NOFOLLOW, 0o666)
    try:
        _fs.pwrite_all(fd, SEG_HEADER.pack(SEG_MAGIC, n), 0)
        if zero_fill:
            pos = SEG_HEADER.size
            while pos < size:
                chunk = min(size - pos, len(_ZERO_CHUNK))
                _fs.pwrite_all(fd, memoryview(_ZERO_CHUNK)[:chunk], pos)
                pos += chunk
        else:
            _fs.ftruncate(fd, size)
        fdatasync(fd, path)
        fsync_dir(directory)
    except BaseException:
        _fs.close(fd)
        with contextlib.suppress(OSError):
            _fs.unlink(path)
        raise
    return fd


def fsync_dir(directory: str) -> None:
    """fsync a directory's entries, turning a failure into :class:`DurabilityError` (W2, W7)."""
    try:
        _fs.fsync_dir(directory)
    except OSError as exc:
        raise DurabilityError(directory, exc.errno or errno.EIO, "directory fsync") from exc


def fdatasync(fd: int, path: str) -> None:
    """fdatasync, turning a failure into :class:`DurabilityError` (never retried: W7)."""
    try:
        _fs.fdatasync(fd)
    except OSError as exc:
        raise DurabilityError(path, exc.errno or errno.EIO) from exc


def open_segment(directory: str, n: int, *, writable: bool = True) -> tuple[int, mmap.mmap]:
    """Open and map segment ``n``; checks its header.

    ``writable=False`` opens the file read-only (for checks that must change nothing);
    the map itself is read-only either way (records are written with ``pwrite``).
    """
    path = os.path.join(directory, seg_name(n))
    fd = _fs.open(path, (os.O_RDWR if writable else os.O_RDONLY) | _fs.O_NOFOLLOW)
    try:
        size = _fs.fstat(fd).st_size
        if size < SEG_HEADER.size:
            raise CorruptFileError(path, f"segment is {size} bytes, shorter than its header")
        mm = _fs.mmap(fd, size)
        magic, number = SEG_HEADER.unpack_from(mm, 0)
        if magic != SEG_MAGIC:
            mm.close()
            raise FormatError(path, "not a racefree store segment")
        if number != n:
            mm.close()
            raise CorruptFileError(path, f"segment header says {number}, expected {n}", offset=0)
    except BaseException:
        _fs.close(fd)
        raise
    return fd, mm


def open_shm(directory: str) -> tuple[int, mmap.mmap]:
    """Open (creating if needed) and map the shared header (no lock needed: creating it and
    growing it to ``SHM_SIZE`` are idempotent, and its contents are only trusted once a
    first opener has rebuilt it under the write lock)."""
    path = os.path.join(directory, SHM)
    fd = _fs.open(path, os.O_RDWR | os.O_CREAT | _fs.O_NOFOLLOW, 0o666)
    try:
        if _fs.fstat(fd).st_size < SHM_SIZE:
            _fs.ftruncate(fd, SHM_SIZE)
        mm = _fs.mmap(fd, SHM_SIZE, writable=True)
    except BaseException:
        _fs.close(fd)
        raise
    return fd, mm


def is_store_dir_empty(directory: str) -> bool:
    """True when ``directory`` holds nothing but what a store's creation leaves before its MANIFEST.

    Also True when a MANIFEST appeared since the caller looked (a racing creator
    finished): the caller then opens that store.

    That is: the lock and shm files, the MANIFEST's temp file, and at most
    ``seg-00000001.rfs`` holding no record (every byte after its header zero; its
    header whole, torn or zero): another process may be creating the store right
    now, or died doing it, and nothing was ever acknowledged. Any other segment,
    or a first segment with data, is a store that lost its MANIFEST:
    :class:`CorruptFileError`, so that nobody creates a store over it (and wipes
    its records as orphans). Any other file: False (not a store, not empty).
    """
    ours = {LOCK, SYNC_LOCK, SHM}
    names = _fs.listdir(directory)
    if MANIFEST in names:
        return True  # a racing creator finished since the caller looked: a store now
    segs = [name for name in names if seg_number(name) is not None]
    if segs and (segs != [seg_name(1)] or not _unused_first_segment(directory)):
        # A record is written only once the MANIFEST exists, and the MANIFEST is never
        # removed (compaction replaces it by rename). So if it exists now, the records
        # just read were written by a store a racing creator finished after our
        # listing: not a lost MANIFEST.
        if _manifest_exists(directory):
            return True
        raise CorruptFileError(
            directory, "segments but no MANIFEST; refusing to create a store over them"
        )
    return all(
        name in ours
        or name == seg_name(1)
        or (name.startswith(f".{MANIFEST}.") and name.endswith(TEMP_SUFFIX))
        for name in names
    )


def _manifest_exists(directory: str) -> bool:
    try:
        _fs.stat(os.path.join(directory, MANIFEST))
    except FileNotFoundError:
        return False
    return True


def _unused_first_segment(directory: str) -> bool:
    """Whether segment 1 holds no record: a store creation that never finished."""
    try:
        data = _fs.read_file(os.path.join(directory, seg_name(1)))
    except FileNotFoundError:
        return True  # a racing creator replaced it (under the write lock): look again there
    header = SEG_HEADER.pack(SEG_MAGIC, 1)
    whole_or_torn = all(b in (0, e) for b, e in zip(data[: SEG_HEADER.size], header, strict=False))
    return whole_or_torn and not data[SEG_HEADER.size:].rstrip(b"\0")


def poison_marker(directory: str) -> bool:
    """Whether an earlier fsync failed (the ``POISONED`` marker exists)."""
    try:
        _fs.stat(os.path.join(directory, POISONED))
    except FileNotFoundError:
        return False
    return True


def write_poison_marker(directory: str, reason: str) -> None:
    """Record durably that an fsync failed, so that writes stay refused after every reopen.

    fsyncgate (W7): after a failed fdatasync the kernel may have dropped the dirty
    pages and marked them clean; a later fdatasync then succeeds and later records
    would claim "synced" past a hole. The marker outlives every handle.
    """
    path = os.path.join(directory, POISONED)
    fd = _fs.open(path, os.O_WRONLY | os.O_CREAT | _fs.O_NOFOLLOW, 0o666)
    try:
        _fs.write_all(fd, (reason + "\n").encode("utf-8", "backslashreplace"))
        _fs.fsync(fd)
    finally:
        _fs.close(fd)
    _fs.fsync_dir(directory)


def clear_poison_marker(directory: str) -> None:
    """Remove the ``POISONED`` marker durably (after the data was rewritten and synced)."""
    with contextlib.suppress(FileNotFoundError):
        _fs.unlink(os.path.join(directory, POISONED))
    fsync_dir(directory)
