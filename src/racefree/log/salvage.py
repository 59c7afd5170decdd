"""Salvage of a damaged log (``racefree check --repair``): keep every intact record.

:func:`plan` reads the log and changes nothing: its header line, every frame
whose checksum holds and whose record parses, and every damaged byte range
between them. :func:`apply`, under the writers' lock, copies the log aside
(``damaged-<time>/``, durably) and replaces it with its header and the kept
frames, byte for byte (``atomic_write``: fsync, rename, directory fsync).
Handles of other processes notice the new file at their next call, as after a
compaction.

Sequence numbers are positions, so the records after a lost one move down:
the report says which numbers were lost and by how much the later ones moved.
A damaged header line is rebuilt when what it held is known: from the
snapshot (a compacted log's generation and first record are the snapshot's),
or, with no snapshot, from what is left of the line (a log that was never
compacted starts at record 0, generation 0); the report says which. A log
whose snapshot is damaged, or whose header says it was compacted but has no
snapshot, cannot be made whole (the records folded into the snapshot are
unknown): nothing is touched then, and ``problem`` says why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from racefree import _aside, _fs, _json
from racefree._errors import CorruptFileError, FormatError
from racefree.files.atomic import atomic_write
from racefree.log import frame as _frame
from racefree.log.locking import LogLock
from racefree.log.scan import Snapshot, count, decode, read_header, read_snapshot
from racefree.log.scan import header as _header

__all__ = ["LogLoss", "LogPlan", "apply", "plan"]

_loads = json.JSONDecoder().decode


@dataclass(frozen=True)
class LogLoss:
    """A damaged byte range of the log and the sequence numbers of the records it held."""

    start: int  #: the first damaged byte
    end: int  #: one past the last
    line: int  #: its first line (1-based)
    first: int  #: the sequence number of its first record
    records: int  #: how many records it held (as far as its lines tell)
    why: str
    torn: bool = False  #: an append a crash cut short (never acknowledged), not damage

    def describe(self) -> str:
        nums = (f"record {self.first}" if self.records == 1
                else f"records {self.first}-{self.first + self.records - 1}")
        what = "incomplete (an append a crash cut short)" if self.torn else f"damaged: {self.why}"
        return f"{nums}, bytes {self.start}-{self.end} (line {self.line}): {what}"


@dataclass
class LogPlan:
    """What a salvage of one log keeps and loses (see the module docstring)."""

    path: str
    keep: bytes = b""  #: the new contents: the header line and every kept frame
    records: int = 0  #: records kept after the snapshot
    losses: list[LogLoss] = field(default_factory=list)
    problem: str | None = None
    header: str | None = None  #: how a damaged header line was rebuilt, if it was

    @property
    def damaged(self) -> bool:
        return self.header is not None or any(not loss.torn for loss in self.losses)

    def report(self) -> list[str]:
        lines = [] if self.header is None else [self.header]
        lines += [f"lost {loss.describe()}" for loss in self.losses]
        shift = 0
        for loss in self.losses:
            shift += loss.records
            if not loss.torn:
                lines.append(f"renumbered: the records after {loss.first + loss.records - 1} "
                             f"now have numbers {shift} lower")
        return lines


def plan(path: str) -> LogPlan:
    """Read the log at ``path`` and decide what a salvage keeps; writes nothing."""
    out = LogPlan(path)
    data = _aside.read_regular(path)
    try:
        snap = read_snapshot(path + ".snapshot", state=True)
        try:
            head = read_header(data[:4096], path)
        except FormatError as exc:
            if "newer racefree" in exc.detail:
                raise
            head = _rebuilt_header(path, data, snap, out)
    except (CorruptFileError, FormatError) as exc:
        out.problem = f"cannot be made whole: {exc}"
        return out
    if head is None:
        return out
    gen, base, start = head
    parts = [data[:start] if out.header is None else _header(gen, base)]
    seq, pos = base, start
    while pos < len(data):
        frames, end = _frame.scan(data, pos)
        for offset, body in frames:
            stop = data.index(b"\n", offset) + 1
            try:
                n = len(decode(path, offset, body))
            except CorruptFileError as exc:
                out.losses.append(LogLoss(offset, stop, _line(data, offset), seq, 1, exc.detail))
                seq += 1
                continue
            parts.append(data[offset:stop])
            seq += n
            out.records += n
        if end >= len(data):
            break
        nxt = _frame.find_next(data, end)
        stop = len(data) if nxt < 0 else nxt
        span = data[end:stop]
        # As the log's reader judges it: with nothing valid after it, only a frame that
        # had been written whole is damage; anything else is an append cut short.
        torn = nxt < 0 and not _frame.damaged_in_place(span)
        why = ("a damaged record with valid records after it" if nxt >= 0
               else "the last record is whole but fails its checksum")
        k = _records_in(path, span)
        out.losses.append(LogLoss(end, stop, _line(data, end), seq, k, why, torn))
        seq += k
        if nxt < 0:
            break
        pos = nxt
    out.keep = b"".join(parts)
    return out


def _rebuilt_header(path: str, data: bytes, snap: Snapshot | None,
                    out: LogPlan) -> tuple[int, int, int]:
    """``(generation, base, offset of the first record)`` for a log whose first line is damaged.

    The first line is the header (racefree writes it first, whole, with
    ``atomic_write``). Its values come from the snapshot when there is one:
    compaction writes the snapshot's ``segment`` and ``upto`` as the new
    segment's generation and base. Without one the log was never compacted, so
    it starts at record 0; the damaged line may still tell the generation.
    Sets ``out.header``; :class:`FormatError` if it cannot be rebuilt.
    """
    nl = data.find(b"\n", 0, 4096)
    if nl < 0:
        raise FormatError(path, "not a racefree log: no header line in its first 4096 bytes")
    if snap is not None:
        gen, base, source = snap.gen, snap.upto, "from its snapshot"
    else:
        gen, base = _left_of(data[:nl])
        if base:
            raise FormatError(path, f"the header is damaged and says the log was compacted "
                              f"(its first record is {base}), but it has no snapshot")
        source = "no snapshot: the log was never compacted, so it starts at record 0"
    out.header = (f"rebuilt the damaged header (line 1, bytes 0-{nl + 1}): generation {gen}, "
                  f"first record {base} ({source})")
    return gen, base, nl + 1


def _left_of(line: bytes) -> tuple[int, int]:
    """``(segment, base)`` from what is left of a damaged header line; ``(0, 0)`` if unreadable."""
    body = line.split(b" ", 2)[-1]
    try:
        obj = _json.parse(_loads, body.decode())
    except (ValueError, _json.TooDeep):
        return 0, 0
    if not isinstance(obj, dict):
        return 0, 0
    gen, base = obj.get("segment"), obj.get("base")
    if type(gen) is int and type(base) is int and gen >= 0 and base >= 0:
        return gen, base
    return 0, 0


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _records_in(path: str, span: bytes) -> int:
    """Records a damaged span held: one per line, a batch's count where its header is readable."""
    total = 0
    for line in span.split(b"\n"):
        if not line.strip(b"\0"):
            continue
        got = _frame.decode_at(line + b"\n", 0)
        body = got[0] if got is not None else line.split(b" ", 2)[-1]
        try:
            total += count(path, 0, body)
        except CorruptFileError:
            total += 1
    return max(total, 1)


def apply(path: str) -> tuple[LogPlan, str | None]:
    """Salvage the log at ``path``: ``(plan, where the damaged log was copied)``.

    Under the writers' lock, so no append lands between the read and the
    replacement. The copy directory is None when nothing was touched (see
    ``plan.problem``).
    """
    # Nothing here follows a link at the log's name: it is read with O_NOFOLLOW, its
    # identity compared by lstat, and the rebuilt log replaces the name itself. Another
    # user who may swap the name for a link (a group directory's member) never turns
    # the repair towards another file (docs/security.md, case 2).
    with LogLock(path, timeout=30):
        before = _fs.stat(path, follow_symlinks=False)
        out = plan(path)
        if out.problem is not None or not (out.losses or out.header):
            return out, None
        directory = os.path.dirname(os.path.abspath(path))
        saved = _aside.copy_aside(directory, [os.path.basename(path)])
        now = _fs.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size) != (before.st_dev, before.st_ino, before.st_size):
            out.problem = "the log changed while it was being salvaged; run it again"
            return out, saved
        atomic_write(path, out.keep, durable=True, follow_symlinks=False)
        return out, saved
