"""The README's example runs as written and does what its comments say."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first Python block of the README runs in an empty directory and leaves exactly the
    state its comments describe."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block[1], "README.md", "exec"), namespace)

    import racefree

    assert racefree.JsonFile("settings.json").read() == {"runs": 1}
    with racefree.Store("conversations") as store:
        assert sorted(store.keys()) == ["conv-2"]
        assert store["conv-2"] == {"title": "second"}
        assert store.version("conv-1") is None
    assert sorted(os.listdir(tmp_path)) == [
        "conversations", "jobs.lock", "settings.json", "settings.json.lock",
    ]
