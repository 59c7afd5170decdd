"""``racefree check PATH``: find racefree's files under PATH and verify each one.

What PATH may be, and how each kind is recognised (by content, never by name
alone):

- a **store**: a directory with a ``MANIFEST`` that says ``"racefree": "store"``;
  its segments are mapped read-only and every frame, checksum and document is
  verified (without opening it as a store: nothing is written). A directory
  with segments but no ``MANIFEST`` is a store that lost it: damage;
- a **log**: a file whose first line is an :class:`~racefree.AppendLog` header;
  verified by :meth:`racefree.AppendLog.check` (framing, checksums, JSON,
  the snapshot against the segment). Its ``.snapshot`` is checked with it;
- a **JSON file**: a ``*.json`` file, or any file whose content starts like a
  JSON object or array; verified by parsing it (:class:`~racefree.JsonFile`);
- a **directory** holding any of these: each one found is checked (not
  following symlinks, not descending into a store).

Lock files, lock sidecars and the store's shared header are recognised and
skipped; a leftover temp file (``*.rftmp``) is reported, not damage.

Checking writes nothing.

``repair=True`` truncates a log's incomplete last record (a crash in the middle
of an append); for a store, it opens it (which zeroes an incomplete last
record, the store's own recovery) and, if an fsync had failed (the store is
poisoned: ``POISONED``), rewrites its live data durably and clears the marker
(see ``docs/store.md``). A damaged record with good records after it is never
touched, and nothing in a JSON file is.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from racefree import _fs
from racefree._errors import CorruptFileError, FormatError

if TYPE_CHECKING:
    from racefree.log.appendlog import AppendLog

__all__ = ["Found", "check_path"]

_SKIP_SUFFIXES = (".lock", ".token", ".shm")
_LOG_MAGIC_PREFIX = b"racefree-log"


@dataclasses.dataclass
class Found:
    """One thing ``check`` found: what it is, whether it is whole, and the details."""

    path: str
    kind: str  # "store" | "log" | "json" | "temp" | "unknown"
    ok: bool
    detail: str
    repaired: bool = False


def check_path(path: str | os.PathLike[str], *, repair: bool = False) -> list[Found]:
    """Every racefree file under ``path`` and what checking it found (see the module doc).

    Raises ``FileNotFoundError`` if ``path`` does not exist.
    """
    p = os.fspath(path)
    st = _fs.stat(p)  # FileNotFoundError for a missing path: the caller's mistake
    if stat.S_ISDIR(st.st_mode):
        if _is_store(p):
            return [_check_store(p, repair)]
        lost = _lost_manifest(p)
        if lost is not None:
            return [lost]
        return list(_walk(p, repair))
    found = _check_file(p, repair, explicit=True)
    return [found] if found is not None else []


def _walk(directory: str, repair: bool) -> Iterator[Found]:
    for name in sorted(_fs.listdir(directory)):
        full = os.path.join(directory, name)
        try:
            st = _fs.stat(full, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we looked
        if stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode):
            lost = None if _is_store(full) else _lost_manifest(full)
            if _is_store(full):
                yield _check_store(full, repair)
            elif lost is not None:
                yield lost
            else:
                yield from _walk(full, repair)
        elif stat.S_ISREG(st.st_mode):
            found = _check_file(full, repair, explicit=False)
            if found is not None:
                yield found


def _is_store(directory: str) -> bool:
    try:
        head = _fs.read_file(os.path.join(directory, "MANIFEST"))[:200]
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    return b'"racefree"' in head and b'"store"' in head


def _lost_manifest(directory: str) -> Found | None:
    """A directory with store segments but no MANIFEST: a store that lost it (damage)."""
    from racefree.store.files import is_store_dir_empty, seg_number

    names = _fs.listdir(directory)
    if not any(seg_number(name) is not None for name in names):
        return None
    try:
        is_store_dir_empty(directory)
    except CorruptFileError as exc:
        return Found(directory, "store", False, str(exc))
    return Found(directory, "store", True, "an unfinished store creation (no MANIFEST, no data)")


def _exists(path: str) -> bool:
    try:
        _fs.stat(path)
    except FileNotFoundError:
        return False
    return True


def _head(path: str, n: int = 64) -> bytes:
    fd = _fs.open(path, os.O_RDONLY)
    try:
        return _fs.pread(fd, n, 0)
    finally:
        _fs.close(fd)


def _is_log(path: str, head: bytes) -> bool:
    from racefree.log.scan import read_header

    try:
        return read_header(head) is not None
    except (ValueError, CorruptFileError, FormatError):
        return False


def _check_file(path: str, repair: bool, *, explicit: bool) -> Found | None:
    name = os.path.basename(path)
    if name.endswith(".rftmp"):
        return Found(path, "temp", True, "a temp file left by a killed writer (racefree.sweep "
                     "removes it once its writer is dead)")
    if name.endswith(_SKIP_SUFFIXES) and not explicit:
        return None
    if name.endswith(".snapshot") and _exists(path[: -len(".snapshot")]):
        return None  # checked with its log
    head = _head(path)
    if _is_log(path, head):
        return _check_log(path, repair)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if name.endswith(".json") or stripped[:1] in (b"{", b"["):
        return _check_json(path)
    if explicit:
        return Found(path, "unknown", False, "not a racefree file (not a store, log or JSON file)")
    return None


def _check_json(path: str) -> Found:
    from racefree.files.jsonfile import JsonFile

    try:
        value = JsonFile(path).read()
    except CorruptFileError as exc:
        return Found(path, "json", False, str(exc))
    kind = type(value).__name__
    return Found(path, "json", True, f"valid JSON ({kind}, {_fs.stat(path).st_size} bytes)")


def _check_log(path: str, repair: bool) -> Found:
    from racefree.log.appendlog import AppendLog

    log = AppendLog(path)
    try:
        try:
            report = log.check()
        except (CorruptFileError, FormatError) as exc:
            return Found(path, "log", False, str(exc))
        detail = (f"{report.records} records (sequence {report.first}..{report.next - 1}), "
                  f"{report.size} bytes")
        if report.snapshot_upto is not None:
            detail += f", snapshot up to {report.snapshot_upto}"
        if not report.torn:
            return Found(path, "log", True, detail)
        if not repair:
            return Found(path, "log", True, f"{detail}; an incomplete last record of "
                         f"{report.torn} bytes (invisible; the next append or --repair removes it)")
        _truncate_torn_tail(log, report.size - report.torn, report.size)
        return Found(path, "log", True, f"{detail}; removed an incomplete last record of "
                     f"{report.torn} bytes", repaired=True)
    finally:
        log.close()


def _truncate_torn_tail(log: AppendLog, keep: int, size: int) -> None:
    """Cut the log back to ``keep`` bytes, under its writers' lock, if it is still ``size``.

    Re-checked under the lock: an append that landed meanwhile means the tail
    was repaired by its writer, and nothing is cut.
    """
    from racefree.lock.filelock import FileLock

    # ``{log}.lock`` is the FileLock every appender holds (docs/log.md): while we hold
    # it no append can land between the check and the cut.
    with FileLock(log.path + ".lock", make_parents=False):
        report = log.check()
        if report.size != size or report.size - report.torn != keep or not report.torn:
            return
        fd = _fs.open(log.path, os.O_WRONLY)
        try:
            _fs.ftruncate(fd, keep)
            _fs.fsync(fd)
        finally:
            _fs.close(fd)


def _check_store(directory: str, repair: bool) -> Found:
    from racefree.store.compact import check_files

    # Read-only: opening a Store could run its recovery (zero a torn tail, remove
    # orphan segments); only --repair may change a store.
    try:
        found = check_files(directory)
    except (CorruptFileError, FormatError) as exc:
        return Found(directory, "store", False, str(exc))
    if repair and (found.torn_bytes or found.poisoned):
        return _repair_store(directory)
    detail = _describe(found.report)
    if found.torn_bytes:
        detail += (f"; an incomplete last record of {found.torn_bytes} bytes (invisible; the "
                   "next open or writer, or --repair, removes it)")
    if found.poisoned:
        return Found(directory, "store", False, detail + "; POISONED: an fsync failed, so "
                     "writes are refused; after checking the data, --repair rewrites it "
                     "durably and clears the marker")
    return Found(directory, "store", True, detail)


def _repair_store(directory: str) -> Found:
    from racefree.store.compact import repair
    from racefree.store.store import Store

    try:
        store = Store(directory)
    except (CorruptFileError, FormatError) as exc:
        return Found(directory, "store", False, str(exc))
    try:
        try:
            cleared = repair(store._core)
            report = store.check()
        except (CorruptFileError, FormatError) as exc:
            return Found(directory, "store", False, str(exc))
        done = "rewrote the data durably and cleared POISONED" if cleared else (
            "removed an incomplete last record")
        return Found(directory, "store", True, f"{_describe(report)}; {done}", repaired=True)
    finally:
        store.close()


def _describe(report: object) -> str:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        fields = dataclasses.asdict(report)
        shown = {k: v for k, v in fields.items() if isinstance(v, (int, float, str, bool))}
        return ", ".join(f"{k}={v}" for k, v in list(shown.items())[:8])
    return str(report)
