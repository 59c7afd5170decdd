"""The ``strace`` front end: what any program's file-system calls mean to the crash model.

:func:`strace_command` builds the ``strace -f`` command line that records a
program; :class:`StraceReader` reads the recording into a
:class:`~racefree.testing.recording.Recording` of the files under one
directory. ``-y`` makes strace print the path each descriptor names, ``-xx``
every string as hex escapes (so data, paths and quotes never need unescaping),
and ``raw`` reads only their size (a read matters only for the file offset it
moves).

What is modelled: ``open``/``openat``/``openat2``/``creat`` (creating or
truncating), ``write``/``writev``/``pwrite64``/``pwritev``/``pwritev2`` (the
offset of a plain write is the open file's, tracked through ``read``, ``lseek``,
``dup`` and ``fork``; of an ``O_APPEND`` write the file's end), ``truncate``,
``ftruncate``, ``fallocate``, ``rename``/``renameat``/``renameat2`` (with
``RENAME_EXCHANGE``), ``link``/``linkat``, ``unlink``/``unlinkat``, ``mkdir``/
``mkdirat``, ``rmdir``, ``fsync``/``fdatasync`` (of a file, or of a directory's
descriptor), ``sync``/``syncfs`` (everything durable), ``chdir``/``fchdir``,
``clone``/``clone3``/``fork``/``vfork`` (descriptor tables and working
directories, shared or copied) and ``execve`` (close-on-exec). ``sync_file_range``
makes nothing durable (it flushes no metadata and no disk cache). What is not:
writes through a shared writable ``mmap`` (noted), data moved by ``sendfile``,
``splice`` or ``copy_file_range`` into a modelled file (an error: its bytes are
not in the recording). Writes to descriptor 1 are the program's output: each
one marks an acknowledgement, so a check can tell what the program had
reported done when the power failed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from racefree.testing.recording import ModelError, Recording
from racefree.testing.syscalls import STRING_LIMIT, SyscallsMixin, _Open, _Proc, _string, _unhex

__all__ = ["STRING_LIMIT", "TRACED", "StraceReader", "strace_command"]

#: The system calls recorded.
TRACED = (
    "open", "openat", "openat2", "creat", "close", "close_range", "dup", "dup2", "dup3",
    "fcntl", "read", "readv", "write", "writev", "pwrite64", "pwritev", "pwritev2", "lseek",
    "truncate", "ftruncate", "fallocate", "rename", "renameat", "renameat2", "link", "linkat",
    "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "fsync", "fdatasync",
    "sync_file_range", "sync", "syncfs", "chdir", "fchdir", "clone", "clone3", "fork",
    "vfork", "execve", "mmap", "sendfile", "splice", "copy_file_range",
)


def strace_command(strace: str, trace_path: str, program: list[str]) -> list[str]:
    """The command line that runs ``program`` under ``strace``, recording into ``trace_path``."""
    return [
        strace, "-f", "-qq", "-y", "-xx", "-s", str(STRING_LIMIT), "-o", trace_path,
        "-e", "trace=" + ",".join(TRACED), "-e", "raw=read,readv", "--", *program,
    ]


_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$", re.S)
_FD = re.compile(r"^(-?\d+|0x[0-9a-f]+|AT_FDCWD)(?:<(.*)>)?(\(deleted\))?$", re.S)
_AT_REMOVEDIR = 0x200
_FALLOC_KEEP_SIZE = 0x01
_RENAME_EXCHANGE = 0x2


class StraceReader(SyscallsMixin):
    """Reads an ``strace -f -y -xx`` recording into ``rec`` (see the module doc).

    ``cwd`` is the directory the program started in. ``notes`` collects what
    could not be modelled; ``calls`` counts the modelled calls.
    """

    def __init__(self, rec: Recording, cwd: str) -> None:
        self.rec = rec
        self.procs: dict[int, _Proc] = {}
        self.root_cwd = os.path.realpath(cwd)
        self.pending: dict[int, str] = {}  # pid -> the first half of an unfinished call
        self.unfinished_clones: list[tuple[int, str, str]] = []  # (pid, name, args)
        self.calls = 0
        self.notes: list[str] = []

    # -- lines -----------------------------------------------------------------------
    def feed(self, lines: Iterable[str]) -> None:
        for raw in lines:
            line = raw.rstrip("\n")
            m = _LINE.match(line)
            if m is None:
                continue
            pid, rest = int(m[1]), m[2]
            if rest.startswith(("---", "+++")):
                continue
            if rest.endswith(" <unfinished ...>"):
                head = rest[: -len(" <unfinished ...>")]
                self.pending[pid] = head
                cm = re.match(r"^(clone3?|fork|vfork)\((.*)$", head, re.S)
                if cm:
                    self.unfinished_clones.append((pid, cm[1], cm[2]))
                continue
            r = _RESUMED.match(rest)
            if r is not None:
                head = self.pending.pop(pid, None)
                if head is None:
                    continue
                rest = head + r[2]
                self.unfinished_clones = [u for u in self.unfinished_clones if u[0] != pid]
            c = _CALL.match(rest)
            if c is None:
                continue
            self._call(pid, c[1], c[2], c[3].strip())

    # -- processes -------------------------------------------------------------------
    def _proc(self, pid: int) -> _Proc:
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        # A pid seen before its parent's clone returned: it is the child of a clone still
        # in progress (strace prints the child's first calls before the parent's return).
        for ppid, name, args in self.unfinished_clones:
            parent = self.procs.get(ppid)
            if parent is not None:
                proc = self._child_of(parent, name, args)
                break
        else:
            proc = _Proc({}, [self.root_cwd])
        self.procs[pid] = proc
        return proc

    @staticmethod
    def _child_of(parent: _Proc, name: str, args: str) -> _Proc:
        flags = set(re.findall(r"CLONE_\w+", args)) if name.startswith("clone") else set()
        files = parent.files if "CLONE_FILES" in flags else dict(parent.files)
        cwd = parent.cwd if "CLONE_FS" in flags else [parent.cwd[0]]
        return _Proc(files, cwd)

    # -- paths and descriptors -------------------------------------------------------------
    def _fd(self, arg: str) -> tuple[int | None, str | None]:
        """A descriptor argument: (number or None for AT_FDCWD, annotated path or None)."""
        m = _FD.match(arg.strip())
        if m is None:
            raise ModelError(f"cannot read descriptor {arg[:60]!r}")
        num = None if m[1] == "AT_FDCWD" else int(m[1], 0)
        path = m[2]
        if path is not None and path.startswith("\\x"):
            path = os.fsdecode(_unhex(path))
        if path is not None and m[3]:
            path += " (deleted)"
        return num, path

    def _path(self, proc: _Proc, dirfd: str | None, arg: str) -> str:
        rel = os.fsdecode(_string(arg))
        if os.path.isabs(rel):
            return os.path.normpath(rel)
        base = proc.cwd[0]
        if dirfd is not None:
            num, where = self._fd(dirfd)
            if where is not None:
                base = where
            elif num is not None:
                entry = proc.files.get(num)
                if entry is None:
                    raise ModelError(f"a path relative to unknown descriptor {num}")
                base = entry[0].path
        return os.path.normpath(os.path.join(base, rel))

    def _open_of(self, proc: _Proc, arg: str) -> _Open | None:
        """The open file behind a descriptor argument (None: not a modelled file)."""
        num, where = self._fd(arg)
        if num is None:
            return None
        entry = proc.files.get(num)
        if entry is not None:
            return entry[0]
        if where is None or where.endswith(" (deleted)") or self.rec.split(where) is None:
            return None
        # Inherited or otherwise unseen: found by the path strace names, offset unknown.
        ino = self.rec.lookup(self.rec.split(where) or [])
        if ino is None:
            return None
        self.notes.append(f"descriptor {num} for {where} was opened before the recording; "
                          "its writes are modelled at the file's end")
        opened = _Open(ino, where, len(self.rec.live[ino].data), append=True)
        proc.files[num] = (opened, False)
        return opened

    def _text(self, name: str, *parts: object) -> str:
        self.calls += 1
        return f"#{self.calls} {name}(" + ", ".join(str(p) for p in parts) + ")"

