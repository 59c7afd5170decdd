"""The one rule racefree follows before it follows a link, replaces or adopts a file, or trusts one.

Another local user who may create entries in a directory racefree uses (the
system's temporary directory, a shared project directory) can plant a symbolic
link, a FIFO or a file of their own at a name racefree is about to use, or swap
one in between a check and a use. The kernel has rules against the classic
cases (``fs.protected_symlinks``, ``fs.protected_regular``), but they depend on
sysctls, and racefree resolves links and renames files in ways they do not see
(a rename over a planted file gets past ``protected_regular``). So racefree
applies the same rule itself, whatever the sysctls say:

    An entry of a *shared* directory (sticky, and writable by its group or by
    others) is trusted only if it belongs to the caller (the effective uid) or
    to the directory's owner. Entries of any other directory are trusted: only
    the users who may write that directory could have made them, and they may
    replace any entry of it anyway.

"Trusted" is what racefree needs before it follows a symbolic link (anywhere
in a path), replaces an existing file or adopts its mode and owner, or opens a
file it owns (a lock sidecar, a MANIFEST, a temp file) that already exists.
Everything else raises :class:`~racefree.UnsafePathError` (a ``PermissionError``)
naming the path and the reason, before anything is written.

Why a check here is not a time-of-check-to-time-of-use race: in a shared
directory, the sticky bit lets only an entry's owner and the directory's owner
rename or remove it, and those are exactly the users the rule trusts; in any
other directory, everyone who could swap an entry is trusted. What racefree
opens itself is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with
``fstat`` on the descriptor it then uses, so nothing is swapped between the
check and the use. See ``docs/security.md`` for the threat model.

The calls: :func:`resolve` (a path resolved as the kernel would, every link
checked before it is followed), :func:`check` (refuse an untrusted entry),
:func:`open_own` (open or create one of racefree's own files) and
:func:`open_followed` (open a file the caller named, such as a JSON file, for
reading or writing in place: links followed under the rule, never blocking).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from racefree import _fs
from racefree._errors import UnsafePathError

__all__ = [
    "Resolved",
    "check",
    "describe",
    "enforce",
    "open_followed",
    "open_own",
    "resolve",
    "shared",
    "trusted",
]

#: The rule is on. Only the tests switch it off, to show that the hostile-user
#: suite fails without it; nothing in racefree reads an environment variable for it.
enforce = True

#: As many links as the kernel follows in one path (Linux: 40) before ``ELOOP``.
_MAX_LINKS = 40
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
#: How often a path that changes under us (a link swapped in after it was
#: resolved) is resolved again before giving up.
_MAX_SWAPS = 4


def shared(dir_st: os.stat_result) -> bool:
    """Whether other users may create entries here but not replace ours: sticky and writable."""
    mode = dir_st.st_mode
    return bool(mode & stat.S_ISVTX) and bool(mode & _SHARED_WRITE)


def trusted(entry_st: os.stat_result, dir_st: os.stat_result) -> bool:
    """Whether an entry (its own lstat, never a link target) of a directory is trusted."""
    if not enforce or not shared(dir_st):
        return True
    uid = entry_st.st_uid
    return uid == os.geteuid() or uid == dir_st.st_uid


def describe(st: os.stat_result) -> str:
    """What kind of entry ``st`` is, for an error message ("a FIFO", "a directory", ...)."""
    mode = st.st_mode
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"  # pragma: no cover - every POSIX type is listed above


def check(path: str, entry_st: os.stat_result, dir_st: os.stat_result, action: str) -> None:
    """Raise :class:`UnsafePathError` unless the rule lets racefree ``action`` this entry.

    ``action`` completes the message: "follow", "replace", "use".
    """
    if trusted(entry_st, dir_st):
        return
    raise UnsafePathError(
        path,
        f"refusing to {action} {describe(entry_st)} owned by uid {entry_st.st_uid} in a shared"
        f" directory (sticky, writable by others) that uid {dir_st.st_uid} owns: only the"
        " caller's own entries and the directory owner's are trusted there",
    )


def _absolute(text: str) -> str:
    """``text`` made absolute by prefixing the working directory, without normalising it."""
    return text if text.startswith("/") else os.path.join(os.getcwd(), text)


class Resolved(NamedTuple):
    """A path resolved under the rule: every link on the way was trusted."""

    path: str  # absolute, with no symbolic link left in it (but the last, if not followed)
    st: os.stat_result | None  # lstat of the last component; None if it does not exist
    dir_st: os.stat_result  # stat of the directory that holds it


def resolve(path: str | os.PathLike[str], *, follow_last: bool = True) -> Resolved:
    """Resolve ``path`` as the kernel would, checking every symbolic link it follows.

    Each link is looked at in the directory that holds it and followed only if
    the rule trusts it (``UnsafePathError`` otherwise), so a link another user
    planted in a shared directory, anywhere in the path, is never followed.
    With ``follow_last=False`` a link at the last component is returned as is.
    The last component may be missing (``st`` is None); a missing directory on
    the way raises ``FileNotFoundError``, a file there ``NotADirectoryError``.
    """
    text = os.fspath(path)
    if not text:
        raise FileNotFoundError(errno.ENOENT, "empty path", text)
    # Not os.path.abspath: it would drop "link/.." by spelling, where the kernel
    # goes to the link target's parent. ".." is resolved below, after the links.
    pending = _names(_absolute(text))  # a stack: the next component is pending[-1]
    # "file/" names a directory: the kernel refuses it if it is not one.
    want_dir = text.endswith(("/", "/.", "/.."))
    lstat = _fs.stat
    cur = ""  # the directory reached so far, "" for "/"; it holds no link
    cur_st = lstat("/", follow_symlinks=False)
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            # cur holds no link, so its parent by name is its parent on disk.
            cur = cur.rpartition("/")[0]
            cur_st = lstat(cur or "/", follow_symlinks=False)
            continue
        nxt = cur + "/" + name
        last = not pending
        try:
            st = lstat(nxt, follow_symlinks=False)
        except FileNotFoundError:
            if last:
                return Resolved(nxt, None, cur_st)
            raise
        mode = st.st_mode
        if stat.S_ISLNK(mode) and (follow_last or not last):
            check(nxt, st, cur_st, "follow")
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), text)
            try:
                target = _fs.readlink(nxt)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
                # No longer a link (or gone): it was swapped since the lstat, by
                # someone the rule trusts (the check above passed). Look again.
                pending.append(name)
                continue
            if target.startswith("/"):
                cur = ""
                cur_st = lstat("/", follow_symlinks=False)
            pending += _names(target)
            continue
        if not stat.S_ISDIR(mode) and (not last or want_dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), nxt)
        if last:
            return Resolved(nxt, st, cur_st)
        cur, cur_st = nxt, st
    # The path named a directory ("/", "a/..", "d/."): its own directory holds it.
    parent = cur.rpartition("/")[0]
    return Resolved(cur or "/", cur_st, lstat(parent or "/", follow_symlinks=False))


def _names(path: str) -> list[str]:
    """The components of ``path`` that name something, last first (a stack)."""
    names = [n for n in path.split("/") if n and n != "."]
    names.reverse()
    return names


def open_own(
    path: str | os.PathLike[str],
    flags: int,
    mode: int = 0o666,
    *,
    create: bool = True,
) -> tuple[int, os.stat_result, bool]:
    """Open a file racefree owns (a lock file, a MANIFEST, a sidecar): never through a link.

    The directory part of ``path`` is resolved under the rule; the file itself
    is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO or a device never blocks
    the open) and checked with ``fstat`` on the returned descriptor: it must be
    a regular file, and an existing one must be trusted. Created with
    ``O_CREAT | O_EXCL`` when missing (if ``create``), so racefree never opens
    a file someone planted in the instant between "missing" and "create".
    ``flags`` must not hold ``O_CREAT``, ``O_EXCL`` or ``O_TRUNC`` (truncate
    after the check, with ``ftruncate``).

    Returns ``(fd, fstat, created)``. Raises :class:`UnsafePathError` for a
    link, a FIFO, a device, a socket or an untrusted file, and
    ``IsADirectoryError`` for a directory; nothing was created or changed then.
    """
    if flags & (os.O_CREAT | os.O_EXCL | os.O_TRUNC):
        raise ValueError("open_own takes no O_CREAT, O_EXCL or O_TRUNC")
    text = os.fspath(path)
    head, name = os.path.split(_absolute(text))
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, "names a directory, not a file", text)
    where = resolve(head or "/")
    if where.st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where.path)
    if not stat.S_ISDIR(where.st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where.path)
    full = os.path.join(where.path, name)
    base = flags | _fs.O_NOFOLLOW | _fs.O_NONBLOCK
    while True:
        created = False
        try:
            fd = _fs.open(full, base)
        except FileNotFoundError:
            if not create:
                raise
            try:
                fd = _fs.open(full, base | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                continue  # someone made it in between: look at what they made
            created = True
        except OSError as exc:
            raise _refusal(full, exc) from None
        try:
            st = _fs.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(full, f"is {describe(st)}, not a regular file")
            if not created:
                check(full, st, where.st, "use")
        except BaseException:
            _fs.close(fd)
            raise
        return fd, st, created


def open_followed(path: str | os.PathLike[str], flags: int) -> tuple[int, os.stat_result]:
    """Open a file the caller named (a JSON file, a log): links followed under the rule.

    ``path`` is resolved with :func:`resolve` (every link on the way must be
    trusted), then the file it names is opened with ``O_NOFOLLOW |
    O_NONBLOCK`` and checked with ``fstat`` to be a regular file: a FIFO or a
    device never blocks the open or a read, and a link swapped in after the
    resolution is never followed (it is resolved again, at most a few times).
    ``flags`` must not hold ``O_CREAT`` (create files with :func:`open_own` or
    an atomic write). Returns ``(fd, fstat)``.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for
    a directory, :class:`UnsafePathError` for an untrusted link, a FIFO, a
    device or a socket.
    """
    if flags & (os.O_CREAT | os.O_EXCL):
        raise ValueError("open_followed takes no O_CREAT or O_EXCL")
    base = flags | _fs.O_NOFOLLOW | _fs.O_NONBLOCK
    for _attempt in range(_MAX_SWAPS):
        where = resolve(path)
        if where.st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where.path)
        try:
            fd = _fs.open(where.path, base)
        except FileNotFoundError:
            continue  # removed (or renamed) since it was resolved: resolve it again
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                continue  # a link appeared since: resolve it again, under the rule
            if exc.errno == errno.EISDIR:
                raise
            raise _refusal(where.path, exc) from None
        try:
            st = _fs.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), where.path)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(where.path, f"is {describe(st)}, not a regular file")
        except BaseException:
            _fs.close(fd)
            raise
        return fd, st
    raise UnsafePathError(os.fspath(path), "kept changing while it was opened")


def _refusal(path: str, exc: OSError) -> OSError:
    """The error of a failed ``O_NOFOLLOW | O_NONBLOCK`` open: typed if the entry is the cause."""
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return UnsafePathError(path, "is a symbolic link")
    if exc.errno == errno.ENXIO:  # O_WRONLY | O_NONBLOCK on a FIFO no one reads
        return UnsafePathError(path, "is a FIFO, not a regular file")
    return exc
