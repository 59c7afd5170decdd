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
    none = tmp_path / "none"
    for argv in (["ls"], ["get", "k"], ["rm", "k"], ["check"]):
        assert _run(capsys, str(none), *argv) == (
            1, "", f"racefree store: error: no store at {str(none)!r} (no MANIFEST there; "
                   f"'racefree store DIR put ID JSON' creates one)\n")
    assert not none.exists()


def test_put_with_a_missing_parent_or_onto_a_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """put creates a store directory, not its parents: a missing parent is named in one line
    (not a bare errno); a path that is a file is refused; nothing is created."""
    deep = tmp_path / "a" / "b" / "c"
    assert _run(capsys, str(deep), "put", "k", "{}") == (
        1, "", f"racefree store: error: cannot create a store at {str(deep)!r}: its parent "
               f"directory {str(tmp_path / 'a' / 'b')!r} does not exist\n")
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_bytes(b"")
    assert _run(capsys, str(tmp_path / "f"), "put", "k", "{}") == (
        1, "", f"racefree store: error: {str(tmp_path / 'f')!r} is a file, not a store "
               f"directory\n")
    assert (tmp_path / "f").read_bytes() == b""


def test_non_ascii_ids_print_as_they_are(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Ids are JSON strings with non-ASCII letters kept, control characters escaped."""
    d = str(tmp_path / "s")
    assert _run(capsys, d, "put", "café/ü", '{"é": 1}') == (0, '"café/ü" is now version 1\n', "")
    with Store(d) as s:
        s.put("日本\t語", {})
    assert _run(capsys, d, "ls") == (0, '"café/ü"\tv1\t13 bytes\n"日本\\t語"\tv1\t2 bytes\n', "")
    assert _run(capsys, d, "rm", "café/ü") == (0, '"café/ü" deleted\n', "")


def test_expect_is_compare_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """put/rm --expect VERSION write only at that version (0: must not exist); the option may
    come before or after the other words, as --expect N or --expect=N; a conflict is one
    line, exit 1, nothing written; -- ends the options."""
    d = str(tmp_path / "s")
    assert _run(capsys, d, "put", "k", '{"v": 1}', "--expect", "0") == (
        0, '"k" is now version 1\n', "")
    assert _run(capsys, d, "put", "k", '{"v": 2}', "--expect", "0") == (
        1, "", 'racefree store: error: "k" already exists at version 1 (--expect 0): '
               'nothing was written\n')
    assert _run(capsys, d, "--expect", "1", "put", "k", '{"v": 2}') == (
        0, '"k" is now version 2\n', "")
    assert _run(capsys, d, "put", "k", '{"v": 3}', "--expect=1") == (
        1, "", 'racefree store: error: "k" is at version 2, not 1 (--expect 1): '
               'nothing was written\n')
    assert _run(capsys, d, "rm", "k", "--expect", "5") == (
        1, "", 'racefree store: error: "k" is at version 2, not 5 (--expect 5): '
               'nothing was written\n')
    assert _run(capsys, d, "rm", "gone", "--expect", "1") == (
        1, "", 'racefree store: error: "gone" does not exist (--expect 1): '
               'nothing was written\n')
    with Store(d) as s:
        assert (s.get("k"), s.version("k"), "gone" in s) == ({"v": 2}, 2, False)
    assert _run(capsys, d, "rm", "--expect", "2", "k") == (0, '"k" deleted\n', "")
    assert _run(capsys, d, "put", "--", "--expect", "{}") == (
        0, '"--expect" is now version 1\n', "")
    with Store(d) as s:
        assert s.items() == [("--expect", {})]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "k", "{}", "--expect"], "--expect needs a VERSION"),
        (["put", "k", "{}", "--expect", "-1"], "--expect takes a version number"),
        (["put", "k", "{}", "--expect", "1", "--expect=1"], "--expect is given twice"),
        (["get", "k", "--expect", "1"], "--expect is for put and rm, not 'get'"),
    ],
)
def test_bad_expect_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                argv: list[str], message: str) -> None:
    """A malformed or misplaced --expect: one line, exit 1, no store created."""
    code, out, err = _run(capsys, str(tmp_path / "s"), *argv)
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert err.startswith("racefree store: error: " + message)
    assert not (tmp_path / "s").exists()


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
