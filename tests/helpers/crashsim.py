"""A crash simulator at racefree's file-system seam (SQLite's crash VFS, ALICE's idea).

:class:`Recorder` is a :class:`racefree._fs.FileSystem` that performs every call
for real and, for every path under one base directory, records what the call
means to a power-loss model: which inode a descriptor names (``fd -> path ->
inode`` tracking across ``open``, ``replace``, ``link``, ``unlink``, ``mkdir``),
which bytes a ``write``/``pwrite`` put where, which ``ftruncate``/``fallocate``
changed a size, and which ``fsync``/``fdatasync``/``fsync_dir`` made what durable.

:func:`crash_states` turns a recording into the states a power loss could leave:
for every prefix of the recorded calls (after :meth:`Recorder.checkpoint`), the
files as they would be found after reboot, under a deliberately pessimistic model:

* what an ``fsync``/``fdatasync`` of a file covered is on disk; every other
  data operation on that file (write, truncate, fallocate) is independently
  dropped, applied, or, for a write, torn at any ``block`` boundary (only its
  first or only its last blocks reached the disk), or "zero-filled" (the size
  grew but the data never landed: the NUL-filled file of pitfall W1). Writes
  may therefore land out of order with each other;
* what an ``fsync_dir`` (or an ``fsync`` of a directory descriptor) covered is
  on disk; every other name operation (create, rename, link, unlink, mkdir) is
  independently lost or kept. A rename is one atomic name operation (as every
  journaling file system makes it) and a cross-directory rename is committed by
  an fsync of either directory;
* an ``fsync`` of a file does not make its directory entry durable (POSIX does
  not promise it, whatever ext4 happens to do).

When the product of choices at one prefix exceeds ``cap``, the combinations
are sampled with a seeded RNG (deterministic), always including "nothing
un-synced survived" and "everything survived". States that produce identical
trees are explored once (:class:`Exploration` counts both).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import os
import random
import shutil
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from racefree import _fs

__all__ = [
    "CrashState",
    "Exploration",
    "NoSyncFS",
    "Recorder",
    "crash_states",
    "explore",
    "tree",
]

_SEEK_CUR = os.SEEK_CUR


# --------------------------------------------------------------------------- events
# Model events, one per seam call that changes a tracked file or name.
# ("write", ino, offset, data, size_before) ("trunc", ino, length)
# ("falloc", ino, offset, length)            ("sync", ino)   (file data, or a directory's names)
# ("name", ((dir_ino, name, target_or_None), ...), dirs)   one atomic name operation
# ("new", ino, kind)  a fresh inode (its name comes with a "name" event)
Event = tuple[Any, ...]


@dataclasses.dataclass
class _Inode:
    kind: str  # "file" | "dir"
    data: bytearray = dataclasses.field(default_factory=bytearray)
    entries: dict[str, int] = dataclasses.field(default_factory=dict)


class Recorder(_fs.FileSystem):
    """Performs every call for real and records its meaning for paths under ``base``.

    Start it (``with _fs.use(rec):``) before the object under test is opened, so
    that every descriptor it uses is known. Paths outside ``base`` pass through
    untracked.
    """

    def __init__(self, base: str | os.PathLike[str], *, ignore: tuple[str, ...] = ()) -> None:
        self.base = os.path.realpath(os.fspath(base))
        # File names left out of the model (a cache rebuilt from the files on open, such
        # as a store's shared-memory header, written through a writable mmap).
        self.ignore = ignore
        self._lock = threading.RLock()
        self.events: list[Event] = []
        self.trace: list[str] = []  # one line per event, for violation reports
        self.marks: list[tuple[int, str]] = []
        self.start = 0  # events before this index are durable (see checkpoint)
        self._next = 0
        self._fds: dict[int, int | None] = {}  # fd -> inode (None: untracked path)
        self._append: set[int] = set()
        self._live: dict[int, _Inode] = {}
        self.initial: dict[int, _Inode] = {}
        self.root = self._scan()

    # -- the model of the live (volatile) tree --------------------------------
    def _new(self, kind: str) -> int:
        ino = self._next
        self._next += 1
        self._live[ino] = _Inode(kind)
        return ino

    def _scan(self) -> int:
        seen: dict[tuple[int, int], int] = {}

        def walk(path: str) -> int:
            st = os.lstat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return seen[key]
            if statmod.S_ISDIR(st.st_mode):
                ino = self._new("dir")
                seen[key] = ino
                for name in sorted(os.listdir(path)):
                    child = os.path.join(path, name)
                    if os.path.islink(child) or name in self.ignore:
                        continue
                    self._live[ino].entries[name] = walk(child)
            else:
                ino = self._new("file")
                seen[key] = ino
                with open(path, "rb") as f:
                    self._live[ino].data = bytearray(f.read())
            return ino

        root = walk(self.base)
        self.initial = {
            i: _Inode(n.kind, bytearray(n.data), dict(n.entries)) for i, n in self._live.items()
        }
        return root

    def _split(self, path: str | os.PathLike[str]) -> list[str] | None:
        full = os.path.abspath(os.fspath(path))
        if full != self.base and not full.startswith(self.base + os.sep):
            real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
            if real != self.base and not real.startswith(self.base + os.sep):
                return None
            full = real
        rel = os.path.relpath(full, self.base)
        if os.path.basename(full) in self.ignore:
            return None
        return [] if rel == "." else rel.split(os.sep)

    def _lookup(self, parts: list[str]) -> int | None:
        ino: int | None = self.root
        for part in parts:
            if ino is None or self._live[ino].kind != "dir":
                return None
            ino = self._live[ino].entries.get(part)
        return ino

    def _parent(self, path: str | os.PathLike[str]) -> tuple[int, str] | None:
        parts = self._split(path)
        if not parts:
            return None
        dir_ino = self._lookup(parts[:-1])
        if dir_ino is None:
            raise AssertionError(f"crashsim: parent of {path} unknown to the model")
        return dir_ino, parts[-1]

    def _emit(self, event: Event, text: str) -> None:
        self.events.append(event)
        self.trace.append(text)

    def _rel(self, path: str | os.PathLike[str]) -> str:
        parts = self._split(path)
        return "/".join(parts) if parts else "."

    def _name_op(self, changes: tuple[tuple[int, str, int | None], ...], text: str) -> None:
        for dir_ino, name, target in changes:
            entries = self._live[dir_ino].entries
            if target is None:
                entries.pop(name, None)
            else:
                entries[name] = target
        dirs = frozenset(c[0] for c in changes)
        self._emit(("name", changes, dirs), text)

    # -- control ---------------------------------------------------------------
    def checkpoint(self) -> None:
        """Treat everything recorded so far as durable (as after ``sync(1)``)."""
        with self._lock:
            self.start = len(self.events)

    def mark(self, label: str) -> None:
        """Record that an operation was acknowledged here (it returned)."""
        with self._lock:
            self.marks.append((len(self.events), label))

    def live_tree(self) -> dict[str, bytes | None]:
        """The model's current tree: relative path -> bytes (None for a directory)."""
        return _build(self._live, self.root)

    def verify_against_disk(self) -> None:
        """Check the model against the real directory: a call outside the seam shows here."""
        real = {
            k: v for k, v in tree(self.base).items() if k.rsplit("/", 1)[-1] not in self.ignore
        }
        model = self.live_tree()
        if real != model:
            diff = sorted(set(real) ^ set(model)) + sorted(
                k for k in set(real) & set(model) if real[k] != model[k]
            )
            raise AssertionError(f"crashsim: model and disk differ at {diff[:10]}")

    # -- descriptors -------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        with self._lock:
            parts = self._split(path)
            existed = None if parts is None else self._lookup(parts)
            fd = super().open(path, flags, mode)
            if parts is None:
                self._fds[fd] = None
                return fd
            ino = existed
            if ino is None:
                if not flags & os.O_CREAT:
                    raise AssertionError(f"crashsim: {path} exists on disk but not in the model")
                parent = self._parent(path)
                assert parent is not None
                ino = self._new("file")
                self._emit(("new", ino, "file"), f"create-inode {ino}")
                self._name_op(((parent[0], parent[1], ino),), f"create {self._rel(path)}")
            elif flags & os.O_TRUNC and self._live[ino].kind == "file":
                self._live[ino].data = bytearray()
                self._emit(("trunc", ino, 0), f"open-truncate {self._rel(path)}")
            self._fds[fd] = ino
            if flags & os.O_APPEND:
                self._append.add(fd)
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            super().close(fd)
            self._fds.pop(fd, None)
            self._append.discard(fd)

    def _tracked(self, fd: int) -> int | None:
        if fd not in self._fds:
            raise AssertionError(f"crashsim: fd {fd} was not opened under the recorder")
        return self._fds[fd]

    def _wrote(self, ino: int, offset: int, data: bytes, what: str) -> None:
        node = self._live[ino]
        before = len(node.data)
        if offset > before:
            node.data.extend(b"\0" * (offset - before))
        node.data[offset : offset + len(data)] = data
        text = f"{what} ino {ino} @{offset} {len(data)} B"
        self._emit(("write", ino, offset, data, before), text)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            ino = self._tracked(fd)
            if ino is None:
                return super().write(fd, data)
            # O_APPEND writes land at the end; others at the descriptor's offset.
            append = fd in self._append
            offset = len(self._live[ino].data) if append else os.lseek(fd, 0, _SEEK_CUR)
            n = super().write(fd, data)
            self._wrote(ino, offset, bytes(data[:n]), "write")
            return n

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        with self._lock:
            ino = self._tracked(fd)
            n = super().pwrite(fd, data, offset)
            if ino is not None:
                self._wrote(ino, offset, bytes(data[:n]), "pwrite")
            return n

    def _sync(self, fd: int, what: str, call: Callable[[int], None]) -> None:
        with self._lock:
            ino = self._tracked(fd)
            call(fd)
            if ino is not None:
                self._emit(("sync", ino), f"{what} ino {ino}")

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync", super().fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync", super().fdatasync)

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            ino = self._tracked(fd)
            super().ftruncate(fd, length)
            if ino is not None:
                node = self._live[ino]
                if length < len(node.data):
                    del node.data[length:]
                else:
                    node.data.extend(b"\0" * (length - len(node.data)))
                self._emit(("trunc", ino, length), f"ftruncate ino {ino} to {length}")

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            ino = self._tracked(fd)
            super().fallocate(fd, offset, length)
            if ino is not None:
                node = self._live[ino]
                if offset + length > len(node.data):
                    node.data.extend(b"\0" * (offset + length - len(node.data)))
                self._emit(("falloc", ino, offset, length), f"fallocate ino {ino}")

    def mmap(self, fd: int, length: int, *, writable: bool = False, offset: int = 0) -> Any:
        with self._lock:
            if writable and self._tracked(fd) is not None:
                raise AssertionError("crashsim: writes through a writable mmap are not modelled")
            return super().mmap(fd, length, writable=writable, offset=offset)

    # -- names ---------------------------------------------------------------------
    def replace(self, src: str, dst: str) -> None:
        with self._lock:
            s, d = self._split(src), self._split(dst)
            super().replace(src, dst)
            if s is None and d is None:
                return
            if s is None or d is None:
                raise AssertionError(f"crashsim: rename across the base: {src} -> {dst}")
            sp, dp = self._parent(src), self._parent(dst)
            assert sp is not None and dp is not None
            ino = self._live[sp[0]].entries[sp[1]]
            if sp == dp:
                return
            self._name_op(
                ((sp[0], sp[1], None), (dp[0], dp[1], ino)),
                f"rename {self._rel(src)} -> {self._rel(dst)}",
            )

    def link(self, src: str, dst: str) -> None:
        with self._lock:
            s = self._split(src)
            super().link(src, dst)
            if s is None:
                return
            ino = self._lookup(s)
            dp = self._parent(dst)
            assert ino is not None and dp is not None
            self._name_op(((dp[0], dp[1], ino),), f"link {self._rel(src)} -> {self._rel(dst)}")

    def unlink(self, path: str) -> None:
        with self._lock:
            super().unlink(path)
            p = self._parent(path) if self._split(path) is not None else None
            if p is not None:
                self._name_op(((p[0], p[1], None),), f"unlink {self._rel(path)}")

    def rmdir(self, path: str) -> None:
        with self._lock:
            super().rmdir(path)
            p = self._parent(path) if self._split(path) is not None else None
            if p is not None:
                self._name_op(((p[0], p[1], None),), f"rmdir {self._rel(path)}")

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        with self._lock:
            super().mkdir(path, mode)
            p = self._parent(path) if self._split(path) is not None else None
            if p is not None:
                ino = self._new("dir")
                self._emit(("new", ino, "dir"), f"create-inode {ino} (dir)")
                self._name_op(((p[0], p[1], ino),), f"mkdir {self._rel(path)}")

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            super().fsync_dir(path)
            parts = self._split(path)
            if parts is not None:
                ino = self._lookup(parts)
                if ino is None:
                    raise AssertionError(f"crashsim: fsync_dir of {path}, unknown to the model")
                self._emit(("sync", ino), f"fsync_dir {self._rel(path)}")


