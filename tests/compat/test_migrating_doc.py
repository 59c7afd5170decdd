"""The data-moving examples of docs/migrating.md run as written, against the real peers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from racefree import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


def _block(after: str) -> str:
    """The first ```python block after the heading ``after``."""
    text = DOC.read_text()
    start = text.index(f"## {after}\n")
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None
    return match.group(1)


def test_tinydb_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tinydb = pytest.importorskip("tinydb")
    monkeypatch.chdir(tmp_path)
    with tinydb.TinyDB("db.json") as db:
        db.insert({"name": "a"})
        db.insert({"name": "b"})
        db.table("users").insert({"user": "u"})
    exec(compile(_block("TinyDB"), "migrating.md", "exec"), {})
    with Store("db") as store:
        assert store.items() == [
            ("_default/1", {"name": "a"}), ("_default/2", {"name": "b"}),
            ("users/1", {"user": "u"}),
        ]


def test_sqlitedict_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlitedict = pytest.importorskip("sqlitedict")
    monkeypatch.chdir(tmp_path)
    with sqlitedict.SqliteDict("db.sqlite") as old:
        for i in range(2500):
            old[f"k{i:04d}"] = {"i": i} if i % 2 else i
        old.commit()
    exec(compile(_block("sqlitedict"), "migrating.md", "exec"), {})
    with Store("db") as store:
        assert len(store) == 2500
        assert store.get("k0001") == {"i": 1}
        assert store.get("k2498") == {"value": 2498}
