"""The rule racefree follows before it follows a link, uses a file or a directory, or writes.

Another local user who may create entries in a directory racefree uses (the
system's temporary directory, a shared project directory) can plant a symbolic
link, a FIFO, a file or a directory of their own at a name racefree is about to
use, or swap one in between a check and a use. The kernel has rules against the
classic cases (``fs.protected_symlinks``, ``fs.protected_regular``), but they
depend on sysctls, and racefree resolves links and renames files in ways they do
not see (a rename over a planted file gets past ``protected_regular``). So
racefree applies its own rule, whatever the sysctls say. It has three parts.

1. **Entries of shared directories.** An entry of a *shared* directory
   (sticky, and writable by its group or by others) is trusted only if it
   belongs to the caller (the effective uid) or to the directory's owner,
   and, unless a directory, has one name: with ``fs.protected_hardlinks``
   off (the default), anyone may hard-link root's ``/etc/shadow`` to a name
   racefree uses, and the link shows the file's owner, not its maker
   (racefree's own second names last microseconds: :data:`LINK_SETTLE`).
   Entries of any other directory are trusted: only the users who may write
   that directory could have made them, and they may replace any entry of it
   anyway. racefree never follows an untrusted link (anywhere in a path),
   never replaces, adopts or reads as data an untrusted file, never opens an
   untrusted file as one of its own (a lock file, a sidecar, a snapshot, a
   store's files), and never reaches one of its own files, nor a directory it
   creates, through an untrusted directory (``strict`` resolution): a directory
   another user made in ``/tmp`` is theirs, and racefree does not adopt it as
   one it "just created" (``make_parents``, a store's directory).
2. **Directories another user owns.** For the files the caller names (the
   data of ``atomic_write``, ``JsonFile``, ``AppendLog``, a log handler),
   racefree goes where the kernel would: links in a directory that is not
   shared are followed whoever made them, as the kernel follows them (their
   owner could change the directory anyway). What racefree does on its own
   initiative stays out of other users' directories: ``racefree check`` does
   not descend into a directory owned by a user other than the caller or root
   (it reports it as skipped), and a repair (``check --repair``, a salvage and
   its copy aside) writes only in a *held* directory: one that every
   directory from ``/`` down to it is owned by the caller or root and is either
   sticky or writable by no one else (:func:`check_held`), so that nobody else
   can swap a name racefree writes under.
3. **What racefree opens it checks on the descriptor.** Its own files are
   opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` on the
   descriptor it then uses (a regular file, trusted, created with ``O_EXCL``
   when new); the caller's files likewise after their links were resolved
   under part 1, so nothing is swapped between the check and the use, and a
   FIFO never blocks an open.

Everything the rule refuses raises :class:`~racefree.UnsafePathError` (a
``PermissionError``) naming the path and the reason, before anything is written.

Why a check here is not a time-of-check-to-time-of-use race: in a shared
directory, the sticky bit lets only an entry's owner and the directory's owner
rename or remove it, and those are exactly the users the rule trusts; in any
other directory, everyone who could swap an entry is trusted; in a held
directory, no one but the caller or root can swap anything. See
``docs/security.md`` for the threat model.

The calls: :func:`resolve` (a path resolved as the kernel would, every link
checked before it is followed; ``strict``: every directory on the way too),
:func:`check` (refuse an untrusted entry), :func:`open_own` (open or create
one of racefree's own files), :func:`open_followed` (open a file the caller
named, such as a JSON file or a log, for reading or writing in place: links
followed under the rule, the file trusted, never blocking), :func:`foreign`
(a directory another user owns) and :func:`check_held` (a directory only the
caller or root can change, for repairs).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from racefree import _fs
from racefree._errors import UnsafePathError

__all__ = [
    "Resolved",
    "check",
    "check_held",
    "describe",
    "enforce",
    "foreign",
    "held",
    "linked",
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
#: Seconds a file with a second name in a shared directory is given to lose it.
LINK_SETTLE = 0.05


def shared(dir_st: os.stat_result) -> bool:
    """Whether other users may create entries here but not replace ours: sticky and writable."""
    mode = dir_st.st_mode
    return bool(mode & stat.S_ISVTX) and bool(mode & _SHARED_WRITE)


def trusted(entry_st: os.stat_result, dir_st: os.stat_result, *, links: bool = False) -> bool:
    """Whether an entry (its lstat, or its descriptor's fstat) of a directory is trusted.

    ``links``: a second name is allowed (the lock-file protocol links on purpose, and reads).
    """
    if not enforce or not shared(dir_st):
        return True
    if not links and linked(entry_st):
        return False
    uid = entry_st.st_uid
    return uid == os.geteuid() or uid == dir_st.st_uid


def linked(st: os.stat_result) -> bool:
    """Whether a file (not a directory) has more than one name: anyone may have made one."""
    return st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)


def foreign(st: os.stat_result) -> bool:
    """Whether an entry belongs to a user other than the caller and root (part 2 of the rule)."""
    return enforce and st.st_uid not in (0, os.geteuid())


def held(dir_st: os.stat_result) -> bool:
    """Whether only the caller or root may rename or remove entries of this directory.

    Owned by the caller or root, and either sticky (others may add entries but
    not touch the caller's or root's) or writable by neither its group nor others.
    """
    if foreign(dir_st):
        return False
    mode = dir_st.st_mode
    return bool(mode & stat.S_ISVTX) or not mode & _SHARED_WRITE or not enforce


def check_held(path: str | os.PathLike[str], action: str = "write in") -> str:
    """The directory ``path``, resolved, if it and every directory above it are :func:`held`.

    For what racefree writes on its own initiative (a repair, a salvage's copy
    aside): there, nobody but the caller or root can rename a component or
    swap a name racefree writes under, so writing by path is safe. Raises
    :class:`UnsafePathError` naming the first directory that is not held (it
    belongs to another user, or its group or others may replace its entries),
    ``FileNotFoundError`` if it is missing, ``NotADirectoryError`` for a file.
    """
    where = resolve(path)
    if where.st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where.path)
    if not stat.S_ISDIR(where.st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where.path)
    current, st = where.path, where.st
    while True:
        if not held(st):
            who = (f"owned by uid {st.st_uid}" if foreign(st)
                   else "writable by others without the sticky bit")
            raise UnsafePathError(
                current,
                f"refusing to {action} {where.path}: the directory {current} is {who}, so"
                " someone other than the caller or root could change it under racefree",
            )
        if current == "/":
            return where.path
        current = os.path.dirname(current)
        st = _fs.stat(current, follow_symlinks=False)


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


def check(
    path: str,
    entry_st: os.stat_result,
    dir_st: os.stat_result,
    action: str,
    *,
    again: Callable[[], os.stat_result] | None = None,
    links: bool = False,
) -> os.stat_result:
    """Raise :class:`UnsafePathError` unless the rule lets racefree ``action`` this entry.

    ``action`` completes the message: "follow", "replace", "use". ``again``
    stats the entry again: a file whose only fault is a second name is looked
    at again for up to :data:`LINK_SETTLE`. Returns the stat judged.
    """
    if trusted(entry_st, dir_st, links=links):
        return entry_st
    if again is not None and linked(entry_st) and trusted(entry_st, dir_st, links=True):
        deadline = time.monotonic() + LINK_SETTLE
        while time.monotonic() < deadline:
            time.sleep(0.0002)
            entry_st = again()
            if trusted(entry_st, dir_st, links=links):
                return entry_st
    if linked(entry_st) and not links and trusted(entry_st, dir_st, links=True):
        raise UnsafePathError(path, f"refusing to {action} {describe(entry_st)} with"
                              f" {entry_st.st_nlink} names (hard links) in a shared directory:"
                              " anyone may have linked someone's file to a name racefree uses")
    raise UnsafePathError(
        path,
        f"refusing to {action} {describe(entry_st)} owned by uid {entry_st.st_uid} in a shared"
        f" directory (sticky, writable by others) that uid {dir_st.st_uid} owns: only the"
        " caller's own entries and the directory owner's are trusted there",
    )


def _absolute(text: str) -> str:
    """``text`` made absolute by prefixing the working directory, without normalising it."""
    return text if text.startswith("/") else os.path.join(os.getcwd(), text)


#: What procfs shows as the target of a link to an object that has no path.
#: A descriptor's link in procfs (``/proc/self/fd/N`` once ``self`` is resolved).
_PROC_FD = re.compile(r"/proc/\d+(/task/\d+)?/fd/\d+\Z")


class Resolved(NamedTuple):
    """A path resolved under the rule: every link on the way was trusted."""

    path: str  # absolute, with no symbolic link left in it (but the last, if not followed)
    st: os.stat_result | None  # lstat of the last component; None if it does not exist
    dir_st: os.stat_result  # stat of the directory that holds it
    #: ``path`` is a trusted procfs link to a descriptor (``/proc/PID/fd/N``: what
    #: ``/dev/stdout`` leads to); ``st`` is the file the kernel follows it to, and this
    #: its ``(st_dev, st_ino)``. Its text is never resolved ("pipe:[N]", or a name that
    #: was deleted and may now be anyone's link): it is opened through the link, without
    #: ``O_NOFOLLOW``, and the descriptor must then be that same file.
    magic: tuple[int, int] | None = None


def resolve(
    path: str | os.PathLike[str], *, follow_last: bool = True, strict: bool = False
) -> Resolved:
    """Resolve ``path`` as the kernel would, checking every symbolic link it follows.

    Each link is looked at in the directory that holds it and followed only if
    the rule trusts it (``UnsafePathError`` otherwise), so a link another user
    planted in a shared directory, anywhere in the path, is never followed.
    With ``follow_last=False`` a link at the last component is returned as is.
    The last component may be missing (``st`` is None); a missing directory on
    the way raises ``FileNotFoundError``, a file there ``NotADirectoryError``.

    ``strict`` (racefree's own files, and the directories it creates): every
    directory passed through, and the last component if it is a directory,
    must be trusted in its parent too, so nothing of racefree's is ever made
    or used below a directory another user made in a shared directory, where
    that user could point it anywhere with a link of their own.
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
        if stat.S_ISLNK(mode) and (follow_last or not last) and _PROC_FD.match(nxt):
            # A descriptor's procfs link: the kernel follows it to the open file itself,
            # whatever its text says. So does this, never reading the text.
            check(nxt, st, cur_st, "follow")
            real = _fs.stat(nxt)
            if last:
                return Resolved(nxt, real, cur_st, magic=(real.st_dev, real.st_ino))
            if not stat.S_ISDIR(real.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), nxt)
            if ".." in pending:
                # Its parent is the directory's on disk, which no name here leads to.
                raise UnsafePathError(text, "'..' after a descriptor's procfs link")
            cur, cur_st = nxt, real
            continue
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
        if strict and stat.S_ISDIR(mode):
            check(nxt, st, cur_st, "use")
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
    links: bool = False,
) -> tuple[int, os.stat_result, bool]:
    """Open a file racefree owns (a lock file, a MANIFEST, a sidecar): never through a link.

    The directory part of ``path`` is resolved under the rule, strictly (no
    untrusted link, and no directory another user made in a shared directory,
    on the way); the file itself is opened with ``O_NOFOLLOW | O_NONBLOCK``
    (a FIFO or a device never blocks the open) and checked with ``fstat`` on
    the returned descriptor: it must be a regular file, and an existing one
    must be trusted. Created with
    ``O_CREAT | O_EXCL`` when missing (if ``create``), so racefree never opens
    a file someone planted in the instant between "missing" and "create".
    ``flags`` must not hold ``O_CREAT``, ``O_EXCL`` or ``O_TRUNC`` (truncate
    after the check, with ``ftruncate``).

    Returns ``(fd, fstat, created)``. Raises :class:`UnsafePathError` for a
    link, a FIFO, a device, a socket or an untrusted file (``links``: see
    :func:`trusted`), ``IsADirectoryError`` for a directory; nothing changed then.
    """
    if flags & (os.O_CREAT | os.O_EXCL | os.O_TRUNC):
        raise ValueError("open_own takes no O_CREAT, O_EXCL or O_TRUNC")
    text = os.fspath(path)
    head, name = os.path.split(_absolute(text))
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, "names a directory, not a file", text)
    where = resolve(head or "/", strict=True)
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
                st = check(full, st, where.st, "use", again=partial(_fs.fstat, fd), links=links)
        except BaseException:
            _fs.close(fd)
            raise
        return fd, st, created


