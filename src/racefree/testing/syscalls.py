"""What each recorded system call means to the model: the handlers of :class:`StraceReader`.

:class:`SyscallsMixin` holds one ``_sys_<name>`` method per system call of
:data:`racefree.testing.strace.TRACED`; :class:`racefree.testing.strace.StraceReader`
supplies the recording, the processes and the descriptor and path lookups.
Also the small parsers of strace's ``-xx`` argument syntax both modules use.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from racefree.testing.recording import ModelError, Recording

#: The longest string strace prints whole (``-s``): a longer write cannot be modelled.
STRING_LIMIT = 1 << 26


def _unhex(text: str) -> bytes:
    """``\\x41\\x42`` (strace ``-xx``) to bytes."""
    return bytes.fromhex(text.replace("\\x", ""))


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments (brackets, braces and quotes nest)."""
    out: list[str] = []
    depth = 0
    quoted = False
    cur: list[str] = []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur and "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _string(arg: str) -> bytes:
    if not arg.startswith('"'):
        raise ModelError(f"expected a string, got {arg[:60]!r}")
    end = arg.rindex('"')
    if arg[end + 1 :].startswith("..."):
        raise ModelError(f"strace cut a string at {STRING_LIMIT} bytes: a longer write "
                         "cannot be modelled")
    return _unhex(arg[1:end])


def _iov(arg: str) -> bytes:
    """The bytes of an iovec array ``[{iov_base="..", iov_len=N}, ...]``."""
    return b"".join(_unhex(m) for m in re.findall(r'iov_base="([^"]*)"', arg))


def _flags(arg: str) -> set[str]:
    return set(arg.split("|"))


def _int(arg: str) -> int:
    return int(arg.split()[0], 0)


@dataclasses.dataclass
class _Open:
    """An open file description: shared by ``dup`` and ``fork``, with its own offset."""

    ino: int | None  # None: a file outside the modelled directory
    path: str
    offset: int = 0
    append: bool = False


@dataclasses.dataclass
class _Proc:
    files: dict[int, tuple[_Open, bool]]  # fd -> (open file, close-on-exec); shared by threads
    cwd: list[str]  # one-element holder: shared by threads (CLONE_FS)


