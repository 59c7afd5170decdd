"""The strace reader on hand-written recordings: what each call means to the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from racefree.testing import ModelError, Recording
from racefree.testing.strace import StraceReader


def h(text: str | bytes) -> str:
    """A string as strace -xx prints it."""
    data = text.encode() if isinstance(text, str) else text
    return "".join(f"\\x{b:02x}" for b in data)


def read(base: Path, lines: list[str]) -> tuple[Recording, StraceReader]:
    rec = Recording(base)
    reader = StraceReader(rec, str(base))
    reader.feed(lines)
    return rec, reader


def fd(n: int, path: Path | str) -> str:
    return f"{n}<{h(str(path))}>"


def test_writes_offsets_dup_append_and_output(tmp_path: Path) -> None:
    f, log = tmp_path / "f", tmp_path / "log"
    (tmp_path / "log").write_bytes(b"12345")
    cwd = f"AT_FDCWD<{h(str(tmp_path))}>"
    rec, reader = read(tmp_path, [
        f'10 openat({cwd}, "{h("f")}", O_WRONLY|O_CREAT|O_TRUNC, 0644) = {fd(3, f)}',
        f'10 write({fd(3, f)}, "{h("abc")}", 3) = 3',
        f"10 dup({fd(3, f)}) = {fd(4, f)}",
        f'10 write({fd(4, f)}, "{h("de")}", 2) = 2',  # the shared offset: at 3
        f"10 lseek({fd(3, f)}, 1, SEEK_SET) = 1",
        f'10 writev({fd(4, f)}, [{{iov_base="{h("X")}", iov_len=1}}], 1) = 1',
        f'10 pwrite64({fd(3, f)}, "{h("Z")}", 1, 9) = 1',
        f'10 write({fd(3, f)}, "{h("never")}", 5) = -1 ENOSPC (No space left on device)',
        f'10 openat({cwd}, "{h("log")}", O_WRONLY|O_APPEND) = {fd(5, log)}',
        f'10 write({fd(5, log)}, "{h("67")}", 2 <unfinished ...>',
        f'11 write(1<pipe:[7]>, "{h("saved 1")}", 7) = 7',
        "10 <... write resumed>) = 2",
        f"10 fsync({fd(5, log)}) = 0",
        "10 sync() = 0",
    ])
    assert rec.live_tree() == {"f": b"aXcde\0\0\0\0Z", "log": b"1234567"}
    assert rec.marks == [(rec.events.index(next(e for e in rec.events if e[0] == "write"
                                                and e[3] == b"67")), "saved 1")]
    assert [e[0] for e in rec.events][-2:] == ["sync", "syncall"]
    assert reader.calls == 8 and reader.notes == []


def test_threads_share_descriptors_and_forks_copy_them(tmp_path: Path) -> None:
    f = tmp_path / "f"
    cwd = f"AT_FDCWD<{h(str(tmp_path))}>"
    rec, _ = read(tmp_path, [
        f'1 openat({cwd}, "{h("f")}", O_RDWR|O_CREAT, 0644) = {fd(3, f)}',
        "1 clone(child_stack=0x1, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_THREAD <unfinished"
        " ...>",
        f'2 write({fd(3, f)}, "{h("thread")}", 6) = 6',  # the thread, before clone returns
        "1 <... clone resumed>) = 2",
        "1 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = 3",
        f'3 write({fd(3, f)}, "{h("fork")}", 4) = 4',  # the forked child shares the offset
        f"3 close({fd(3, f)}) = 0",
        f'1 write({fd(3, f)}, "{h("!")}", 1) = 1',  # still open in the parent
    ])
    assert rec.live_tree() == {"f": b"threadfork!"}


def test_names_exchange_deleted_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    cwd = f"AT_FDCWD<{h(str(tmp_path))}>"
    rec, _ = read(tmp_path, [
        f'1 renameat2({cwd}, "{h("a")}", {cwd}, "{h("b")}", RENAME_EXCHANGE) = 0',
        f'1 mkdir("{h("sub")}", 0777) = 0',
        f'1 rename("{h("a")}", "{h("sub/a")}") = 0',
        f'1 openat({cwd}, "{h("sub/a")}", O_WRONLY) = {fd(3, tmp_path / "sub/a")}',
        f'1 unlink("{h("sub/a")}") = 0',
        f'1 write(3<{h(str(tmp_path / "sub/a"))}>(deleted), "{h("gone")}", 4) = 4',
        f'1 openat({cwd}, "{h("sub")}", O_RDONLY|O_DIRECTORY) = {fd(4, tmp_path / "sub")}',
        f"1 fsync({fd(4, tmp_path / 'sub')}) = 0",
    ])
    assert rec.live_tree() == {"b": b"A", "sub": None}  # exchanged, then "a" moved, removed
    assert rec.events[0][0] == "name" and len(rec.events[0][1]) == 2
    assert rec.events[-1][0] == "sync"


def test_what_cannot_be_modelled_is_said(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    with pytest.raises(ModelError, match="moved into the modelled directory"):
        read(tmp_path, [f'1 rename("{h(str(outside))}", "{h(str(tmp_path / "x"))}") = 0'])
    with pytest.raises(ModelError, match="cut a string"):
        read(tmp_path, [f'1 write(1<pipe:[1]>, "{h("abc")}"..., 99999) = 99999'])
    (tmp_path / "m").write_bytes(b"")
    _, reader = read(tmp_path, [
        f"1 openat(AT_FDCWD<{h(str(tmp_path))}>, \"{h('m')}\", O_RDWR) = {fd(3, tmp_path / 'm')}",
        f"1 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_SHARED, {fd(3, tmp_path / 'm')}, 0) = "
        "0x7f0000000000",
        f"1 sync_file_range({fd(3, tmp_path / 'm')}, 0, 0, SYNC_FILE_RANGE_WRITE) = 0",
    ])
    assert any("shared mmap" in n for n in reader.notes)
    assert any("sync_file_range makes nothing durable" in n for n in reader.notes)
