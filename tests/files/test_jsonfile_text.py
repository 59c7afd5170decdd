"""Case 19 (docs/security.md): every way a JSON document fails to read or write is a typed error.

Reading: valid JSON that Python will not turn into values (an integer longer than
``sys.get_int_max_str_digits()``) raised a bare ``ValueError`` and aborted
``racefree check``. Writing: a document nested 100,000 deep raised ``RecursionError``,
a lone surrogate ``UnicodeEncodeError`` (also on ``update`` of a file that holds one
as a valid ``\\ud800`` escape). Now: ``CorruptFileError`` with the offset,
``LimitError`` before anything is written, and lone surrogates written escaped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from racefree import CorruptFileError, JsonFile, LimitError
from racefree.check.checker import check_path


def _nested(depth: int) -> Any:
    doc: Any = {}
    cur = doc
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return doc


def test_an_integer_too_long_to_convert_is_corrupt_file_error(tmp_path: Path) -> None:
    """A valid JSON file with a 5000-digit integer: CorruptFileError naming the file and
    the offset of the digits (before: a bare ValueError)."""
    path = tmp_path / "big.json"
    path.write_bytes(b'{"n": ' + b"7" * 5000 + b"}")
    with pytest.raises(CorruptFileError) as info:
        JsonFile(path).read()
    assert info.value.path == str(path) and info.value.offset == 6
    assert "4300" in info.value.detail
    with pytest.raises(CorruptFileError):
        JsonFile(path).update(lambda d: d)
    assert path.read_bytes() == b'{"n": ' + b"7" * 5000 + b"}"


def test_check_reports_it_and_goes_on(tmp_path: Path) -> None:
    """``racefree check DIR`` reports that file as damaged and checks the others (before:
    the whole run aborted on the ValueError)."""
    (tmp_path / "big.json").write_bytes(b"[" + b"1" * 4301 + b"]")
    (tmp_path / "ok.json").write_bytes(b'{"a": 1}')
    found = {Path(f.path).name: (f.kind, f.ok) for f in check_path(tmp_path)}
    assert found == {"big.json": ("json", False), "ok.json": ("json", True)}


def test_a_document_nested_too_deeply_is_limit_error_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """write, update and the default of a document nested 100,000 deep: LimitError
    ("depth") before anything is written (before: RecursionError)."""
    path = tmp_path / "j.json"
    deep = _nested(100_000)
    with pytest.raises(LimitError) as info:
        JsonFile(path).write(deep)
    assert (info.value.what, info.value.actual) == ("depth", 100_000)
    assert not path.exists()
    JsonFile(path).write({"keep": 1})
    with pytest.raises(LimitError):
        JsonFile(path).update(lambda d: deep)
    with pytest.raises(LimitError):
        JsonFile(tmp_path / "other.json", default=deep)
    assert json.loads(path.read_bytes()) == {"keep": 1}
    assert sorted(os.listdir(tmp_path)) == ["j.json", "j.json.lock"]


def test_a_deep_document_written_from_a_deep_stack_is_encoded_on_a_fresh_one(
    tmp_path: Path,
) -> None:
    """600 levels, written and read from a call stack already 600 frames deep (where
    json.dumps alone runs out of stack): it is written, and reads back equal."""
    path = tmp_path / "j.json"
    doc = _nested(600)

    def deep_call(n: int) -> Any:
        if n:
            return deep_call(n - 1)
        JsonFile(path, indent=None).write(doc)
        return JsonFile(path).read()

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 1000))
    try:
        assert deep_call(600) == doc
    finally:
        sys.setrecursionlimit(limit)


def test_a_lone_surrogate_is_written_escaped_and_reads_back_equal(tmp_path: Path) -> None:
    """{"\\udc80": 1} is written as JSON's \\u escape (UTF-8 has no encoding for it) and
    reads back equal (before: UnicodeEncodeError); a file holding a valid "\\ud800" escape
    can be updated (before: the update raised)."""
    path = tmp_path / "s.json"
    JsonFile(path, indent=None).write({"\udc80": 1, "é": "ok"})
    assert path.read_bytes() == b'{"\\udc80": 1, "\\u00e9": "ok"}\n'
    assert JsonFile(path).read() == {"\udc80": 1, "é": "ok"}
    other = tmp_path / "t.json"
    other.write_bytes(b'{"k": "\\ud800"}')
    assert JsonFile(other).update(lambda d: {**d, "n": 1}) == {"k": "\ud800", "n": 1}
    assert JsonFile(other).read() == {"k": "\ud800", "n": 1}
    JsonFile(path, indent=None).write({"plain": "é"})  # no surrogate: UTF-8 as before
    assert path.read_bytes() == '{"plain": "é"}\n'.encode()
