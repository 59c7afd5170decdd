"""``racefree log FILE tail | check``: output, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from racefree import AppendLog
from racefree.cli import main


def make_log(path: Path, records: list[object]) -> None:
    with AppendLog(path) as log:
        for record in records:
            log.append(record)


def test_tail_prints_last_records_as_json_lines(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """tail -n N prints the last N records, one JSON value a line, non-ASCII kept."""
    path = tmp_path / "x.log"
    make_log(path, [{"i": i, "s": "é"} for i in range(20)])
    assert main(["log", str(path), "tail", "-n", "3"]) == 0
    assert capsys.readouterr().out == "".join(f'{{"i": {i}, "s": "é"}}\n' for i in (17, 18, 19))
    assert main(["log", str(path), "tail", "-n", "2", "--seq"]) == 0
    assert capsys.readouterr().out == '18\t{"i": 18, "s": "é"}\n19\t{"i": 19, "s": "é"}\n'
    assert main(["log", str(path), "tail", "-n", "0"]) == 0
    assert capsys.readouterr().out == ""


def test_tail_after_compaction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tail shows only records stored after the snapshot, even when fewer than N."""
    path = tmp_path / "x.log"
    make_log(path, list(range(5)))
    with AppendLog(path) as log:
        log.compact(lambda s, r: s + r, 0)
        log.extend([5, 6])
    assert main(["log", str(path), "tail", "-n", "10", "--seq"]) == 0
    assert capsys.readouterr().out == "5\t5\n6\t6\n"


def test_check_ok_and_torn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check prints one summary line, mentions a torn tail, exits 0, and changes nothing."""
    path = tmp_path / "x.log"
    make_log(path, ["a", "b", "c"])
    size = path.stat().st_size
    assert main(["log", str(path), "check"]) == 0
    assert capsys.readouterr().out == (
        f"{path}: ok: 3 records (sequence 0..2), {size} bytes, segment 0; no torn tail\n")
    with path.open("ab") as f:
        f.write(b"12 abc")
    assert main(["log", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok: 3 records (sequence 0..2), {size + 6} bytes")
    assert "an incomplete last record of 6 bytes" in out
    assert path.stat().st_size == size + 6


def test_check_damage_exits_1_with_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped byte before good records: exit 1, one stderr line with the offset and line."""
    path = tmp_path / "x.log"
    make_log(path, ["aaaa", "bbbb", "cccc"])
    data = bytearray(path.read_bytes())
    lines = bytes(data).splitlines(keepends=True)
    offset = len(lines[0])
    data[offset + 13] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["log", str(path), "check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"racefree log: error: {path} at byte offset {offset}, line 2: "
                            f"a damaged record is followed by valid records\n")
    assert main(["log", str(path), "tail"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file or a file that is not a log: exit 1, one line, nothing created."""
    missing = tmp_path / "missing.log"
    assert main(["log", str(missing), "tail"]) == 1
    assert capsys.readouterr().err == f"racefree log: error: no log at {missing}\n"
    assert not missing.exists()
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    assert main(["log", str(other), "check"]) == 1
    assert capsys.readouterr().err == (
        f"racefree log: error: {other}: not a racefree log: its first line is not a valid "
        f"log header\n")
    make_log(tmp_path / "x.log", ["a"])
    assert main(["log", str(tmp_path / "x.log"), "tail", "-n", "-1"]) == 1
    assert capsys.readouterr().err == "racefree log: error: -n must be 0 or more, not -1\n"


@pytest.mark.parametrize("action", ["tail", "check"])
def test_a_directory_or_an_empty_file_is_no_log(tmp_path: Path, action: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A directory, or an empty file (say a .lock file), is refused with one line naming it,
    exit 1, nothing printed and nothing written: racefree never wrote a log without a header."""
    assert main(["log", str(tmp_path), action]) == 1
    assert capsys.readouterr() == ("", f"racefree log: error: {tmp_path} is a directory, "
                                       f"not a log\n")
    empty = tmp_path / "x.log.lock"
    empty.write_bytes(b"")
    assert main(["log", str(empty), action]) == 1
    assert capsys.readouterr() == ("", f"racefree log: error: {empty} is empty: not a "
                                       f"racefree log\n")
    assert empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log.lock"]


def test_check_reports_a_damaged_last_record_and_a_hole(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 1 with one line on a whole last record that fails its checksum, and on a
    hole before valid durable=False records; the file is left as it was."""
    path = tmp_path / "x.log"
    make_log(path, ["aaaa", "bbbb"])
    good = path.read_bytes()
    last = len(good) - len(good.splitlines(keepends=True)[-1])
    path.write_bytes(good[:-3] + b"c" + good[-2:])  # "bbbb" -> "bbbc"
    assert main(["log", str(path), "check"]) == 1
    assert capsys.readouterr() == ("", f"racefree log: error: {path} at byte offset {last}, "
                                       f"line 3: the last record is damaged: it is whole but "
                                       f"fails its checksum\n")
    path.write_bytes(good)
    with AppendLog(path, durable=False) as log:
        log.extend(["c1", "c2"])
        log.append("d")
    data = bytearray(path.read_bytes())
    data[len(good) + 12] = 0  # a page of the batch never reached the disk
    path.write_bytes(bytes(data))
    assert main(["log", str(path), "tail", "--seq"]) == 0
    assert capsys.readouterr() == ('0\t"aaaa"\n1\t"bbbb"\n', "")
    assert main(["log", str(path), "check"]) == 1
    out, err = capsys.readouterr()
    assert (out, err.count("\n")) == ("", 1)
    assert err.startswith(f"racefree log: error: {path} at byte offset {len(good)}, line 4: "
                          f"a damaged record is followed by valid records that were never synced")
    assert path.read_bytes() == bytes(data)


@pytest.mark.timeout(60)
def test_tail_follow_prints_new_records(tmp_path: Path) -> None:
    """tail --follow prints the existing last records, then each new one as it lands."""
    path = tmp_path / "x.log"
    make_log(path, ["old1", "old2"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "racefree", "log", str(path), "tail", "-n", "1", "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == '"old2"\n'  # blocks until printed
        with AppendLog(path) as log:
            log.append("new1")
            log.extend(["new2", "new3"])
        assert [proc.stdout.readline() for _ in range(3)] == ['"new1"\n', '"new2"\n',
                                                              '"new3"\n']
    finally:
        proc.kill()
        proc.wait(30)
