"""The Store contract: the API semantics every backend follows (file and PostgreSQL).

Only the public API is used here; ``store_factory`` (tests/conftest.py) opens the
same store again on each call, once per backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from racefree import ConflictError

Make = Callable[..., Any]

ODD_IDS = ["", "../x", "/etc/passwd", "a\0b", "emoji \U0001f600", "new\nline", "\ud800", "é" * 50]


def test_put_get_versions(store_factory: Make) -> None:
    """Versions start at 1 and grow by one per put; get returns the last document."""
    s = store_factory(durable=False)
    assert s.version("a") is None
    assert s.put("a", {"n": 1}) == 1
    assert s.put("a", {"n": 2}) == 2
    assert s.get("a") == {"n": 2}
    assert s.version("a") == 2
    assert s["a"] == {"n": 2}
    assert s.get("missing") is None
    assert s.get("missing", {"d": 0}) == {"d": 0}
    with pytest.raises(KeyError):
        s["missing"]


def test_get_returns_a_new_object(store_factory: Make) -> None:
    """Changing what get returned changes nothing stored."""
    s = store_factory(durable=False)
    s.put("a", {"list": [1, 2], "inner": {"k": "v"}})
    doc = s.get("a")
    doc["list"].append(3)
    doc["inner"]["k"] = "changed"
    assert s.get("a") == {"list": [1, 2], "inner": {"k": "v"}}
    assert s.get("a") is not s.get("a")


def test_expect_version(store_factory: Make) -> None:
    """A wrong expect_version raises ConflictError naming both versions and writes nothing."""
    s = store_factory(durable=False)
    assert s.put("a", {"v": 1}, expect_version=0) == 1
    with pytest.raises(ConflictError) as info:
        s.put("a", {"v": "x"}, expect_version=0)
    assert (info.value.key, info.value.expected, info.value.actual) == ("a", 0, 1)
    with pytest.raises(ConflictError) as info:
        s.put("a", {"v": "x"}, expect_version=5)
    assert (info.value.expected, info.value.actual) == (5, 1)
    assert s.put("a", {"v": 2}, expect_version=1) == 2
    with pytest.raises(ConflictError) as info:
        s.put("b", {"v": 1}, expect_version=1)
    assert (info.value.key, info.value.expected, info.value.actual) == ("b", 1, None)
    assert s.get("a") == {"v": 2}
    assert "b" not in s


def test_delete(store_factory: Make) -> None:
    """delete returns whether the id existed; expect_version guards it."""
    s = store_factory(durable=False)
    assert s.delete("a") is False
    s.put("a", {})
    with pytest.raises(ConflictError):
        s.delete("a", expect_version=2)
    assert "a" in s
    assert s.delete("a", expect_version=1) is True
    assert "a" not in s
    assert s.version("a") is None
    assert s.delete("a") is False
    with pytest.raises(ConflictError) as info:
        s.delete("a", expect_version=1)
    assert info.value.actual is None
    assert s.delete("a", expect_version=0) is False  # "must not exist": nothing to do
    s.put("b", {})
    del s["b"]
    with pytest.raises(KeyError):
        del s["b"]


def test_versions_keep_growing_across_delete(store_factory: Make) -> None:
    """A re-created id continues its versions: an old expect_version never matches it."""
    s = store_factory(durable=False)
    s.put("a", {"gen": 1})
    s.put("a", {"gen": 1})
    s.delete("a")  # the delete is version 3
    with pytest.raises(ConflictError):
        s.put("a", {"gen": 2}, expect_version=2)
    assert s.put("a", {"gen": 2}, expect_version=0) == 4
    assert s.version("a") == 4


def test_update(store_factory: Make) -> None:
    """update applies fn to a copy, stores the result, returns it; KeyError without default."""
    s = store_factory(durable=False)
    with pytest.raises(KeyError):
        s.update("c", lambda d: d)
    assert "c" not in s
    default = {"n": 0}
    assert s.update("c", lambda d: {"n": d["n"] + 1}, default=default) == {"n": 1}
    assert default == {"n": 0}
    seen: list[dict[str, Any]] = []

    def bump(d: dict[str, Any]) -> dict[str, Any]:
        seen.append(d)
        d["n"] += 1
        return d

    assert s.update("c", bump) == {"n": 2}
    seen[0]["n"] = 99  # fn's argument was a copy
    assert s.get("c") == {"n": 2}
    assert s.version("c") == 2


def test_update_fn_error_writes_nothing(store_factory: Make) -> None:
    """An exception from fn propagates and writes nothing; a non-dict result is a TypeError."""
    s = store_factory(durable=False)
    s.put("c", {"n": 1})

    def boom(d: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        s.update("c", boom)
    with pytest.raises(TypeError):
        s.update("c", lambda d: None)  # type: ignore[arg-type,return-value]
    assert s.get("c") == {"n": 1}
    assert s.version("c") == 1


def test_batch_all_or_nothing(store_factory: Make) -> None:
    """A batch writes everything at its end; one failed expect_version writes nothing."""
    s = store_factory(durable=False)
    s.put("keep", {"v": 1})
    with s.batch() as b:
        b.put("x", {"x": 1})
        b.put("y", {"y": 1})
        b.delete("keep")
        b.put("x", {"x": 2})
        b.delete("never")
    assert b.versions == {"x": 2, "y": 1, "keep": 2, "never": None}
    assert s.get("x") == {"x": 2}
    assert s.version("x") == 2
    assert "keep" not in s
    with pytest.raises(ConflictError), s.batch() as b2:
        b2.put("z", {"z": 1})
        b2.put("y", {"y": 2}, expect_version=7)
    assert "z" not in s
    assert s.get("y") == {"y": 1}


def test_batch_sees_its_own_earlier_writes(store_factory: Make) -> None:
    """expect_version inside a batch is checked against the batch's earlier operations."""
    s = store_factory(durable=False)
    with s.batch() as b:
        b.put("a", {"n": 1}, expect_version=0)
        b.put("a", {"n": 2}, expect_version=1)
    assert s.version("a") == 2
    assert s.get("a") == {"n": 2}


