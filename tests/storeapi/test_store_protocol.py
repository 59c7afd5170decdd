"""The order of the file store's system calls, recorded at the fs seam.

What must be on disk before what (the power-loss argument of docs/store.md): a
durable put's record is fdatasynced before put returns; a new segment is
zero-filled, synced and its directory entry synced before the MANIFEST names it,
and the MANIFEST names it before any record is written to it; compaction's
segments are synced before the MANIFEST switch, and old segments are unlinked
only after it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from racefree import Store, _fs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


class Recorder(_fs.FileSystem):
    """Records (op, file name) for every call that touches a file."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}
        for name in os.listdir("/proc/self/fd"):  # descriptors opened before recording
            with contextlib.suppress(OSError):
                self.names[int(name)] = os.path.basename(os.readlink(f"/proc/self/fd/{name}"))

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path)
        self.calls.append(("open", os.path.basename(path)))
        return fd

    def _fd(self, op: str, fd: int) -> None:
        self.calls.append((op, self.names.get(fd, f"fd{fd}")))

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._fd("pwrite", fd)
        return super().pwrite(fd, data, offset)

    def write(self, fd: int, data: Any) -> int:
        self._fd("write", fd)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._fd("fsync", fd)
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._fd("fdatasync", fd)
        super().fdatasync(fd)

    def replace(self, src: str, dst: str) -> None:
        self.calls.append(("replace", os.path.basename(dst)))
        super().replace(src, dst)

    def unlink(self, path: str) -> None:
        self.calls.append(("unlink", os.path.basename(path)))
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self.calls.append(("fsync_dir", ""))
        super().fsync_dir(path)

    def only(self, *ops: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in ops]


SEG1, SEG2 = "seg-00000001.rfs", "seg-00000002.rfs"


def test_durable_put_is_one_pwrite_then_one_fdatasync(tmp_path: Path) -> None:
    """A durable put: pwrite of the record, then fdatasync of that segment; nothing else."""
    with Store(tmp_path / "s", durable=True) as s:
        s.put("warm", {})
        rec = Recorder()
        with _fs.use(rec):
            s.put("a", {"n": 1})
        assert rec.only("pwrite", "write", "fsync", "fdatasync", "replace", "unlink") == [
            ("pwrite", SEG1), ("fdatasync", SEG1)
        ]


def test_non_durable_put_is_one_pwrite(tmp_path: Path) -> None:
    """A put with durable=False writes its record and syncs nothing."""
    with Store(tmp_path / "s", durable=False) as s:
        rec = Recorder()
        with _fs.use(rec):
            s.put("a", {"n": 1})
            s.get("a")
        assert rec.only("pwrite", "write", "fsync", "fdatasync", "replace") == [("pwrite", SEG1)]


def test_segment_roll_order(tmp_path: Path) -> None:
    """Create, fill and sync the new segment, sync the directory, then the MANIFEST names it,
    and only then is a record written to it and synced."""
    with Store(tmp_path / "s", durable=True, _segment_size=64 << 10) as s:
        rec = Recorder()
        with _fs.use(rec):
            i = 0
            while not (tmp_path / "s" / SEG2).exists():
                s.put(f"k{i}", {"pad": "p" * 4000})
                i += 1
        calls = rec.calls
        created = calls.index(("open", SEG2))
        seg_synced = calls.index(("fdatasync", SEG2), created)
        dir_synced = calls.index(("fsync_dir", ""), seg_synced)
        named = calls.index(("replace", "MANIFEST"), dir_synced)
        manifest_dir_synced = calls.index(("fsync_dir", ""), named)
        first_record = calls.index(("pwrite", SEG2), manifest_dir_synced)
        assert calls.index(("fdatasync", SEG2), first_record) > first_record
        # Before the roll the sealed segment's last record was synced too.
        assert ("fdatasync", SEG1) in calls[:created]


def test_compaction_order(tmp_path: Path) -> None:
    """Compaction syncs its new segments before the MANIFEST switch and unlinks old ones after."""
    with Store(tmp_path / "s", durable=False) as s:
        for i in range(20):
            s.put(f"k{i}", {"i": i})
            s.put(f"k{i}", {"i": i + 1})
        rec = Recorder()
        with _fs.use(rec):
            s.compact()
        calls = rec.calls
        switch = calls.index(("replace", "MANIFEST"))
        assert ("fdatasync", SEG2) in calls[:switch]
        last_write = max(i for i, c in enumerate(calls) if c == ("pwrite", SEG2))
        assert last_write < calls.index(("fdatasync", SEG2), last_write) < switch
        assert calls.index(("unlink", SEG1)) > switch
        assert ("pwrite", SEG1) not in calls
        assert ("unlink", SEG2) not in calls[switch:]
