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
    POISONED            present once an fsync failed (writes refused until it is cleared)

Every one of them is opened through ``store.owned``: never through a link, a
FIFO or a device, and only if the trust rule trusts it (see ``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from typing import Any

from racefree import _fs, _json, _trust
from racefree._errors import CorruptFileError, DurabilityError, FormatError, UnsafePathError
from racefree.files.atomic import TEMP_SUFFIX
from racefree.store.owned import open_file, read_small, replace_file, unlink_own
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
# Group commit (``store.commit``): which durable handles to wait for before an fdatasync.
W_RECENT = 8  # bitmap of the slots that published around the last sync
W_SLOTS = 9  # bitmap of the slots claimed since the header was made
W_SLOT0 = 16  # word of slot i (W_SLOT0 + i): the end of that handle's last published record
#: Durable handles that can hold a slot at once (more work, without being waited for).
SLOTS = 64

_ZERO_CHUNK = bytes(1 << 20)
#: A MANIFEST larger than this is damage (it lists segment numbers: a few hundred bytes
#: usually; a million segments would fit).
MANIFEST_LIMIT = 16 << 20
_READ_CHUNK = 1 << 20
_SEG_MAX = (1 << 24) - 1  # segment numbers have 24 bits in the index (segment.pack)


def seg_name(n: int) -> str:
    return f"seg-{n:08d}.rfs"


def seg_number(name: str) -> int | None:
    if name.startswith("seg-") and name.endswith(".rfs") and name[4:-4].isdigit():
        return int(name[4:-4])
    return None


#: Generations are below this (a u64 word in the header, with room to count on).
_GEN_LIMIT = 1 << 63


def read_manifest(directory: str) -> tuple[int, list[int]]:
    """``(gen, segments)`` from the MANIFEST.

    ``FormatError`` if it is not ours (or from a newer racefree); in a directory
    that holds segments, a MANIFEST that does not parse as a store's is
    :class:`CorruptFileError` (damage, never "not a store"), as is one larger
    than any MANIFEST racefree writes (it is not read whole).
    """
    path = os.path.join(directory, MANIFEST)
    raw = read_small(directory, MANIFEST, MANIFEST_LIMIT)
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
        # A generation is a u64 word of the shared header, counted up from 1: a
        # negative one, or one past 2**63, is damage no crash leaves.
        type(gen) is not int
        or not 0 <= gen < _GEN_LIMIT
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
    """Replace the MANIFEST atomically and durably (always fsynced: it names durable data).

    Never through a link: a temp file of its own is renamed over the name
    (``owned.replace_file``); a link or another user's file there is refused.
    """
    body = {"racefree": "store", "format": FORMAT, "gen": gen, "segments": segs}
    replace_file(directory, MANIFEST, (json.dumps(body) + "\n").encode())


def create_segment(directory: str, n: int, size: int, *, zero_fill: bool) -> int:
    """Create segment ``n`` of ``size`` bytes and return its descriptor (read-write).

    With ``zero_fill`` the space is written with real zeros and fdatasynced once,
    so that later commits overwrite allocated blocks: an fdatasync then has no
    size or extent change to commit and costs about half of one after an append.
    Without it the file is sparse (``ftruncate``). Either way the header is
    written and the file and directory entry are synced before this returns, so a
    MANIFEST that lists the segment never names a missing or headerless file.
    The caller holds the write lock, so any file of ours already at this name is
    an orphan of a dead writer and is replaced; an entry the trust rule does not
    trust is left alone (``UnsafePathError``), and the new file is created with
    ``O_EXCL``, so nothing planted there is ever written through.
    """
    name = seg_name(n)
    path = os.path.join(directory, name)
    unlink_own(directory, name)
    fd, _, created = open_file(directory, name, os.O_RDWR, create=True)
    if not created:
        _fs.close(fd)
        raise FileExistsError(errno.EEXIST, "a segment appeared under the write lock", path)
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


def open_segment(directory: str, n: int, *, writable: bool = True) -> tuple[int, int]:
    """Open segment ``n`` and check its header: ``(fd, size)``.

    Never through a link, a FIFO or a device (``owned.open_file``); the file is
    read with ``pread``, never mapped, so a segment that someone truncates is a
    short read (:class:`CorruptFileError`), never a SIGBUS. ``writable=False``
    opens it read-only (checks, read-only handles).
    """
    path = os.path.join(directory, seg_name(n))
    fd, st, _ = open_file(directory, seg_name(n), os.O_RDWR if writable else os.O_RDONLY,
                          create=False)
    try:
        size = st.st_size
        head = _fs.pread(fd, SEG_HEADER.size, 0)
        if size < SEG_HEADER.size or len(head) < SEG_HEADER.size:
            raise CorruptFileError(path, f"segment is {size} bytes, shorter than its header")
        magic, number = SEG_HEADER.unpack(head)
        if magic != SEG_MAGIC:
            raise FormatError(path, "not a racefree store segment")
        if number != n:
            raise CorruptFileError(path, f"segment header says {number}, expected {n}", offset=0)
    except BaseException:
        _fs.close(fd)
        raise
    return fd, size


def read_segment_into(fd: int, stop: int, buf: bytearray) -> memoryview:
    """A segment's bytes from its start to ``stop`` (fewer if the file is shorter now),
    read into ``buf`` (at least ``stop`` bytes, reused across segments: opening a large
    store reads every segment, and a fresh buffer each time would fault in new memory)."""
    view = memoryview(buf)
    pos = 0
    while pos < stop:
        n = _fs.preadinto(fd, view[pos:stop], pos)
        if n <= 0:
            break
        pos += n
    return view[:pos]


def read_segment(fd: int, start: int, stop: int) -> bytes:
    """The bytes of a segment from ``start`` to ``stop`` (fewer if the file is shorter now)."""
    parts: list[bytes] = []
    pos = start
    while pos < stop:
        block = _fs.pread(fd, min(stop - pos, 32 * _READ_CHUNK), pos)
        if not block:
            break
        parts.append(block)
        pos += len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


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
        _fs.stat(os.path.join(directory, MANIFEST), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _unused_first_segment(directory: str) -> bool:
    """Whether segment 1 holds no record: a store creation that never finished."""
    try:
        fd, st, _ = open_file(directory, seg_name(1), os.O_RDONLY, create=False)
    except FileNotFoundError:
        return True  # a racing creator replaced it (under the write lock): look again there
    try:
        header = SEG_HEADER.pack(SEG_MAGIC, 1)
        data = _fs.pread(fd, SEG_HEADER.size, 0)
        if not all(b in (0, e) for b, e in zip(data, header, strict=False)):
            return False
        # Read in chunks up to the size fstat gave: bounded, whatever the file does.
        pos = SEG_HEADER.size
        while pos < st.st_size:
            block = _fs.pread(fd, min(_READ_CHUNK, st.st_size - pos), pos)
            if not block:
                break
            if block.rstrip(b"\0"):
                return False
            pos += len(block)
        return True
    finally:
        _fs.close(fd)


def poison_marker(directory: str) -> bool:
    """Whether an earlier fsync failed (the ``POISONED`` marker exists).

    A marker must be a regular file the trust rule trusts: anything else at the
    name is :class:`UnsafePathError` (it could neither be trusted nor replaced by
    a real marker when the next fsync fails).
    """
    path = os.path.join(directory, POISONED)
    try:
        st = _fs.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, "is not a regular file; the store cannot tell whether it"
                              " is poisoned")
    _trust.check(path, st, _fs.stat(directory, follow_symlinks=False), "use")
    return True


def write_poison_marker(directory: str, reason: str) -> None:
    """Record durably that an fsync failed, so that writes stay refused after every reopen.

    fsyncgate (W7): after a failed fdatasync the kernel may have dropped the dirty
    pages and marked them clean; a later fdatasync then succeeds and later records
    would claim "synced" past a hole. The marker outlives every handle.
    """
    fd = open_file(directory, POISONED, os.O_WRONLY, create=True)[0]
    try:
        _fs.ftruncate(fd, 0)
        _fs.write_all(fd, (reason + "\n").encode("utf-8", "backslashreplace"))
        _fs.fsync(fd)
    finally:
        _fs.close(fd)
    _fs.fsync_dir(directory)


def clear_poison_marker(directory: str) -> None:
    """Remove the ``POISONED`` marker durably (after the data was rewritten and synced)."""
    unlink_own(directory, POISONED)
    fsync_dir(directory)
