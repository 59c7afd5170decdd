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
A log whose header or snapshot is damaged cannot be made whole (the sequence
numbers, or the records folded into the snapshot, are unknown): nothing is
touched then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from racefree import _aside, _fs
from racefree._errors import CorruptFileError, FormatError
from racefree.files.atomic import atomic_write
from racefree.lock.filelock import FileLock
from racefree.log import frame as _frame
from racefree.log.scan import count, decode, read_header, read_snapshot

__all__ = ["LogLoss", "LogPlan", "apply", "plan"]


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

    @property
    def damaged(self) -> bool:
        return any(not loss.torn for loss in self.losses)

    def report(self) -> list[str]:
        lines = [f"lost {loss.describe()}" for loss in self.losses]
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
        head = read_header(data[:4096], path)
        read_snapshot(path + ".snapshot", state=True)
    except (CorruptFileError, FormatError) as exc:
        out.problem = f"cannot be made whole: {exc}"
        return out
    if head is None:
        return out
    _, base, start = head
    parts = [data[:start]]
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
        # As the log's reader judges it: with nothing valid after it, only a whole line
        # that fails its checksum is damage; anything else is an append cut short.
        torn = nxt < 0 and (b"\n" not in span
                            or not _frame.damaged_in_place(span[: span.index(b"\n") + 1]))
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
    with FileLock(path + ".lock", timeout=30, make_parents=False):
        before = _fs.stat(path, follow_symlinks=False)
        out = plan(path)
        if out.problem is not None or not out.losses:
            return out, None
        directory = os.path.dirname(os.path.abspath(path))
        saved = _aside.copy_aside(directory, [os.path.basename(path)])
        now = _fs.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size) != (before.st_dev, before.st_ino, before.st_size):
            out.problem = "the log changed while it was being salvaged; run it again"
            return out, saved
        atomic_write(path, out.keep, durable=True, follow_symlinks=False)
        return out, saved
