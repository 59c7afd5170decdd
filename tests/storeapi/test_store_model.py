"""A stateful property test of the Store against a dict model, on every backend.

Steps: put (with and without expect_version), delete, update, batch, compact,
close + reopen, and a second handle's read. After every step the store and the
model agree on every id's document and version, and two gets of each id return
the model's document even when the first result was changed in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from racefree import ConflictError

IDS = st.sampled_from(["a", "b", "", "../x", "\0", "é"])
DOCS = st.dictionaries(
    st.text(max_size=3),
    st.one_of(
        st.integers(-5, 5), st.text(max_size=5), st.none(), st.lists(st.booleans(), max_size=2)
    ),
    max_size=3,
)
VERSIONS = st.one_of(st.none(), st.integers(0, 4))


def _machine(make: Callable[..., Any]) -> type[RuleBasedStateMachine]:
    class StoreModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store = make(durable=False)
            self.docs: dict[str, dict[str, Any]] = {}
            self.versions: dict[str, int] = {}  # every id ever written -> last version

        def _current(self, key: str) -> int:
            return self.versions[key] if key in self.docs else 0

        @rule(key=IDS, doc=DOCS, expect=VERSIONS)
        def put(self, key: str, doc: dict[str, Any], expect: int | None) -> None:
            if expect is not None and expect != self._current(key):
                with pytest.raises(ConflictError):
                    self.store.put(key, doc, expect_version=expect)
                return
            version = self.store.put(key, doc, expect_version=expect)
            self.versions[key] = self.versions.get(key, 0) + 1
            assert version == self.versions[key]
            self.docs[key] = doc

        @rule(key=IDS, expect=VERSIONS)
        def delete(self, key: str, expect: int | None) -> None:
            if expect is not None and expect != self._current(key):
                with pytest.raises(ConflictError):
                    self.store.delete(key, expect_version=expect)
                return
            existed = self.store.delete(key, expect_version=expect)
            assert existed == (key in self.docs)
            if existed:
                del self.docs[key]
                self.versions[key] += 1

        @rule(key=IDS, n=st.integers(0, 3))
        def update(self, key: str, n: int) -> None:
            new = self.store.update(key, lambda d: {**d, "n": n}, default={"fresh": True})
            expected = {**self.docs.get(key, {"fresh": True}), "n": n}
            assert new == expected
            self.docs[key] = expected
            self.versions[key] = self.versions.get(key, 0) + 1

        @rule(ops=st.lists(st.tuples(st.booleans(), IDS, DOCS, VERSIONS), max_size=4))
        def batch(self, ops: list[tuple[bool, str, dict[str, Any], int | None]]) -> None:
            docs, versions = dict(self.docs), dict(self.versions)
            conflict = False
            for is_put, key, doc, expect in ops:
                current = versions[key] if key in docs else 0
                if expect is not None and expect != current:
                    conflict = True
                    break
                if is_put:
                    docs[key] = doc
                    versions[key] = versions.get(key, 0) + 1
                elif key in docs:
                    del docs[key]
                    versions[key] += 1
            if conflict:
                with pytest.raises(ConflictError), self.store.batch() as b:
                    self._fill(b, ops)
                return
            with self.store.batch() as b:
                self._fill(b, ops)
            self.docs, self.versions = docs, versions

        @staticmethod
        def _fill(b: Any, ops: list[tuple[bool, str, dict[str, Any], int | None]]) -> None:
            for is_put, key, doc, expect in ops:
                if is_put:
                    b.put(key, doc, expect_version=expect)
                else:
                    b.delete(key, expect_version=expect)

        @rule()
        def compact(self) -> None:
            self.store.compact()

        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = make(durable=False)

        @precondition(lambda self: bool(self.docs))
        @rule()
        def other_handle(self) -> None:
            other = make(durable=False)
            try:
                assert dict(other.items()) == self.docs
            finally:
                other.close()

        @invariant()
        def agrees(self) -> None:
            assert dict(self.store.items()) == self.docs
            for key in ["a", "b", "", "../x", "\0", "é"]:
                expected = self.versions[key] if key in self.docs else None
                assert self.store.version(key) == expected
                # A get (a cache hit, the second time) is the model's document, and
                # changing what it returned changes no later get.
                got = self.store.get(key)
                assert got == self.docs.get(key)
                if got is not None:
                    got["changed"] = [got.pop(next(iter(got)), None)] if got else [1]
                    for value in got.values():
                        if isinstance(value, list):
                            value.append("changed")
                assert self.store.get(key) == self.docs.get(key)

        def teardown(self) -> None:
            if self.store is not None:
                self.store.check()
                # Start the next example from an empty store.
                for key in list(self.store.keys()):
                    self.store.delete(key)
                self.store.close()

    return StoreModel


def test_store_matches_dict_model(store_factory: Callable[..., Any]) -> None:
    """Random sequences of every operation keep the store equal to a dict model."""
    # Each example starts from an empty store; tombstones of earlier examples make
    # versions continue, so the model starts from the store's current versions.
    base = _machine(store_factory)

    class Fresh(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__()
            self.store.compact()
            probe = self.store
            for key in ["a", "b", "", "../x", "\0", "é"]:
                # A deleted id's next version is its tombstone's + 1: learn it by a put.
                version = probe.put(key, {})
                probe.delete(key)
                self.versions[key] = version + 1

    Fresh.TestCase.settings = settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    Fresh.TestCase().runTest()
