"""A recording: what a sequence of file-system calls means to a power-loss model.

:class:`Recording` keeps a model of one directory tree (inodes, names, bytes)
and, for every call that changes it, one *event*. Two front ends feed it: the
seam :class:`~racefree.testing.Recorder` (every call racefree makes) and the
``strace`` reader behind ``racefree crashcheck`` (every call any program makes).
:mod:`racefree.testing.states` turns the events into crash states.

Events, one per call that changes a tracked file or name::

    ("write", ino, offset, data, size_before)   ("trunc", ino, length)
    ("falloc", ino, offset, length)             ("sync", ino)  file data, or a directory's names
    ("name", ((dir_ino, name, target_or_None), ...), dirs, text)  one atomic name operation
    ("new", ino, kind)                          a fresh inode (its name comes with a "name")
    ("syncall",)                                ``sync(2)``: everything so far is durable
    ("out", data)                               the program printed ``data`` (crashcheck)

Names are resolved to inodes as the calls happen, so a rename moves the inode
that an open descriptor still names, and a write through that descriptor lands
in the renamed file.
"""

from __future__ import annotations

import dataclasses
import os
import stat as statmod
import threading
from typing import Any

from racefree.testing._disk import REAL, read_bytes, read_tree

__all__ = ["Event", "Inode", "ModelError", "Recording", "build_tree"]

Event = tuple[Any, ...]


class ModelError(AssertionError):
    """The recording cannot be modelled (a call the model does not know, or a model that
    no longer matches the disk). An ``AssertionError``: the test or check cannot be trusted."""


@dataclasses.dataclass
class Inode:
    """A file (``data``) or a directory (``entries``: name -> inode number)."""

    kind: str  # "file" | "dir"
    data: bytearray = dataclasses.field(default_factory=bytearray)
    entries: dict[str, int] = dataclasses.field(default_factory=dict)

    def copy(self) -> Inode:
        return Inode(self.kind, bytearray(self.data), dict(self.entries))


