"""Salvage of a damaged store (``racefree check --repair``): keep every intact record.

The model is SQLite's ``.recover``: a damaged database gives back everything
that is still readable. :func:`plan` reads the store's files and changes
nothing: every segment the MANIFEST names (every ``seg-*.rfs`` file, if the
MANIFEST is lost or damaged), every frame whose checksum holds, applied in the
order they were written (a later record of an id replaces an earlier one, a
delete leaves a tombstone), and every damaged byte range between them, with
what can still be read of the records in it (ids, versions). :func:`apply`
then, with no other process using the store:

1. copies the MANIFEST and every segment aside, durably (``damaged-<time>/``);
2. writes the kept documents and tombstones into new segments (the compaction
   writer), fdatasyncs them, and replaces the MANIFEST: the commit point. A
   crash before it leaves the store as it was (the new segments are orphans
   the next salvage ignores); after it, the salvaged store;
3. removes the old segments (their copies are aside) and a ``POISONED`` marker
   (the data was just rewritten durably).

Records are numbered from 1 in the order they were written, segment by
segment; a damaged range counts as one record unless the headers in it still
tell where each record starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field

from racefree import _aside, _fs, _json
from racefree._errors import CorruptFileError, FormatError
from racefree.store.compact import Writer
from racefree.store.files import (
    LOCK,
    MANIFEST,
    POISONED,
    SHM,
    fdatasync,
    fsync_dir,
    read_manifest,
    seg_name,
    seg_number,
    write_manifest,
)
from racefree.store.index import State
from racefree.store.segment import (
    ENTRY,
    FRAME,
    FRAME_MAGIC,
    MIN_FRAME,
    OP_DELETE,
    OP_PUT,
    PREFIX,
    SEG_HEADER,
    SEG_MAGIC,
    explain,
    frame_at,
)

__all__ = ["Loss", "Plan", "apply", "plan"]

_FIRST = 1 << 20
_LARGEST = 32 << 20


@dataclass(frozen=True)
class Loss:
    """A damaged byte range of one file, and what can be read of the records in it."""

    file: str  #: the file's name in the store directory
    start: int  #: the first damaged byte
    end: int  #: one past the last damaged byte
    records: tuple[int, int]  #: the record numbers it covered (first, last)
    entries: tuple[tuple[str, str, int], ...]  #: ``(op, id, version)`` still readable in it
    why: str  #: what is wrong there
    torn: bool = False  #: a write a crash cut short (never acknowledged), not damage
    exact: bool = True  #: False: the range may have held more records than ``records`` says

    def describe(self) -> str:
        first, last = self.records
        nums = f"record {first}" if first == last else f"records {first}-{last}"
        if not self.exact:
            nums += " or more (no record header is readable past that)"
        what = "incomplete (a write a crash cut short)" if self.torn else f"damaged: {self.why}"
        text = f"{nums}, {self.file} bytes {self.start}-{self.end}: {what}"
        if self.entries:
            text += "; it held " + ", ".join(f"{op} {key!r} version {v}"
                                             for op, key, v in self.entries)
        elif not self.torn:
            text += "; which ids it held cannot be read"
        return text


@dataclass
class Plan:
    """What a salvage keeps and loses. Computed by :func:`plan` without writing anything."""

    directory: str
    gen: int  #: the MANIFEST's generation (0 if it is lost)
    segments: list[int]  #: the segment files read
    manifest: str  #: "ok", or what is wrong with the MANIFEST
    kept: dict[str, tuple[int, bytes]] = field(default_factory=dict)  #: id -> (version, doc)
    tombs: dict[str, int] = field(default_factory=dict)  #: deleted id -> version
    losses: list[Loss] = field(default_factory=list)
    problem: str | None = None  #: why it cannot be made whole (nothing is then touched)

    @property
    def damaged(self) -> bool:
        return self.manifest != "ok" or any(not loss.torn for loss in self.losses)

    def lost_ids(self) -> list[str]:
        """Lines naming each id whose last readable write is in a damaged record."""
        out = []
        for loss in self.losses:
            for op, key, version in loss.entries:
                have = self.kept[key][0] if key in self.kept else self.tombs.get(key)
                if have is not None and have >= version:
                    continue  # an intact copy of that write, or a later one, is kept
                if have is None:
                    out.append(f"{key!r}: {op} version {version} lost; nothing of it is kept")
                else:
                    state = "kept" if key in self.kept else "deleted"
                    out.append(f"{key!r}: {op} version {version} lost; version {have} is {state}")
        return out

    def report(self) -> list[str]:
        lines = []
        if self.manifest != "ok":
            lines.append(f"MANIFEST: {self.manifest}; rebuilt from the segment files "
                         f"{', '.join(seg_name(s) for s in self.segments) or '(none)'}")
        lines += [f"lost {loss.describe()}" for loss in self.losses]
        lines += [f"lost {line}" for line in self.lost_ids()]
        return lines


def plan(directory: str) -> Plan:
    """Read the store at ``directory`` and decide what a salvage keeps; writes nothing."""
    try:
        gen, segs = read_manifest(directory)
        manifest = "ok"
    except FileNotFoundError:
        gen, segs, manifest = 0, _segment_files(directory), "missing"
    except CorruptFileError as exc:
        gen, segs, manifest = 0, _segment_files(directory), f"damaged ({exc.detail})"
    out = Plan(directory, gen, list(segs), manifest)
    if not segs:
        out.problem = "no segment file to salvage anything from"
        return out
    counter = [0]
    for seg in segs:
        try:
            data = _aside.read_regular(os.path.join(directory, seg_name(seg)))
        except FileNotFoundError:
            counter[0] += 1
            out.losses.append(Loss(seg_name(seg), 0, 0, (counter[0], counter[0]), (),
                                   "the segment file is missing: all its records"))
            continue
        _scan_segment(out, seg, data, counter, last=seg == segs[-1])
    for key, (version, doc) in list(out.kept.items()):
        try:
            value = _json.parse(json.loads, doc)
            ok = isinstance(value, dict)
        except (ValueError, _json.TooDeep):
            ok = False
        if not ok:  # a checksum that holds over a document that does not parse
            del out.kept[key]
            out.losses.append(Loss("(documents)", 0, 0, (0, 0), (("put", key, version),),
                                   "its document does not parse as a JSON object"))
    return out


def _segment_files(directory: str) -> list[int]:
    return sorted(n for name in _fs.listdir(directory) if (n := seg_number(name)) is not None)


def _scan_segment(out: Plan, seg: int, data: bytes, counter: list[int], *, last: bool) -> None:
    name = seg_name(seg)
    if len(data) < SEG_HEADER.size or data[:8] != SEG_MAGIC:
        counter[0] += 1
        out.losses.append(Loss(name, 0, min(len(data), SEG_HEADER.size), (counter[0], counter[0]),
                               (), "the segment's header is damaged (its records are read on)"))
    pos = SEG_HEADER.size
    size = len(data)
    while pos < size:
        n = frame_at(data, pos)
        if n > 0:
            counter[0] += 1
            parsed = _entries(data, pos + PREFIX, pos + n)
            if parsed is not None:
                for op, key, version, doc in parsed:
                    if op == OP_PUT:
                        out.kept[key] = (version, doc)
                        out.tombs.pop(key, None)
                    else:
                        out.kept.pop(key, None)
                        out.tombs[key] = version
                pos += n
                continue
            counter[0] -= 1  # a whole frame whose entries do not parse: damaged
        nxt = _next_valid(data, pos + 1)
        stop = size if nxt < 0 else nxt
        rest = data[pos:stop].rstrip(b"\0")
        if not rest:
            if nxt < 0:
                return  # zeros to the end: the end of the data
            why = "zeros where records were (a lost page or an unwritten hole)"
        else:
            why = explain(data, pos, stop, 0) or (
                "part of it reads as zeros, and valid records follow it" if nxt >= 0
                else "a write cut short")
        torn = nxt < 0 and last and explain(data, pos, stop, 0) is None
        end = pos + len(rest) if nxt < 0 else stop
        count, readable, exact = _damaged_records(data, pos, end)
        first = counter[0] + 1
        counter[0] += count
        out.losses.append(Loss(name, pos, end, (first, counter[0]), readable, why, torn,
                               exact or torn))
        if nxt < 0:
            return
        pos = nxt


def _next_valid(data: bytes, start: int) -> int:
    magic = FRAME.pack(FRAME_MAGIC, 0, 0)[:4]
    at = data.find(magic, start)
    while at != -1:
        if frame_at(data, at) > 0 and _entries(data, at + PREFIX, at + frame_at(data, at)):
            return at
        at = data.find(magic, at + 1)
    return -1


def _entries(data: bytes, p: int, end: int) -> list[tuple[int, str, int, bytes]] | None:
    """The entries of a payload ``data[p:end]``; None if they do not parse."""
    out = []
    while p < end:
        if p + ENTRY.size > end:
            return None
        op, idlen, version, doclen = ENTRY.unpack_from(data, p)
        ida = p + ENTRY.size
        q = ida + idlen + doclen
        if op not in (OP_PUT, OP_DELETE) or q > end:
            return None
        try:
            key = data[ida:ida + idlen].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
        out.append((op, key, version, data[ida + idlen:q]))
        p = q
    return out or None


Entries = tuple[tuple[str, str, int], ...]


def _damaged_records(data: bytes, pos: int, end: int) -> tuple[int, Entries, bool]:
    """How many records ``data[pos:end]`` held, the ``(op, id, version)`` still readable,
    and whether that count is exact.

    Walks the frame headers while they look whole (magic, a length that fits),
    reading each entry header whose lengths fit; stops at the first that does not.
    What is left after that is counted as one record, but may have held more.
    """
    count, seen = 0, []
    while pos + MIN_FRAME <= end:
        magic, plen, _ = FRAME.unpack_from(data, pos)
        stop = pos + FRAME.size + plen
        if magic != FRAME_MAGIC or stop > end or plen < MIN_FRAME - FRAME.size:
            break
        count += 1
        p = pos + PREFIX
        while p + ENTRY.size <= stop:
            op, idlen, version, doclen = ENTRY.unpack_from(data, p)
            if op not in (OP_PUT, OP_DELETE) or p + ENTRY.size + idlen + doclen > stop:
                break
            raw = data[p + ENTRY.size:p + ENTRY.size + idlen]
            seen.append(("put" if op == OP_PUT else "delete",
                         raw.decode("utf-8", "surrogateescape"), version))
            p += ENTRY.size + idlen + doclen
        pos = stop
    exact = pos >= end
    if not exact or not count:
        count += 1  # what is left is (part of) one more record, maybe of several
    return count, tuple(seen), exact


def _lock(directory: str, name: str) -> int | None:
    """An exclusive, non-blocking flock on the store's ``name``; None if the file is missing."""
    try:
        fd = _fs.open(os.path.join(directory, name), os.O_RDWR | _fs.O_NOFOLLOW | _fs.O_NONBLOCK)
    except FileNotFoundError:
        return None  # no process has the store open: each one holds these files open
    try:
        _fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _fs.close(fd)
        raise
    return fd