class SyscallsMixin:
    """The system-call handlers (see the module doc); mixed into ``StraceReader``."""

    rec: Recording
    notes: list[str]
    procs: dict[int, _Proc]
    _fd: Callable[[str], tuple[int | None, str | None]]
    _path: Callable[[_Proc, str | None, str], str]
    _open_of: Callable[[_Proc, str], _Open | None]
    _text: Callable[..., str]
    _proc: Callable[[int], _Proc]
    _child_of: Callable[[_Proc, str, str], _Proc]

    # -- the calls ---------------------------------------------------------------------
    def _call(self, pid: int, name: str, argtext: str, ret: str) -> None:
        if ret.startswith(("-1", "?")):
            return  # failed, or never returned: changed nothing
        handler = getattr(self, f"_sys_{name}", None)
        if handler is not None:
            handler(self._proc(pid), _split_args(argtext), ret)

    def _opened(self, proc: _Proc, path: str, flags: set[str], ret: str) -> None:
        num, where = self._fd(ret)
        assert num is not None  # open returns a descriptor
        if where is not None and where.startswith("/") and not where.endswith(" (deleted)"):
            path = where
        parts = self.rec.split(path)
        cloexec = "O_CLOEXEC" in flags
        if parts is None or "O_TMPFILE" in flags:
            if parts is not None:
                self.notes.append(f"O_TMPFILE in {path} is not modelled")
            proc.files[num] = (_Open(None, path), cloexec)
            return
        rel = self.rec.rel(path)
        ino = self.rec.lookup(parts)
        if ino is None:
            if "O_CREAT" not in flags:
                raise ModelError(f"{path} was opened but is not in the model (made by a call "
                                 "the recording does not show?)")
            ino = self.rec.note_create(path, "file", self._text("open", rel, "O_CREAT"))
            assert ino is not None  # under the base
        elif "O_TRUNC" in flags and self.rec.live[ino].kind == "file":
            self.rec.note_truncate(ino, 0, self._text("open", rel, "O_TRUNC"))
        proc.files[num] = (_Open(ino, path, 0, "O_APPEND" in flags), cloexec)

    def _sys_open(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._opened(proc, self._path(proc, None, args[0]), _flags(args[1]), ret)

    def _sys_creat(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._opened(proc, self._path(proc, None, args[0]), {"O_CREAT", "O_TRUNC"}, ret)

    def _sys_openat(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._opened(proc, self._path(proc, args[0], args[1]), _flags(args[2]), ret)

    def _sys_openat2(self, proc: _Proc, args: list[str], ret: str) -> None:
        m = re.search(r"flags=([\w|]+)", args[2])
        flags = _flags(m[1]) if m else set()
        self._opened(proc, self._path(proc, args[0], args[1]), flags, ret)

    def _sys_close(self, proc: _Proc, args: list[str], ret: str) -> None:
        num, _ = self._fd(args[0])
        proc.files.pop(num if num is not None else -1, None)

    def _sys_close_range(self, proc: _Proc, args: list[str], ret: str) -> None:
        first, last = _int(args[0]), _int(args[1])
        for num in [n for n in proc.files if first <= n <= last]:
            if "CLOSE_RANGE_CLOEXEC" in args[2]:
                proc.files[num] = (proc.files[num][0], True)
            else:
                del proc.files[num]

    def _dup(self, proc: _Proc, old: str, ret: str, cloexec: bool) -> None:
        num, _ = self._fd(old)
        new, _ = self._fd(ret)
        entry = proc.files.get(num if num is not None else -1)
        if new is not None:
            if entry is None:
                proc.files.pop(new, None)
            else:
                proc.files[new] = (entry[0], cloexec)

    def _sys_dup(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._dup(proc, args[0], ret, False)

    def _sys_dup2(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._dup(proc, args[0], ret, False)

    def _sys_dup3(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._dup(proc, args[0], ret, "O_CLOEXEC" in args[2])

    def _sys_fcntl(self, proc: _Proc, args: list[str], ret: str) -> None:
        if args[1].startswith("F_DUPFD"):
            self._dup(proc, args[0], ret, args[1] == "F_DUPFD_CLOEXEC")
        elif args[1] == "F_SETFD":
            num, _ = self._fd(args[0])
            if num in proc.files:
                proc.files[num] = (proc.files[num][0], "FD_CLOEXEC" in args[2])

    def _sys_read(self, proc: _Proc, args: list[str], ret: str) -> None:
        entry = proc.files.get(_int(args[0]))
        if entry is not None:
            entry[0].offset += _int(ret)

    _sys_readv = _sys_read

    def _sys_lseek(self, proc: _Proc, args: list[str], ret: str) -> None:
        opened = self._open_of(proc, args[0])
        if opened is not None:
            opened.offset = _int(ret)

    def _wrote(
        self, proc: _Proc, fd: str, data: bytes, ret: str, at: int | None, name: str = "write"
    ) -> None:
        n = _int(ret)
        opened = self._open_of(proc, fd)
        if opened is None or opened.ino is None:
            if self._fd(fd)[0] == 1 and n:
                self.rec.mark(data[:n].decode("utf-8", "replace"))  # the program's output
            return
        ino = opened.ino
        if at is None:  # the descriptor's offset, or the end for O_APPEND
            at = len(self.rec.live[ino].data) if opened.append else opened.offset
            opened.offset = at + n
        rel = self.rec.rel(opened.path)
        self.rec.note_write(ino, at, data[:n], self._text(name, rel, f"{n} B @{at}"))

    def _sys_write(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._wrote(proc, args[0], _string(args[1]), ret, None)

    def _sys_writev(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._wrote(proc, args[0], _iov(args[1]), ret, None, "writev")

    def _sys_pwrite64(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._wrote(proc, args[0], _string(args[1]), ret, _int(args[3]), "pwrite64")

    def _sys_pwritev(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._wrote(proc, args[0], _iov(args[1]), ret, _int(args[3]), "pwritev")

    def _sys_pwritev2(self, proc: _Proc, args: list[str], ret: str) -> None:
        at = _int(args[3])
        self._wrote(proc, args[0], _iov(args[1]), ret, None if at == -1 else at, "pwritev2")

    def _truncate(self, ino: int | None, path: str, length: int) -> None:
        if ino is not None:
            text = self._text("truncate", self.rec.rel(path), length)
            self.rec.note_truncate(ino, length, text)

    def _sys_truncate(self, proc: _Proc, args: list[str], ret: str) -> None:
        path = self._path(proc, None, args[0])
        parts = self.rec.split(path)
        self._truncate(None if parts is None else self.rec.lookup(parts), path, _int(args[1]))

    def _sys_ftruncate(self, proc: _Proc, args: list[str], ret: str) -> None:
        opened = self._open_of(proc, args[0])
        if opened is not None:
            self._truncate(opened.ino, opened.path, _int(args[1]))

    def _sys_fallocate(self, proc: _Proc, args: list[str], ret: str) -> None:
        opened = self._open_of(proc, args[0])
        if opened is None or opened.ino is None:
            return
        mode, offset, length = args[1], _int(args[2]), _int(args[3])
        ino, rel = opened.ino, self.rec.rel(opened.path)
        if mode == "0":
            self.rec.note_allocate(ino, offset, length, self._text("fallocate", rel, offset,
                                                                   length))
        elif "PUNCH_HOLE" in mode or "ZERO_RANGE" in mode:
            size = len(self.rec.live[ino].data)
            end = min(offset + length, size) if "KEEP_SIZE" in mode else offset + length
            if end > offset:
                self.rec.note_write(ino, offset, b"\0" * (end - offset),
                                    self._text("fallocate", rel, mode, offset, length))

    def _rename(self, proc: _Proc, src: str, dst: str, flags: str = "") -> None:
        text = self._text("rename", self.rec.rel(src), self.rec.rel(dst))
        if "RENAME_EXCHANGE" not in flags:
            self._name_change(lambda: self.rec.note_rename(src, dst, text), src, dst)
            return
        sp, dp = self.rec.parent(src), self.rec.parent(dst)
        if sp is None or dp is None:
            raise ModelError(f"an exchange across the modelled directory: {src} <-> {dst}")
        a, b = self.rec.live[sp[0]].entries[sp[1]], self.rec.live[dp[0]].entries[dp[1]]
        self.rec.name_op(((sp[0], sp[1], b), (dp[0], dp[1], a)), text)

    def _name_change(self, change: Any, src: str, dst: str) -> None:
        if self.rec.split(src) is None and self.rec.split(dst) is not None:
            raise ModelError(
                f"{src} was moved into the modelled directory from outside it, so its "
                "contents are unknown: give --dir a directory that holds both"
            )
        change()

    def _sys_rename(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._rename(proc, self._path(proc, None, args[0]), self._path(proc, None, args[1]))

    def _sys_renameat(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._rename(proc, self._path(proc, args[0], args[1]), self._path(proc, args[2], args[3]))

    def _sys_renameat2(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._rename(proc, self._path(proc, args[0], args[1]),
                     self._path(proc, args[2], args[3]), args[4])

    def _link(self, src: str, dst: str) -> None:
        text = self._text("link", self.rec.rel(src), self.rec.rel(dst))
        self._name_change(lambda: self.rec.note_link(src, dst, text), src, dst)

    def _sys_link(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._link(self._path(proc, None, args[0]), self._path(proc, None, args[1]))

    def _sys_linkat(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._link(self._path(proc, args[0], args[1]), self._path(proc, args[2], args[3]))

    def _remove(self, path: str, what: str) -> None:
        if self.rec.split(path) is not None:
            self.rec.note_remove(path, self._text(what, self.rec.rel(path)))

    def _sys_unlink(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._remove(self._path(proc, None, args[0]), "unlink")

    def _sys_unlinkat(self, proc: _Proc, args: list[str], ret: str) -> None:
        what = "rmdir" if "AT_REMOVEDIR" in args[2] else "unlink"
        self._remove(self._path(proc, args[0], args[1]), what)

    def _sys_rmdir(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._remove(self._path(proc, None, args[0]), "rmdir")

    def _mkdir(self, path: str) -> None:
        if self.rec.split(path) is not None:
            self.rec.note_create(path, "dir", self._text("mkdir", self.rec.rel(path)))

    def _sys_mkdir(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._mkdir(self._path(proc, None, args[0]))

    def _sys_mkdirat(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._mkdir(self._path(proc, args[0], args[1]))

    def _sys_fsync(self, proc: _Proc, args: list[str], ret: str) -> None:
        opened = self._open_of(proc, args[0])
        if opened is not None and opened.ino is not None:
            self.rec.note_sync(opened.ino, self._text("fsync", self.rec.rel(opened.path)))

    def _sys_fdatasync(self, proc: _Proc, args: list[str], ret: str) -> None:
        opened = self._open_of(proc, args[0])
        if opened is not None and opened.ino is not None:
            self.rec.note_sync(opened.ino, self._text("fdatasync", self.rec.rel(opened.path)))

    def _sys_sync(self, proc: _Proc, args: list[str], ret: str) -> None:
        self.rec.emit(("syncall",), self._text("sync"))

    _sys_syncfs = _sys_sync

    def _sys_sync_file_range(self, proc: _Proc, args: list[str], ret: str) -> None:
        note = "sync_file_range makes nothing durable (no metadata, no disk cache): ignored"
        if note not in self.notes:
            self.notes.append(note)

    def _sys_chdir(self, proc: _Proc, args: list[str], ret: str) -> None:
        proc.cwd[0] = self._path(proc, None, args[0])

    def _sys_fchdir(self, proc: _Proc, args: list[str], ret: str) -> None:
        num, where = self._fd(args[0])
        entry = proc.files.get(num if num is not None else -1)
        if where is not None and where.startswith("/"):
            proc.cwd[0] = where
        elif entry is not None:
            proc.cwd[0] = entry[0].path

    def _cloned(self, proc: _Proc, name: str, args: list[str], ret: str) -> None:
        child = _int(ret)
        if child not in self.procs:
            self.procs[child] = self._child_of(proc, name, ", ".join(args))

    def _sys_clone(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._cloned(proc, "clone", args, ret)

    def _sys_clone3(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._cloned(proc, "clone3", args, ret)

    def _sys_fork(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._cloned(proc, "fork", args, ret)

    _sys_vfork = _sys_fork

    def _sys_execve(self, proc: _Proc, args: list[str], ret: str) -> None:
        for num in [n for n, (_, cloexec) in proc.files.items() if cloexec]:
            del proc.files[num]

    def _sys_mmap(self, proc: _Proc, args: list[str], ret: str) -> None:
        if len(args) < 6 or "PROT_WRITE" not in args[2] or "MAP_SHARED" not in args[3]:
            return
        opened = self._open_of(proc, args[4])
        if opened is not None and opened.ino is not None:
            note = (f"{self.rec.rel(opened.path)} is written through a shared mmap: those "
                    "writes are not in the recording")
            if note not in self.notes:
                self.notes.append(note)

    def _moved_in(self, proc: _Proc, out_fd: str, ret: str, name: str) -> None:
        opened = self._open_of(proc, out_fd)
        if opened is not None and opened.ino is not None and _int(ret) > 0:
            raise ModelError(f"{name} into {opened.path}: its bytes are not in the recording")

    def _sys_sendfile(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._moved_in(proc, args[0], ret, "sendfile")

    def _sys_splice(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._moved_in(proc, args[2], ret, "splice")

    def _sys_copy_file_range(self, proc: _Proc, args: list[str], ret: str) -> None:
        self._moved_in(proc, args[2], ret, "copy_file_range")