class NoSyncFS(_fs.FileSystem):
    """The real file system with fsync, fdatasync and fsync_dir made free.

    For opening thousands of replayed crash states quickly: their durability
    is not what is being tested.
    """

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


# --------------------------------------------------------------------------- building states
def _build(
    nodes: dict[int, _Inode], root: int, cache: dict[int, tuple[_Inode, bytes]] | None = None
) -> dict[str, bytes | None]:
    """The tree under ``root``. ``cache`` keeps the bytes of unchanged inodes between calls."""
    out: dict[str, bytes | None] = {}

    def content(ino: int) -> bytes:
        node = nodes[ino]
        if cache is None:
            return bytes(node.data)
        hit = cache.get(ino)
        if hit is not None and hit[0] is node:
            return hit[1]
        data = bytes(node.data)
        cache[ino] = (node, data)
        return data

    def walk(ino: int, prefix: str, depth: int) -> None:
        if depth > 64:  # a cycle cannot happen with rename semantics; guard anyway
            raise AssertionError("crashsim: directory cycle")
        for name, child in sorted(nodes[ino].entries.items()):
            if child not in nodes:
                continue
            rel = f"{prefix}{name}"
            if nodes[child].kind == "dir":
                out[rel] = None
                walk(child, rel + "/", depth + 1)
            else:
                out[rel] = content(child)

    walk(root, "", 0)
    return out


