"""Case 18 (docs/security.md): a log whose header line is damaged: reported, and rebuilt.

A flipped bit in the header line (``39 8afa8dbf {"racefree_log":1,...}``) used to make
``racefree check`` skip the file as "not a racefree file" and exit 0, while
``AppendLog`` refused it (FormatError) and none of its records could be read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from racefree import AppendLog, FormatError
from racefree.check.checker import check_path


def _log(path: Path, *, compact: bool) -> bytes:
    with AppendLog(path) as log:
        for i in range(5):
            log.append({"i": i})
        if compact:
            log.compact(lambda n, r: n + 1, 0)
            log.append({"i": 5})
    return path.read_bytes()


def _flip(path: Path, at: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_every_one_bit_damage_of_the_header_is_reported_as_a_damaged_log(
    tmp_path: Path,
) -> None:
    """Every byte of the header line, one bit flipped (the lowest and the highest): the file
    is a log (kind "log"), not whole (ok False), and AppendLog refuses it; in a directory
    too, never "skipped"."""
    good = tmp_path / "good.log"
    data = _log(good, compact=False)
    line_end = data.index(b"\n") + 1
    path = tmp_path / "a.log"
    for at in range(line_end):
        for bit in (0, 6):
            path.write_bytes(data)
            _flip(path, at, bit)
            [found] = check_path(path)
            assert (found.kind, found.ok) == ("log", False), (at, bit, found)
            with pytest.raises(FormatError), AppendLog(path) as log:
                list(log)
    path.write_bytes(data)
    _flip(path, data.index(b"racefree_log") + 9)  # "racefree_lmg": the tag itself
    found_all = {f.path: f for f in check_path(tmp_path)}
    assert (found_all[str(path)].kind, found_all[str(path)].ok) == ("log", False)
    assert (found_all[str(good)].kind, found_all[str(good)].ok) == ("log", True)


def test_a_destroyed_header_line_is_still_a_log_by_the_frames_after_it(tmp_path: Path) -> None:
    """The whole header line overwritten with other bytes: the valid frames after it (and
    nothing else) make it a damaged log."""
    path = tmp_path / "a.log"
    data = _log(path, compact=False)
    line_end = data.index(b"\n")
    path.write_bytes(b"x" * line_end + data[line_end:])
    [found] = check_path(path)
    assert (found.kind, found.ok) == ("log", False)
    plain = tmp_path / "notes.txt"
    plain.write_bytes(b"x" * line_end + b"\nnot a frame\n")
    [found] = check_path(plain)
    assert found.kind == "skipped"


@pytest.mark.parametrize("compact", [False, True])
def test_repair_rebuilds_a_damaged_header_and_keeps_every_record(
    tmp_path: Path, compact: bool
) -> None:
    """check --repair rebuilds the header (never compacted: generation 0, first record 0;
    compacted: from the snapshot), byte for byte the original, keeps every record, copies
    the damaged file aside, and says how the header was rebuilt."""
    path = tmp_path / "a.log"
    data = _log(path, compact=compact)
    _flip(path, data.index(b"racefree_log") + 3)
    damaged = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "racefree", "check", "--repair", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    records = 1 if compact else 5
    first = 5 if compact else 0
    assert lines[0].startswith(f"repaired log     {path}: salvaged: kept {records} records "
                               f"(sequence {first}..{5 if compact else 4})")
    line_end = data.index(b"\n") + 1
    source = ("from its snapshot" if compact else
              "no snapshot: the log was never compacted, so it starts at record 0")
    assert [line.strip() for line in lines[1:-1]] == [
        f"rebuilt the damaged header (line 1, bytes 0-{line_end}): generation "
        f"{1 if compact else 0}, first record {first} ({source})",
    ]
    assert path.read_bytes() == data
    [saved] = [p for p in tmp_path.iterdir() if p.name.startswith("damaged-")]
    assert (saved / "a.log").read_bytes() == damaged
    with AppendLog(path) as log:
        assert list(log) == [{"i": i} for i in range(first, 6 if compact else 5)]
        assert log.append({"i": 99}) == (6 if compact else 5)


@pytest.mark.parametrize("base", [2**63, 10**50])
def test_a_header_with_a_valid_checksum_and_an_impossible_base_is_damage(
        tmp_path: Path, base: int) -> None:
    """A header whose checksum is valid but whose first record number no log can reach (2**63
    or more: ``len()`` could not even say it): FormatError from every call, ``len()`` too
    (before: OverflowError), and check reports the log damaged."""
    from racefree.log import frame

    path = tmp_path / "x.log"
    path.write_bytes(frame.encode(b'{"racefree_log":1,"segment":0,"base":%d}' % base)
                     + frame.encode(b"1"))
    with AppendLog(path) as log:
        for call in (log.check, lambda: len(log), lambda: list(log)):
            with pytest.raises(FormatError, match="not a valid log header"):
                call()
    [found] = check_path(path)
    assert not found.ok and found.kind == "log"