def test_batch_block_error_writes_nothing(store_factory: Make) -> None:
    """An exception inside the with block discards the batch."""
    s = store_factory(durable=False)
    with pytest.raises(ZeroDivisionError), s.batch() as b:
        b.put("a", {})
        1 / 0  # noqa: B018
    assert "a" not in s
    assert len(s) == 0


def test_ids_are_data(store_factory: Make) -> None:
    """Any str is an id: path syntax, NUL, emoji, lone surrogates, the empty string."""
    s = store_factory(durable=False)
    for i, key in enumerate(ODD_IDS):
        assert s.put(key, {"i": i}) == 1
    assert sorted(s.keys()) == sorted(ODD_IDS)
    for i, key in enumerate(ODD_IDS):
        assert s.get(key) == {"i": i}
    s2 = store_factory(durable=False)
    assert {k: s2.get(k) for k in ODD_IDS} == {k: {"i": i} for i, k in enumerate(ODD_IDS)}


@pytest.mark.parametrize("bad", [1, b"a", None, ("a",)])
def test_non_str_id_is_type_error(store_factory: Make, bad: Any) -> None:
    """A non-str id raises TypeError for reads and writes alike."""
    s = store_factory(durable=False)
    for call in (
        lambda: s.put(bad, {}),
        lambda: s.get(bad),
        lambda: s.delete(bad),
        lambda: s.version(bad),
        lambda: s.update(bad, lambda d: d, default={}),
    ):
        with pytest.raises(TypeError):
            call()
    assert (bad in s) is False
    assert len(s) == 0


