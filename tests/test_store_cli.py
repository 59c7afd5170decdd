"""``racefree store DIR ls | get ID | put ID JSON | rm ID | compact | check``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from racefree import Store
from racefree.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["store", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_put_get_ls_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI writes and reads the same store the library does; ids print as JSON strings."""
    d = str(tmp_path / "s")
    assert _run(capsys, d, "put", "../x", '{"a": [1, 2]}') == (0, '"../x" is now version 1\n', "")
    assert _run(capsys, d, "put", "../x", '{"a": 3}')[1] == '"../x" is now version 2\n'
    with Store(d) as s:
        s.put("line\nbreak", {"é": 1})
    code, out, _ = _run(capsys, d, "get", "../x")
    assert (code, json.loads(out)) == (0, {"a": 3})
    code, out, _ = _run(capsys, d, "ls")
    assert code == 0
    assert out == '"../x"\tv2\t8 bytes\n"line\\nbreak"\tv1\t13 bytes\n'
    assert _run(capsys, d, "rm", "../x") == (0, '"../x" deleted\n', "")
    with Store(d) as s:
        assert s.keys() == ["line\nbreak"]


def test_check_and_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check prints the report; compact keeps every document."""
    d = str(tmp_path / "s")
    with Store(d, durable=False) as s:
        for i in range(3):
            s.put(str(i), {"i": i})
        s.put("0", {"i": 10})
    code, out, _ = _run(capsys, d, "compact")
    assert (code, out) == (0, "compacted\n")
    code, out, _ = _run(capsys, d, "check")
    assert code == 0
    assert out.startswith("ok: documents=3 tombstones=0 segments=1 records=3 ")
    assert out.endswith(" dead_bytes=0\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "nope"], "no document with id 'nope'"),
        (["rm", "nope"], "no document with id 'nope'"),
        (["put", "x", "{bad"], "the document is not JSON"),
        (["put", "x", "[1]"], "a document must be a dict"),
        (["frob"], "unknown action 'frob'"),
        (["get"], "'get' takes 1 argument(s), got 0"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Every error is one line on stderr and exit code 1; nothing is written."""
    d = str(tmp_path / "s")
    with Store(d) as s:
        s.put("a", {})
    code, out, err = _run(capsys, d, *argv)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    with Store(d) as s:
        assert s.items() == [("a", {})]


def test_missing_store_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reading commands on a path without a store fail and create nothing."""
    code, _, err = _run(capsys, str(tmp_path / "none"), "ls")
    assert code == 1
    assert "no store at" in err
    assert not (tmp_path / "none").exists()


def test_corrupt_store_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged record makes check exit 1 with the file and offset in one line."""
    d = tmp_path / "s"
    with Store(d, durable=False) as s:
        for i in range(3):
            s.put(str(i), {"i": i, "t": "abcdef"})
    seg = d / "seg-00000001.rfs"
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    code, _, err = _run(capsys, str(d), "check")
    assert code == 1
    assert str(seg) in err
    assert "byte offset 16" in err


def test_ids_starting_with_a_dash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An id that looks like an option is still an id."""
    d = str(tmp_path / "s")
    assert _run(capsys, d, "put", "--force", "{}")[0] == 0
    assert _run(capsys, d, "get", "--force") == (0, "{}\n", "")


def test_copy_dispatches_to_store_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``racefree store copy SRC DST`` (options included) runs the copy command."""
    with Store(tmp_path / "a", durable=False) as s:
        s.put("k", {"v": 1})
        s.put("k", {"v": 2})
    code, out, _ = _run(capsys, "copy", "--quiet", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 0
    assert "verified" in out
    with Store(tmp_path / "b", durable=False) as s:
        assert (s.get("k"), s.version("k")) == ({"v": 2}, 2)