def tree(path: str | os.PathLike[str]) -> dict[str, bytes | None]:
    """A real directory as ``relative path -> bytes`` (``None`` for a directory)."""
    base = os.fspath(path)
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for d in dirnames:
            out[prefix + d] = None
        for f in filenames:
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                continue
            with open(full, "rb") as fh:
                out[prefix + f] = fh.read()
    return out


@dataclasses.dataclass(frozen=True)
class CrashState:
    """One state a power loss could leave: the files after reboot."""

    prefix: int  # how many recorded events had happened (index into Recorder.events)
    acked: tuple[str, ...]  # labels of the operations that had returned by then
    files: dict[str, bytes | None]
    choice: str  # what survived, for reports

    def materialize(self, dest: str | os.PathLike[str]) -> Path:
        """Write this state into the empty or missing directory ``dest``."""
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        for rel, data in sorted(self.files.items()):
            target = root / rel
            if data is None:
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return root


def _write_variants(offset: int, data: bytes, before: int, block: int) -> list[tuple[Any, ...]]:
    variants: list[tuple[Any, ...]] = [("drop",), ("full",)]
    end = offset + len(data)
    if end > before:
        variants.append(("zero",))
    first = (offset // block + 1) * block
    for cut in range(first, end, block):
        variants.append(("head", cut - offset))
        variants.append(("tail", cut - offset))
    return variants


def _apply_data(node: _Inode, op: Event, variant: tuple[Any, ...]) -> None:
    kind = variant[0]
    if kind == "drop":
        return
    data = node.data
    if op[0] == "write":
        _, _, offset, payload, _ = op
        if kind == "full":
            piece_at, piece = offset, payload
        elif kind == "head":
            piece_at, piece = offset, payload[: variant[1]]
        elif kind == "tail":
            piece_at, piece = offset + variant[1], payload[variant[1] :]
        else:  # "zero": the size reached the disk, the data did not
            end = offset + len(payload)
            if end > len(data):
                data.extend(b"\0" * (end - len(data)))
            return
        if piece_at > len(data):
            data.extend(b"\0" * (piece_at - len(data)))
        data[piece_at : piece_at + len(piece)] = piece
    elif op[0] == "trunc":
        length = op[2]
        if length < len(data):
            del data[length:]
        else:
            data.extend(b"\0" * (length - len(data)))
    elif op[0] == "falloc":
        end = op[2] + op[3]
        if end > len(data):
            data.extend(b"\0" * (end - len(data)))


class _Sim:
    """Durable state plus pending (un-synced) operations, advanced one event at a time."""

    def __init__(self, rec: Recorder) -> None:
        self.root = rec.root
        self.durable: dict[int, _Inode] = {
            i: _Inode(n.kind, bytearray(n.data), dict(n.entries)) for i, n in rec.initial.items()
        }
        self.pending_data: dict[int, list[Event]] = {}
        self.pending_names: list[Event] = []
        # The bytes of durable inodes, valid while the inode object is unchanged.
        self.cache: dict[int, tuple[_Inode, bytes]] = {}

    def apply(self, ev: Event) -> None:
        kind = ev[0]
        if kind == "new":
            self.durable[ev[1]] = _Inode(ev[2])
        elif kind in ("write", "trunc", "falloc"):
            self.pending_data.setdefault(ev[1], []).append(ev)
        elif kind == "name":
            self.pending_names.append(ev)
        elif kind == "sync":
            ino = ev[1]
            node = self.durable[ino]
            if node.kind == "dir":
                keep = []
                for nev in self.pending_names:
                    if ino in nev[2]:
                        _apply_names(self.durable, nev)
                    else:
                        keep.append(nev)
                self.pending_names = keep
            else:
                for dev in self.pending_data.pop(ino, []):
                    _apply_data(node, dev, ("full",))
                self.cache.pop(ino, None)

    def commit_all(self) -> None:
        for ino, evs in self.pending_data.items():
            for dev in evs:
                _apply_data(self.durable[ino], dev, ("full",))
        self.pending_data = {}
        for nev in self.pending_names:
            _apply_names(self.durable, nev)
        self.pending_names = []


class _CopyOnWrite:
    """``own(ino)``: the inode in ``nodes``, copied on first use so the durable one stays."""

    def __init__(self, nodes: dict[int, _Inode]) -> None:
        self.nodes = nodes
        self.copied: set[int] = set()

    def __call__(self, ino: int) -> _Inode:
        if ino not in self.copied:
            n = self.nodes[ino]
            self.nodes[ino] = _Inode(n.kind, bytearray(n.data), dict(n.entries))
            self.copied.add(ino)
        return self.nodes[ino]


def _apply_names(nodes: dict[int, _Inode], ev: Event) -> None:
    for dir_ino, name, target in ev[1]:
        entries = nodes[dir_ino].entries
        if target is None:
            entries.pop(name, None)
        else:
            entries[name] = target


def crash_states(
    rec: Recorder,
    *,
    block: int = 512,
    cap: int = 256,
    seed: int = 0,
    reorder: bool = True,
) -> Iterator[CrashState]:
    """Every distinct crash state of the recording after its checkpoint (see the module doc).

    ``reorder=False`` keeps each file's un-synced data operations in order (only a
    prefix of them survives, the last one possibly torn): a milder, ext4
    ``data=ordered``-like model.
    """
    rng = random.Random(seed)
    sim = _Sim(rec)
    for ev in rec.events[: rec.start]:
        sim.apply(ev)
    sim.commit_all()
    seen: set[bytes] = set()
    for prefix in range(rec.start, len(rec.events) + 1):
        if prefix > rec.start:
            sim.apply(rec.events[prefix - 1])
            if rec.events[prefix - 1][0] == "new":
                continue  # no state of its own: its name comes with the next event
        acked = tuple(label for at, label in rec.marks if at <= prefix)
        for files, choice in _states_at(sim, block, cap, rng, reorder):
            # The same tree is checked again once more operations were acknowledged:
            # "old value" is fine before an acknowledgement and a violation after it.
            digest = _digest(files) + repr(acked).encode()
            if digest in seen:
                continue
            seen.add(digest)
            after = rec.trace[prefix - 1] if prefix else "start"
            yield CrashState(prefix, acked, files, f"after {after}: {choice}")


def _digest(files: dict[str, bytes | None]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for rel, data in sorted(files.items()):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(b"D" if data is None else b"F%d:" % len(data) + data)
    return h.digest()


def _states_at(
    sim: _Sim, block: int, cap: int, rng: random.Random, reorder: bool
) -> Iterator[tuple[dict[str, bytes | None], str]]:
    # One "item" per independent choice; each item's variants.
    items: list[tuple[str, Any, list[tuple[Any, ...]]]] = []
    for ino, evs in sorted(sim.pending_data.items()):
        if reorder:
            for ev in evs:
                if ev[0] == "write":
                    variants = _write_variants(ev[2], ev[3], ev[4], block)
                else:
                    variants = [("drop",), ("full",)]
                items.append(("data", (ino, ev), variants))
        else:
            # How many of the file's pending operations survived, in order; the last one
            # that survived may be torn or zero-filled.
            seq: list[tuple[Any, ...]] = [("upto", 0, None)]
            for i, ev in enumerate(evs):
                if ev[0] == "write":
                    for v in _write_variants(ev[2], ev[3], ev[4], block)[1:]:
                        seq.append(("upto", i + 1, v))
                else:
                    seq.append(("upto", i + 1, ("full",)))
            items.append(("ordered", (ino, evs), seq))
    for nev in sim.pending_names:
        items.append(("name", nev, [("lost",), ("kept",)]))

    sizes = [len(v) for _, _, v in items]
    total = 1
    for s in sizes:
        total *= s
    combos: Iterator[tuple[int, ...]]
    if total <= cap:
        combos = itertools.product(*(range(s) for s in sizes))
    else:
        picked: list[tuple[int, ...]] = [tuple(0 for _ in sizes), tuple(s - 1 for s in sizes)]
        # all-applied: index 1 is "full"/"kept" for independent items, the last for ordered ones
        picked.append(tuple(1 if kind != "ordered" else len(v) - 1 for kind, _, v in items))
        chosen = set(picked)
        tries = 0
        while len(picked) < cap and tries < cap * 20:
            tries += 1
            combo = tuple(rng.randrange(s) for s in sizes)
            if combo not in chosen:
                chosen.add(combo)
                picked.append(combo)
        combos = iter(picked)

    for combo in combos:
        # Copy on write: only the inodes a choice changes are copied.
        nodes = dict(sim.durable)
        own = _CopyOnWrite(nodes)

        desc: list[str] = []
        for (kind, what, variants), idx in zip(items, combo, strict=True):
            v = variants[idx]
            if kind == "data":
                ino, ev = what
                if v[0] != "drop":
                    _apply_data(own(ino), ev, v)
                if v[0] != "full":
                    desc.append(f"{ev[0]}@ino{ino}:{'/'.join(map(str, v))}")
            elif kind == "ordered":
                ino, evs = what
                _, upto, last = v
                for j, ev in enumerate(evs[:upto]):
                    _apply_data(own(ino), ev, last if j == upto - 1 else ("full",))
                if upto < len(evs) or (last is not None and last[0] != "full"):
                    desc.append(f"ino{ino}:{upto}/{len(evs)}:{last}")
            else:
                if v[0] == "kept":
                    for dir_ino, _name, _target in what[1]:
                        own(dir_ino)
                    _apply_names(nodes, what)
                else:
                    desc.append("lost " + "+".join(f"{c[1]}" for c in what[1]))
        yield _build(nodes, sim.root, sim.cache), ", ".join(desc) or "everything survived"


# --------------------------------------------------------------------------- exploring
@dataclasses.dataclass
class Exploration:
    """What :func:`explore` did: distinct states checked and the violations found."""

    name: str
    states: int = 0
    events: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.name}: {self.states} crash states from {self.events} recorded calls, "
            f"{len(self.violations)} violations"
        )


def explore(
    name: str,
    rec: Recorder,
    check: Callable[[Path, CrashState], None],
    workdir: str | os.PathLike[str],
    *,
    max_violations: int = 5,
    **kwargs: Any,
) -> Exploration:
    """Replay every crash state of ``rec`` into a fresh directory and run ``check`` on it.

    ``check(directory, state)`` opens the state with the public API and raises
    (anything) on a violation. It runs under :class:`NoSyncFS`.
    """
    result = Exploration(name, events=len(rec.events) - rec.start)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with _fs.use(NoSyncFS()):
        for i, state in enumerate(crash_states(rec, **kwargs)):
            result.states += 1
            dest = work / f"s{i}"
            root = state.materialize(dest)
            try:
                check(root, state)
            except Exception as exc:  # a violation: collect it with the state that showed it
                result.violations.append(
                    f"[{type(exc).__name__}: {exc}] at call {state.prefix} ({state.choice}); "
                    f"acked={list(state.acked)}"
                )
                if len(result.violations) >= max_violations:
                    shutil.rmtree(dest, ignore_errors=True)
                    break
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    return result


def is_enospc(exc: BaseException) -> bool:
    """True for the "disk full" family of errors."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
