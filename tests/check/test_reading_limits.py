"""Reading never raises RecursionError, OverflowError, MemoryError or struct.error for
anything a file can hold: damage is CorruptFileError (or FormatError) with the path and
the offset, and ``racefree check`` reports it in one line; files that are not racefree's
are skipped, not judged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from racefree import AppendLog, CorruptFileError, JsonFile, Store
from racefree.check.checker import check_path
from racefree.log import frame as _frame


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "racefree", "check", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


def _deep_stack(depth: int, fn: object) -> object:
    if depth > 0:
        return _deep_stack(depth - 1, fn)
    return fn()  # type: ignore[operator]


def test_deep_json_file(tmp_path: Path) -> None:
    """A JSON file nested 100,000 deep: CorruptFileError at the offset where the parser
    gives up; one nested 400 deep reads from a nearly full call stack."""
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptFileError) as info:
        JsonFile(deep).read()
    assert info.value.path == str(deep) and info.value.offset == 900
    assert "nested too deeply" in info.value.detail
    ok = tmp_path / "ok.json"
    ok.write_bytes(b"[" * 400 + b"]" * 400)
    frames = sys.getrecursionlimit() - _stack_depth() - 20  # 20 frames left for the read
    assert _deep_stack(frames, JsonFile(ok).read) == _nest(400)
    proc = cli(str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"DAMAGED  json    {deep}: {deep} at byte offset 900: nested too deeply" in proc.stdout


def _nest(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _log_with(path: Path, body: bytes) -> int:
    with AppendLog(path) as log:
        log.append({"i": 0})
    at = path.stat().st_size
    with path.open("ab") as f:
        f.write(_frame.encode(body))
    return at


def test_deep_log_record_with_a_valid_checksum(tmp_path: Path) -> None:
    """A record nested 100,000 deep whose checksum holds: CorruptFileError at its offset
    for readers and writers, and check reports it without a traceback."""
    path = tmp_path / "e.log"
    at = _log_with(path, b"[" * 100_000 + b"]" * 100_000)
    with AppendLog(path) as log:
        with pytest.raises(CorruptFileError) as info:
            list(log)
        assert (info.value.path, info.value.offset) == (str(path), at)
        assert "nested too deeply" in info.value.detail
    proc = cli(str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("DAMAGED  log")


def test_huge_batch_count_with_a_valid_checksum(tmp_path: Path) -> None:
    """``*1000000000000 [1,2]``: a count no body of that size can hold. len(), reads and
    appends raise CorruptFileError at its offset; nothing believes in 10**12 records."""
    path = tmp_path / "e.log"
    at = _log_with(path, b"*1000000000000 [1,2]")
    with AppendLog(path) as log:
        for call in (lambda: len(log), lambda: list(log), lambda: log.append(1)):
            with pytest.raises(CorruptFileError) as info:
                call()
            assert info.value.offset == at
            assert info.value.detail == "a batch record has no valid count"
    assert path.read_bytes().endswith(b"*1000000000000 [1,2]\n")


def test_deep_store_document_with_a_valid_checksum(tmp_path: Path) -> None:
    """A document nested deeper than any racefree writes, in a record whose crc holds
    (as an older racefree or another program could leave): get raises CorruptFileError
    with the offset, check reports it, nothing else is affected."""
    from racefree.store.segment import ENTRY, OP_PUT, SEG_HEADER, frame, iter_frames

    d = tmp_path / "s"
    with Store(d) as s:
        s.put("a", {"n": 1})
    seg = d / "seg-00000001.rfs"
    data = bytearray(seg.read_bytes())
    [(off, n)] = list(iter_frames(bytes(data), SEG_HEADER.size))
    doc = b'{"d":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    record = frame(1 << 40 | off + n, ENTRY.pack(OP_PUT, 4, 1, len(doc)) + b"deep" + doc)
    data[off + n:off + n + len(record)] = record
    seg.write_bytes(bytes(data))
    with Store(d) as s:
        assert s.get("a") == {"n": 1}
        with pytest.raises(CorruptFileError) as info:
            s.get("deep")
        assert "nested too deeply" in info.value.detail
        # The bracket that opens level 101: racefree never writes deeper than 100.
        assert info.value.offset == off + n + len(record) - len(doc) + 5 + 99
    [found] = check_path(d)
    assert not found.ok and "nested too deeply" in found.detail


@pytest.mark.parametrize(("name", "text"), [
    ("pyproject.toml", "[project]\nname = 'x'\n"),
    ("setup.cfg", "[metadata]\nname = x\n"),
    ("Cargo.lock", "# generated\n[[package]]\n"),
])
def test_files_that_are_not_racefree_are_skipped(tmp_path: Path, name: str, text: str) -> None:
    """A project's own files are not racefree's: skipped, never reported as damaged JSON."""
    (tmp_path / name).write_text(text)
    JsonFile(tmp_path / "state.json").write({"a": 1})
    proc = cli(str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert f"skipped  skipped {tmp_path / name}: not a racefree" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 checked, 0 damaged, 1 skipped"
    proc = cli(str(tmp_path / name))
    assert proc.returncode == 1 and "DAMAGED" not in proc.stdout
    assert proc.stdout.startswith(f"skipped  skipped {tmp_path / name}: not a racefree")