def open_followed(
    path: str | os.PathLike[str], flags: int, *, special: bool = False
) -> tuple[int, os.stat_result]:
    """Open a file the caller named (a JSON file, a log): links followed under the rule.

    ``path`` is resolved with :func:`resolve` (every link on the way must be
    trusted), then the file it names is opened with ``O_NOFOLLOW |
    O_NONBLOCK`` and checked with ``fstat``: it must be a regular file, and a
    trusted entry of its directory (in a shared directory such as ``/tmp``,
    another user's file is not racefree's data, to read or to write). A FIFO
    or a device never blocks the open or a read, and a link swapped in after
    the resolution is never followed (it is resolved again, at most a few
    times). ``flags`` must not hold ``O_CREAT`` (create files with
    :func:`open_own` or an atomic write). Returns ``(fd, fstat)``.

    ``special=True`` (a log handler given ``/dev/null`` or a FIFO, as the
    standard library allows) also accepts a trusted FIFO or character device;
    a FIFO no process reads is ``OSError(ENXIO)`` rather than a blocking open.
    The descriptor keeps ``O_NONBLOCK``: the caller clears it if it must block.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for
    a directory, :class:`UnsafePathError` for an untrusted link or file, or
    for what is not a regular file (unless ``special``).
    """
    if flags & (os.O_CREAT | os.O_EXCL):
        raise ValueError("open_followed takes no O_CREAT or O_EXCL")
    base = flags | _fs.O_NOFOLLOW | _fs.O_NONBLOCK
    for _attempt in range(_MAX_SWAPS):
        where = resolve(path)
        if where.st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), where.path)
        try:
            fd = _fs.open(where.path, base if where.magic is None else base & ~_fs.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # removed (or renamed) since it was resolved: resolve it again
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                continue  # a link appeared since: resolve it again, under the rule
            if exc.errno == errno.EISDIR:
                raise
            if special and exc.errno == errno.ENXIO:
                # A FIFO without a reader (O_WRONLY | O_NONBLOCK): whose is it?
                check(where.path, _fs.stat(where.path, follow_symlinks=False), where.dir_st,
                      "use")
                raise OSError(errno.ENXIO, "a FIFO that no process reads (racefree does not"
                              " wait for a reader)", where.path) from None
            raise _refusal(where.path, exc) from None
        try:
            st = _fs.fstat(fd)
            mode = st.st_mode
            if where.magic is not None and (st.st_dev, st.st_ino) != where.magic:
                # The descriptor's owner pointed it elsewhere since it was looked at:
                # what the kernel opened is not that file, and nothing vouches for it.
                raise UnsafePathError(where.path, "changed while it was opened (it led to "
                                      f"another file, then to {describe(st)})")
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), where.path)
            if not (stat.S_ISREG(mode)
                    or (special and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)))):
                raise UnsafePathError(where.path, f"is {describe(st)}, not a regular file")
            # The descriptor's own owner, checked where the resolution found the name: a
            # file swapped in since belongs to someone the rule trusts, or is refused here.
            st = check(where.path, st, where.dir_st, "use", again=partial(_fs.fstat, fd))
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