def apply(directory: str) -> tuple[Plan, str | None]:
    """Salvage the store at ``directory``: ``(plan, where the damaged files were copied)``.

    The copy directory is None when nothing was touched: the plan's ``problem``
    says why (the store is open in another process, nothing can be read, a
    newer format). Raises ``OSError`` if writing fails; the old files are then
    in force, or the new ones (the MANIFEST rename is the commit point).
    """
    fds: list[int] = []
    try:
        try:
            # Every process with the store open holds a shared flock on store.shm and
            # a writer holds store.lock: exclusive tries that succeed mean nobody can
            # read or write the store while its files are replaced.
            for name in (SHM, LOCK):
                fd = _lock(directory, name)
                if fd is not None:
                    fds.append(fd)
        except BlockingIOError:
            out = Plan(directory, 0, [], "ok",
                       problem="the store is open in another process; close it first")
            return out, None
        try:
            out = plan(directory)
        except FormatError as exc:
            return Plan(directory, 0, [], "ok", problem=str(exc)), None
        if out.problem is not None:
            return out, None
        names = [MANIFEST, *(seg_name(s) for s in out.segments)]
        saved = _aside.copy_aside(directory, names)
        _rewrite(out)
        return out, saved
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                _fs.close(fd)


def _rewrite(out: Plan) -> None:
    directory = out.directory
    existing = _segment_files(directory)
    first = max([*existing, *out.segments, 0]) + 1
    live = sum(len(doc) + len(key) + 64 for key, (_, doc) in out.kept.items())
    size = _FIRST
    while size < live + live // 4 and size < _LARGEST:
        size *= 2
    new = State(out.gen + 1, [], 0)
    writer = Writer(directory, size, new, first)
    try:
        for key in sorted(out.kept):
            version, doc = out.kept[key]
            writer.add(OP_PUT, key.encode("utf-8", "surrogatepass"), version, doc)
        for key in sorted(out.tombs):
            writer.add(OP_DELETE, key.encode("utf-8", "surrogatepass"), out.tombs[key], b"")
        if writer.seg < 0:
            writer.new_segment(0)
        writer.flush()
        for seg in new.segs:
            # A failure raises (never retried, W7): the MANIFEST is then never switched.
            fdatasync(new.fds[seg], os.path.join(directory, seg_name(seg)))
        write_manifest(directory, out.gen + 1, list(new.segs))
    finally:
        new.close()
    for seg in out.segments:
        with contextlib.suppress(FileNotFoundError):
            _fs.unlink(os.path.join(directory, seg_name(seg)))
    with contextlib.suppress(FileNotFoundError):
        _fs.unlink(os.path.join(directory, POISONED))
    fsync_dir(directory)