class Recording:
    """The model of the tree under ``base`` and the events that changed it.

    ``ignore`` names files left out of the model wherever they are (a cache
    rebuilt from the other files on open, such as a store's shared-memory header,
    which is written through a writable ``mmap``). Every method is thread-safe.
    """

    def __init__(self, base: str | os.PathLike[str], *, ignore: tuple[str, ...] = ()) -> None:
        self.base = REAL.realpath(os.fspath(base))
        self.ignore = tuple(ignore)
        self.lock = threading.RLock()
        self.events: list[Event] = []
        self.trace: list[str] = []  # one line per event: what the call was, for reports
        self.marks: list[tuple[int, str]] = []
        self.start = 0  # events before this index are durable (see checkpoint)
        self.notes: list[str] = []  # what the model could not represent, for reports
        self._next = 0
        self.live: dict[int, Inode] = {}
        self.initial: dict[int, Inode] = {}
        self.root = self._scan()

    # -- the model of the live (volatile) tree ----------------------------------
    def new_inode(self, kind: str) -> int:
        ino = self._next
        self._next += 1
        self.live[ino] = Inode(kind)
        return ino

    def _scan(self) -> int:
        seen: dict[tuple[int, int], int] = {}

        def walk(path: str) -> int:
            st = REAL.stat(path, follow_symlinks=False)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return seen[key]
            if statmod.S_ISDIR(st.st_mode):
                ino = self.new_inode("dir")
                seen[key] = ino
                for name in sorted(REAL.listdir(path)):
                    child = os.path.join(path, name)
                    cst = REAL.stat(child, follow_symlinks=False)
                    if name in self.ignore or not (
                        statmod.S_ISDIR(cst.st_mode) or statmod.S_ISREG(cst.st_mode)
                    ):
                        continue
                    self.live[ino].entries[name] = walk(child)
            else:
                ino = self.new_inode("file")
                seen[key] = ino
                self.live[ino].data = bytearray(read_bytes(path))
            return ino

        root = walk(self.base)
        self.initial = {i: n.copy() for i, n in self.live.items()}
        return root

    def split(self, path: str | os.PathLike[str]) -> list[str] | None:
        """``path`` as components under the base, or None when it is outside (or ignored)."""
        full = os.path.normpath(os.path.abspath(os.fspath(path)))
        if full != self.base and not full.startswith(self.base + os.sep):
            real = os.path.join(REAL.realpath(os.path.dirname(full)), os.path.basename(full))
            if real != self.base and not real.startswith(self.base + os.sep):
                return None
            full = real
        if os.path.basename(full) in self.ignore:
            return None
        rel = os.path.relpath(full, self.base)
        return [] if rel == "." else rel.split(os.sep)

    def lookup(self, parts: list[str]) -> int | None:
        ino: int | None = self.root
        for part in parts:
            if ino is None or self.live[ino].kind != "dir":
                return None
            ino = self.live[ino].entries.get(part)
        return ino

    def parent(self, path: str | os.PathLike[str]) -> tuple[int, str] | None:
        """The directory inode and the last name of ``path``; None outside the base."""
        parts = self.split(path)
        if not parts:
            return None
        dir_ino = self.lookup(parts[:-1])
        if dir_ino is None:
            raise ModelError(f"the parent of {path} is unknown to the model")
        return dir_ino, parts[-1]

    def rel(self, path: str | os.PathLike[str]) -> str:
        parts = self.split(path)
        return "/".join(parts) if parts else "."

    def emit(self, event: Event, text: str) -> None:
        self.events.append(event)
        self.trace.append(text)

    def name_op(self, changes: tuple[tuple[int, str, int | None], ...], text: str) -> None:
        for dir_ino, name, target in changes:
            entries = self.live[dir_ino].entries
            if target is None:
                entries.pop(name, None)
            else:
                entries[name] = target
        self.emit(("name", changes, frozenset(c[0] for c in changes), text), text)

    # -- what calls mean (both front ends use these) --------------------------------
    def note_create(self, path: str, kind: str, text: str) -> int | None:
        """A new file or directory at ``path`` (None when ``path`` is outside the base)."""
        where = self.parent(path)
        if where is None:
            return None
        ino = self.new_inode(kind)
        self.emit(("new", ino, kind), f"create-inode {ino} ({kind})")
        self.name_op(((where[0], where[1], ino),), text)
        return ino

    def note_write(self, ino: int, offset: int, data: bytes, text: str) -> None:
        node = self.live[ino]
        before = len(node.data)
        if offset > before:
            node.data.extend(b"\0" * (offset - before))
        node.data[offset : offset + len(data)] = data
        self.emit(("write", ino, offset, bytes(data), before), text)

    def note_truncate(self, ino: int, length: int, text: str) -> None:
        node = self.live[ino]
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(b"\0" * (length - len(node.data)))
        self.emit(("trunc", ino, length), text)

    def note_allocate(self, ino: int, offset: int, length: int, text: str) -> None:
        node = self.live[ino]
        if offset + length > len(node.data):
            node.data.extend(b"\0" * (offset + length - len(node.data)))
        self.emit(("falloc", ino, offset, length), text)

    def note_sync(self, ino: int, text: str) -> None:
        self.emit(("sync", ino), text)

    def note_rename(self, src: str, dst: str, text: str) -> None:
        s, d = self.split(src), self.split(dst)
        if s is None and d is None:
            return
        if s is None or d is None:
            raise ModelError(f"a rename across the base is not modelled: {src} -> {dst}")
        sp, dp = self.parent(src), self.parent(dst)
        assert sp is not None and dp is not None  # both are under the base
        ino = self.live[sp[0]].entries.get(sp[1])
        if ino is None:
            raise ModelError(f"rename of {src}, unknown to the model")
        if sp == dp or self.live[dp[0]].entries.get(dp[1]) == ino:
            return  # a rename onto itself (or onto another link of it) changes nothing
        self.name_op(((sp[0], sp[1], None), (dp[0], dp[1], ino)), text)

    def note_link(self, src: str, dst: str, text: str) -> None:
        s = self.split(src)
        dp = self.parent(dst)
        if s is None or dp is None:
            if (s is None) != (dp is None):
                raise ModelError(f"a link across the base is not modelled: {src} -> {dst}")
            return
        ino = self.lookup(s)
        if ino is None:
            raise ModelError(f"link of {src}, unknown to the model")
        self.name_op(((dp[0], dp[1], ino),), text)

    def note_remove(self, path: str, text: str) -> None:
        """``unlink`` or ``rmdir`` of ``path``."""
        p = self.parent(path)
        if p is not None:
            self.name_op(((p[0], p[1], None),), text)

    # -- control -----------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Treat everything recorded so far as durable (as after ``sync(1)``)."""
        with self.lock:
            self.start = len(self.events)

    def mark(self, label: str) -> None:
        """Record that an operation was acknowledged here (it returned)."""
        with self.lock:
            self.marks.append((len(self.events), label))

    def live_tree(self) -> dict[str, bytes | None]:
        """The model's current tree: relative path -> bytes (None for a directory)."""
        return build_tree(self.live, self.root)

    def differences(self) -> list[str]:
        """The paths where the model and the real directory differ (at most 10)."""
        real = read_tree(self.base, ignore=self.ignore)
        model = self.live_tree()
        diff = sorted(set(real) ^ set(model)) + sorted(
            k for k in set(real) & set(model) if real[k] != model[k]
        )
        return diff[:10]

    def verify_against_disk(self) -> None:
        """Check the model against the real directory: a call outside the seam shows here."""
        diff = self.differences()
        if diff:
            raise ModelError(
                f"the recording does not match the directory at {diff}: something changed "
                "these files without going through the recorded calls"
            )


def build_tree(
    nodes: dict[int, Inode], root: int, cache: dict[int, tuple[Inode, bytes]] | None = None
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
            raise ModelError("directory cycle in the model")
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
