"""``racefree check PATH``: find racefree's files under PATH and verify each one.

What PATH may be, and how each kind is recognised (by content, never by name
alone):

- a **store**: a directory with a ``MANIFEST`` that says ``"racefree": "store"``;
  its segments are mapped read-only and every frame, checksum and document is
  verified (without opening it as a store: nothing is written). A directory
  with segments and a missing or unreadable ``MANIFEST`` is a store that lost
  it: damage (only an unfinished creation, a first segment holding no record
  and no MANIFEST at all, is not);
- a **log**: a file whose first line is an :class:`~racefree.AppendLog` header;
  verified by :meth:`racefree.AppendLog.check` (framing, checksums, JSON,
  the snapshot against the segment). Its ``.snapshot`` is checked with it.
  A log whose header is damaged is still recognised (by what is left of the
  header, by the frames after it, or by its snapshot: :mod:`racefree.check.logs`)
  and reported as damaged, not skipped;
- a **lock file**: an empty ``*.lock`` (a :class:`~racefree.FileLock`'s) or one
  holding a :class:`~racefree.LockFile` owner record;
- a **JSON file**: a ``*.json`` file, one that a :class:`~racefree.JsonFile`
  keeps a ``.lock`` sidecar for, or a file PATH names that parses as JSON;
  verified by parsing it;
- a **directory** holding any of these: each one found is checked (not
  following symlinks, not descending into a store).

Anything else is "skipped" (``pyproject.toml``, ``setup.cfg``, a ``Cargo.lock``):
it is not racefree's to judge. The store's shared header and token counters
are racefree's own and not listed; a leftover temp file (``*.rftmp``) is a
note, not damage.

Other users (``docs/security.md``): below PATH, another user's entry of a
shared directory (``/tmp``) is not read, and a directory owned by a user other
than the caller or root is not descended into: both are reported as skipped,
with the reason. PATH itself is checked whoever owns it (the caller named it);
a file PATH names that is another user's in a shared directory, a FIFO or a
device raises :class:`~racefree.UnsafePathError`.

Checking writes nothing.

``repair=True`` repairs what a crash leaves (a log's or a store's incomplete
last record, under its lock) and clears a poisoned store (see
``docs/store.md``). A store or log with damage is *salvaged*
(:mod:`racefree.store.salvage`, :mod:`racefree.log.salvage`): its files are
copied aside to ``damaged-<time>/``, every intact record is kept, the damaged
ones are dropped and named in ``lost``, and the result is rebuilt durably.
When it cannot be made whole, nothing is touched and ``problem`` says why.
Nothing in a JSON file is ever changed. Repairs write only in a directory that
nobody but the caller or root can change, from ``/`` down
(``racefree._trust.check_held``); elsewhere nothing is changed and the report
says why.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterator

from racefree import _fs, _trust
from racefree._errors import CorruptFileError, FormatError, UnsafePathError
from racefree.check.logs import HEAD, SALVAGE_HINT, check_log, looks_like_log
from racefree.check.report import Found, not_held

__all__ = ["Found", "check_path"]

_OWN_SUFFIXES = (".token", ".shm")


def check_path(path: str | os.PathLike[str], *, repair: bool = False) -> list[Found]:
    """Every file under ``path`` and what checking it found (see the module doc).

    Raises ``FileNotFoundError`` if ``path`` does not exist, and
    :class:`~racefree.UnsafePathError` if it goes through a link that another
    user planted in a shared directory (links are followed under racefree's
    rule, see ``docs/security.md``), or names a FIFO, a device or a socket.
    """
    where = _trust.resolve(os.fspath(path))
    if where.st is None:  # the caller's mistake
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
    p, st = where.path, where.st
    if stat.S_ISDIR(st.st_mode):
        if _is_store(p):
            return [_check_store(p, repair)]
        lost = _lost_manifest(p, repair)
        if lost is not None:
            return [lost]
        return list(_walk(p, repair))
    found = _check_file(p, repair, explicit=True)
    return [found] if found is not None else []


def _walk(directory: str, repair: bool) -> Iterator[Found]:
    dir_st = _fs.stat(directory, follow_symlinks=False)
    for name in sorted(_fs.listdir(directory)):
        full = os.path.join(directory, name)
        try:
            st = _fs.stat(full, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we looked
        if stat.S_ISLNK(st.st_mode):
            continue
        if not _trust.trusted(st, dir_st):
            # Another user's entry of a shared directory (/tmp): not racefree's data.
            yield Found(full, "skipped", True, f"{_trust.describe(st)} owned by uid {st.st_uid} in "
                        "a shared directory: not trusted, not read (docs/security.md)")
            continue
        if stat.S_ISDIR(st.st_mode):
            if _trust.foreign(st):
                # Theirs to change under us at any moment: racefree does nothing there on
                # its own initiative (name it to check it; repairs stay refused).
                yield Found(full, "skipped", True, f"a directory owned by uid {st.st_uid}: not "
                            "descended into (racefree checks below PATH only what the caller "
                            "or root owns; name it to check it)")
            else:
                try:
                    store = _is_store(full)
                except UnsafePathError as exc:
                    # A link, a FIFO or another user's file at its MANIFEST: a store that
                    # cannot be used (it would refuse to open); the walk goes on.
                    yield Found(full, "store", False, f"cannot be used: {exc}")
                    continue
                if store:
                    yield _check_store(full, repair)
                elif (lost := _lost_manifest(full, repair)) is not None:
                    yield lost
                elif not name.startswith("damaged-"):  # a salvage's copies: not live
                    yield from _walk(full, repair)
        elif stat.S_ISREG(st.st_mode):
            try:
                found = _check_file(full, repair, explicit=False)
            except UnsafePathError as exc:
                # Swapped for a link, a FIFO or another user's file since the listing.
                found = Found(full, "skipped", True, f"not read: {exc.reason}")
            if found is not None:
                yield found


def _is_store(directory: str) -> bool:
    # The MANIFEST's first bytes, read as the store reads its own files: never through
    # a link, never blocking on a FIFO, never more than a few bytes (UnsafePathError for
    # a link, a FIFO or a device there: the store would refuse to open too).
    try:
        fd, _st, _created = _trust.open_own(
            os.path.join(directory, "MANIFEST"), os.O_RDONLY, create=False
        )
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    try:
        head = _fs.pread(fd, 200, 0)
    finally:
        _fs.close(fd)
    return b'"racefree"' in head and b'"store"' in head


def _lost_manifest(directory: str, repair: bool) -> Found | None:
    """A directory with store segments but no usable MANIFEST: a store that lost it (damage)."""
    from racefree.store.files import MANIFEST, is_store_dir_empty, seg_number

    names = _fs.listdir(directory)
    if not any(seg_number(name) is not None for name in names):
        return None
    if MANIFEST in names:
        # atomic_write publishes a MANIFEST whole: one that is not a store's was damaged.
        detail = f"{os.path.join(directory, MANIFEST)}: the MANIFEST is damaged"
    else:
        try:
            is_store_dir_empty(directory)
        except CorruptFileError as exc:
            detail = str(exc)
        else:
            return Found(directory, "store", True,
                         "an unfinished store creation (no MANIFEST, no data)")
    if repair:
        return _salvage_store(directory, detail)
    return Found(directory, "store", False, detail + SALVAGE_HINT)


def _head(path: str, n: int = HEAD) -> bytes:
    # Never blocks on a FIFO, never follows a link another user planted (UnsafePathError).
    fd, _st = _trust.open_followed(path, os.O_RDONLY)
    try:
        return _fs.pread(fd, n, 0)
    finally:
        _fs.close(fd)


def _check_file(path: str, repair: bool, *, explicit: bool) -> Found | None:
    name = os.path.basename(path)
    if name.endswith(".rftmp"):
        return Found(path, "temp", True, "a temp file left by a killed writer (racefree.sweep "
                     "removes it once its writer is dead)")
    if name.endswith(".token") and _fs.exists(path[: -len(".token")]):
        return _check_token(path, explicit)
    if name.endswith(_OWN_SUFFIXES) and not explicit:
        return None  # the store's shared header, a token counter with no lock: racefree's own
    if name.endswith(".snapshot") and _fs.exists(path[: -len(".snapshot")]):
        return None  # checked with its log
    head = _head(path)
    if not name.endswith(".json") and looks_like_log(path, head):
        return check_log(path, repair)
    if name.endswith(".lock"):
        return _check_lock(path)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if name.endswith(".json") or (stripped[:1] in (b"{", b"[") and _fs.exists(path + ".lock")):
        return _check_json(path)
    if explicit and stripped[:1] in (b"{", b"["):
        found = _check_json(path)
        if found.ok:
            return found
    return Found(path, "skipped", True, "not a racefree file (not a store, log, lock or JSON file)")


def _check_token(path: str, explicit: bool) -> Found | None:
    """A LockFile's fencing-token counter (``P.lock.token``): one decimal number.

    A damaged one makes every acquisition of the lock raise ``CorruptFileError``;
    it is never read as 0 (tokens would go backwards), and ``--repair`` cannot
    know the last token handed out, so it is reported, never rewritten. A whole
    one is reported only when named (it goes with its lock file otherwise).
    """
    from racefree.lockfile.token import read_token

    try:
        token = read_token(path[: -len(".token")])
    except CorruptFileError as exc:
        return Found(path, "lock", False, f"a LockFile's fencing-token counter is damaged"
                     f" ({exc.detail}): the lock cannot be taken until it holds a number above"
                     " every token already handed out (not repaired: racefree cannot know it)")
    if not explicit:
        return None
    return Found(path, "lock", True, f"a LockFile's fencing-token counter: {token}")


def _check_lock(path: str) -> Found:
    from racefree.lockfile.owner import MAX_RECORD, decode

    fd, _st, _created = _trust.open_own(path, os.O_RDONLY, create=False)
    try:
        data = _fs.pread(fd, MAX_RECORD + 1, 0)
    finally:
        _fs.close(fd)
    if not data:
        return Found(path, "lock", True, "a lock file (empty: a FileLock's)")
    record = decode(data)
    if record is not None:
        return Found(path, "lock", True, f"a LockFile held by pid {record.pid} on "
                     f"{record.host!r}, fencing token {record.token}")
    if b'"racefree"' in data[:MAX_RECORD]:
        return Found(path, "lock", True, "a LockFile whose owner record is malformed: it is "
                     "judged by its age (stale after stale_after)")
    return Found(path, "skipped", True, "not a racefree lock file")


def _check_json(path: str) -> Found:
    from racefree.files.jsonfile import JsonFile

    try:
        value = JsonFile(path).read()
    except (CorruptFileError, FormatError) as exc:
        return Found(path, "json", False, str(exc))
    kind = type(value).__name__
    return Found(path, "json", True, f"valid JSON ({kind}, {_fs.stat(path).st_size} bytes)")


def _check_store(directory: str, repair: bool) -> Found:
    from racefree.store.compact import check_files

    # Read-only: opening a Store could run its recovery (zero a torn tail, remove
    # orphan segments); only --repair may change a store.
    try:
        found = check_files(directory)
    except (CorruptFileError, FormatError) as exc:
        if repair and not _newer_format(exc):
            return _salvage_store(directory, str(exc))
        return Found(directory, "store", False, str(exc) + SALVAGE_HINT)
    if repair and (found.torn_bytes or found.poisoned):
        refused = not_held(directory)
        if refused is None:
            return _repair_store(directory)
        return Found(directory, "store", not found.poisoned,
                     f"{_describe(found.report)}; not repaired: {refused}")
    detail = _describe(found.report)
    if found.torn_bytes:
        detail += (f"; an incomplete last record of {found.torn_bytes} bytes (invisible; the "
                   "next open or writer, or --repair, removes it)")
    if found.poisoned:
        return Found(directory, "store", False, detail + "; POISONED: an fsync failed, so "
                     "writes are refused; after checking the data, --repair rewrites it "
                     "durably and clears the marker")
    return Found(directory, "store", True, detail)


def _newer_format(exc: Exception) -> bool:
    return isinstance(exc, FormatError) and "not supported" in exc.detail


def _salvage_store(directory: str, damage: str) -> Found:
    from racefree.store.salvage import apply
    from racefree.store.store import Store

    refused = not_held(directory)
    if refused is not None:
        return Found(directory, "store", False, f"{damage}; not repaired: {refused}")
    plan, saved = apply(directory)
    if plan.problem is not None or saved is None:
        why = plan.problem or "nothing could be salvaged"
        return Found(directory, "store", False, f"not repaired, nothing changed: {why}")
    try:
        with Store(directory) as store:
            report = store.check()
    except (CorruptFileError, FormatError) as exc:
        return Found(directory, "store", False, f"salvaged into a store that does not open: "
                     f"{exc}", lost=plan.report())
    return Found(directory, "store", True, f"salvaged: {_describe(report)}; the damaged files "
                 f"were copied to {saved}", repaired=True, lost=plan.report())


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