@pytest.mark.parametrize(
    "doc",
    [[1, 2], "text", 3, None, {"f": math.nan}, {"f": math.inf}, {"s": {1, 2}}, {"o": object()}],
)
def test_bad_document_is_type_error(store_factory: Make, doc: Any) -> None:
    """A non-dict or non-JSON document raises TypeError before anything is written."""
    s = store_factory(durable=False)
    with pytest.raises(TypeError):
        s.put("a", doc)
    with pytest.raises(TypeError), s.batch() as b:
        b.put("b", {"fine": 1})
        b.put("a", doc)
    assert len(s) == 0
    assert s.version("a") is None


def test_mapping_views(store_factory: Make) -> None:
    """len, keys, items and values reflect exactly the live documents, sorted by id."""
    s = store_factory(durable=False)
    for key in ["b", "a", "c"]:
        s.put(key, {"k": key})
    s.delete("c")
    assert len(s) == 2
    assert s.keys() == ["a", "b"]
    assert list(s) == ["a", "b"]
    assert s.items() == [("a", {"k": "a"}), ("b", {"k": "b"})]
    assert s.values() == [{"k": "a"}, {"k": "b"}]


def test_close_and_reopen(store_factory: Make) -> None:
    """What was written is there after a reopen; a closed store raises ValueError."""
    s = store_factory(durable=True)
    s.put("a", {"n": 1})
    s.put("b", {"n": 2})
    s.delete("b")
    s.close()
    s.close()
    with pytest.raises(ValueError):
        s.get("a")
    with pytest.raises(ValueError):
        s.put("a", {})
    with store_factory(durable=True) as again:
        assert again.items() == [("a", {"n": 1})]
        assert again.version("a") == 1


def test_two_handles_see_each_other(store_factory: Make) -> None:
    """A write through one handle is visible through another as soon as it returns."""
    one = store_factory(durable=False)
    two = store_factory(durable=False)
    one.put("a", {"n": 1})
    assert two.get("a") == {"n": 1}
    two.update("a", lambda d: {"n": d["n"] + 1})
    assert one.get("a") == {"n": 2}
    one.delete("a")
    assert "a" not in two


def test_compact_keeps_everything(store_factory: Make) -> None:
    """compact changes no document, version or deletion."""
    s = store_factory(durable=False)
    for i in range(20):
        s.put(f"k{i}", {"i": i})
        s.put(f"k{i}", {"i": i, "again": True})
    for i in range(0, 20, 3):
        s.delete(f"k{i}")
    before = {k: (s.version(k), d) for k, d in s.items()}
    s.compact()
    assert {k: (s.version(k), d) for k, d in s.items()} == before
    assert s.put("k0", {"back": 1}) == 4
    assert s.check().documents == len(before) + 1


def test_check_report(store_factory: Make) -> None:
    """check() on a healthy store returns a report with the number of live documents."""
    s = store_factory(durable=False)
    for i in range(5):
        s.put(str(i), {"i": i})
    s.delete("0")
    assert s.check().documents == 4


def test_fence_none_accepted(store_factory: Make) -> None:
    """fence=None is accepted by every write call of every backend."""
    s = store_factory(durable=False)
    assert s.put("a", {}, fence=None) == 1
    assert s.update("a", lambda d: {"u": 1}, fence=None) == {"u": 1}
    assert s.delete("a", fence=None) is True


def test_document_containing_itself_is_type_error(store_factory: Make) -> None:
    """A document that contains itself is not JSON: TypeError, nothing written."""
    s = store_factory(durable=False)
    doc: dict[str, Any] = {"a": 1}
    doc["self"] = doc
    with pytest.raises(TypeError):
        s.put("a", doc)
    assert "a" not in s


def test_stored_json_round_trips_exactly(store_factory: Make) -> None:
    """What get returns equals what was put: unicode, lone surrogates, big ints, floats."""
    s = store_factory(durable=False)
    doc = {"é": "\ud800x\U0001f600", "big": 2**70, "f": 0.1, "neg": -1.5e-300, "n": None,
           "nested": [{"k": [True, False]}], "": "empty key"}
    s.put("a", doc)
    assert s.get("a") == doc
    s2 = store_factory(durable=False)
    assert s2.get("a") == doc
