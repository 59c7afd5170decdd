"""The store limits: one contract on both backends (the file store and PostgreSQL).

The longest id, the largest version, the deepest document, the largest document:
each is checked before anything is written and raises ``LimitError`` (a
``ValueError``) with the same message on both; documents whose keys collide in JSON
(``{1: a, "1": b}``) are a ``TypeError``. A document at the depth limit reads back
from any call stack.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from racefree import LimitError, RacefreeError
from racefree.storeapi.checks import MAX_DEPTH, MAX_DOC, MAX_ID, MAX_VERSION

Make = Callable[..., Any]


def nested(depth: int) -> dict[str, Any]:
    """A document whose arrays and objects nest ``depth`` deep (the document counts)."""
    inner: Any = "leaf"
    for _ in range(depth - 1):
        inner = [inner]
    return {"d": inner}


def writes(s: Any, key: str, doc: dict[str, Any]) -> list[Callable[[], Any]]:
    def batch() -> None:
        with s.batch() as b:
            b.put("fine", {"ok": 1})
            b.put(key, doc)

    return [lambda: s.put(key, doc), lambda: s.update(key, lambda d: doc, default={}), batch,
            lambda: s.put_at_versions([(key, 1, doc)])]


def test_longest_id(store_factory: Make) -> None:
    """An id of MAX_ID bytes is stored; one byte more is LimitError for every write, and
    never found by a read."""
    s = store_factory(durable=False)
    at = "é" * (MAX_ID // 2)
    assert len(at.encode()) == MAX_ID
    assert s.put(at, {"n": 1}) == 1
    assert s.get(at) == {"n": 1}
    over = at + "x"
    for call in [*writes(s, over, {"n": 2}), lambda: s.delete(over)]:
        with pytest.raises(LimitError) as info:
            call()
        assert str(info.value) == (
            f"an id of {MAX_ID + 1} bytes is longer than the limit of {MAX_ID} bytes")
        assert (info.value.what, info.value.limit, info.value.actual) == ("id", MAX_ID, MAX_ID + 1)
    assert s.get(over) is None and over not in s and s.version(over) is None
    assert s.keys() == [at]


def test_largest_version(store_factory: Make) -> None:
    """MAX_VERSION (PostgreSQL's bigint) is stored; a write that would pass it, a version
    past it and an expect_version past it are LimitError, and nothing changes."""
    s = store_factory(durable=False)
    s.put_at_versions([("top", MAX_VERSION, {"n": 1})])
    assert s.version("top") == MAX_VERSION and s.get("top") == {"n": 1}
    message = (f"'top' is at version {MAX_VERSION}, the largest a store keeps: it cannot be"
               " written again")
    for call in [*writes(s, "top", {"n": 2})[:3], lambda: s.delete("top")]:
        with pytest.raises(LimitError) as info:
            call()
        assert str(info.value) == message
    with pytest.raises(LimitError) as info:
        s.put_at_versions([("other", MAX_VERSION + 1, {"n": 1})])
    assert str(info.value) == (
        f"version {MAX_VERSION + 1} is larger than the largest version, {MAX_VERSION}")
    with pytest.raises(LimitError) as info:
        s.put("other", {"n": 1}, expect_version=2**64)
    assert str(info.value) == (
        f"expect_version {2**64} is larger than the largest version, {MAX_VERSION}")
    assert s.items_with_versions() == [("top", MAX_VERSION, {"n": 1})]
    assert s.put("other", {"n": 1}) == 1  # the store goes on


def test_deepest_document(store_factory: Make) -> None:
    """MAX_DEPTH levels are stored and read back, also from a call stack that is nearly
    full; one level more (or a thousand) is LimitError, nothing written."""
    s = store_factory(durable=False)
    doc = nested(MAX_DEPTH)
    assert s.put("deep", doc) == 1
    again = store_factory(durable=False)  # a second handle reads it from the disk/server

    def from_deep_stack(depth: int) -> Any:
        if depth > 0:
            return from_deep_stack(depth - 1)
        return again.get("deep"), again.items(), again.update("deep", lambda d: d)

    frames = sys.getrecursionlimit() - 60
    got, items, updated = from_deep_stack(frames)
    assert got == doc and items == [("deep", doc)] and updated == doc
    for depth in (MAX_DEPTH + 1, 1000, 5000):
        for call in writes(s, "too-deep", nested(depth)):
            with pytest.raises(LimitError) as info:
                call()
            assert str(info.value) == (
                f"the document is nested more than {MAX_DEPTH} levels deep (the limit)")
    assert s.keys() == ["deep"]


def test_largest_document(store_factory: Make) -> None:
    """A document whose JSON is one byte over MAX_DOC is LimitError, nothing written."""
    s = store_factory(durable=False)
    doc = {"b": "x" * (MAX_DOC + 1 - len('{"b":""}'))}
    with pytest.raises(LimitError) as info:
        s.put("big", doc)
    assert str(info.value) == (
        f"a document of {MAX_DOC + 1} bytes is larger than the limit of {MAX_DOC} bytes")
    assert isinstance(info.value, ValueError) and isinstance(info.value, RacefreeError)
    assert len(s) == 0


@pytest.mark.parametrize("doc", [{1: "a", "1": "b"}, {"true": 1, True: 2}, {None: 1, "null": 2},
                                 {"x": [{"y": {2.5: 1, "2.5": 2}}]}])
def test_keys_that_collide_in_json_are_a_type_error(store_factory: Make,
                                                    doc: dict[Any, Any]) -> None:
    """json.dumps turns int, float, bool and None keys into strings: two keys of one dict
    that become the same string would not read back as written. TypeError, nothing written."""
    s = store_factory(durable=False)
    for call in writes(s, "k", doc):
        with pytest.raises(TypeError, match="two keys that are both"):
            call()
    assert len(s) == 0
    assert s.put("k", {1: "a", "2": "b", None: 3}) == 1
    assert s.get("k") == {"1": "a", "2": "b", "null": 3}
