"""racefree.testing.crash_states on user code built on racefree, and the tear model's bounds."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from racefree import Store, atomic_write
from racefree.testing import ModelError, Recorder, crash_states, enumerate_states
from racefree.testing.states import _quotas
from racefree.testing.tears import ALL_SUBSETS_PAGES, describe, write_variants

MESSAGES = [f"message {i}: " + "m" * 40 for i in range(6)]


def add_message(directory: Path, text: str, *, durable: bool = True) -> None:
    """User code: append a message to a conversation kept in a racefree Store."""
    with Store(directory / "conversations", durable=durable) as store:
        store.update("conv-1", lambda c: {**c, "messages": [*c["messages"], text]},
                     default={"messages": []})


def save_conversation(directory: Path) -> None:
    for text in MESSAGES:
        add_message(directory, text)


def check_conversation(directory: Path, acknowledged: bool) -> None:
    with Store(directory / "conversations") as store:
        messages = store.get("conv-1", {"messages": []})["messages"]
    assert messages == MESSAGES[: len(messages)], messages
    if acknowledged:
        assert messages == MESSAGES, f"acknowledged, yet only {messages}"


def test_a_store_user_has_no_violation(tmp_path: Path) -> None:
    report = crash_states(save_conversation, check_conversation,
                          setup=lambda d: Store(d / "conversations").close(), block_size=512)
    print(report.summary())
    assert report.violations == [] and report.workdir is None
    assert report.states >= 10 and report.calls >= 18
    report.raise_on_violation()


def save_but_not_durably(directory: Path) -> None:
    for text in MESSAGES:
        add_message(directory, text, durable=False)


def test_a_caller_treating_a_non_durable_return_as_durable_is_caught(tmp_path: Path) -> None:
    """durable=False survives a process crash, not a power loss: the caller's check that an
    acknowledged save is there fails in the states where the un-synced records were lost."""
    report = crash_states(save_but_not_durably, check_conversation,
                          setup=lambda d: Store(d / "conversations").close(),
                          directory=tmp_path / "work", block_size=512)
    print(report.format(limit=1))
    assert report.violations
    for v in report.violations:
        assert v.acknowledged == ("returned",)
        assert v.message.startswith("AssertionError: acknowledged, yet only")
        assert v.directory is not None and Path(v.directory, "conversations").is_dir()
        assert v.calls and v.after_call == v.calls[-1]
    with pytest.raises(AssertionError, match="power lost after") as info:
        report.raise_on_violation()
    assert "state kept in: " + str(report.violations[0].directory) in str(info.value)


def test_setup_is_durable_and_limit_bounds_the_states(tmp_path: Path) -> None:
    """What setup leaves is in every state; ``limit`` caps the states checked."""
    seen: list[bytes] = []

    def setup(d: Path) -> None:
        (d / "before").write_bytes(b"setup")

    def op(d: Path) -> None:
        for i in range(5):
            atomic_write(d / "f", b"%d" % i * 3000)

    def verify(d: Path, acknowledged: bool) -> None:
        seen.append((d / "before").read_bytes())

    full = crash_states(op, verify, setup=setup, block_size=512)
    assert full.violations == [] and full.states == len(seen) > 20
    seen.clear()
    limited = crash_states(op, verify, setup=setup, block_size=512, limit=7)
    assert limited.states == len(seen) <= 7
    assert set(seen) == {b"setup"}


def test_files_written_outside_racefree_are_refused(tmp_path: Path) -> None:
    def op(d: Path) -> None:
        (d / "raw.txt").write_text("not through racefree")

    with pytest.raises(ModelError, match=r"raw\.txt"):
        crash_states(op, lambda d, a: None, directory=tmp_path / "w")


def test_the_same_seed_gives_the_same_states(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old" * 1000)
    rec = Recorder(tmp_path)
    from racefree import _fs

    with _fs.use(rec):
        rec.checkpoint()
        fd = _fs.open(str(tmp_path / "f"), os.O_WRONLY)
        _fs.pwrite(fd, bytes(range(256)) * 40, 100)
        _fs.pwrite(fd, b"z" * 9000, 50)
        _fs.close(fd)

    def states(seed: int) -> list[str]:
        return [s.choice for s in enumerate_states(rec, block=512, seed=seed, cap=64)]

    assert states(1) == states(1)
    assert states(1) != states(2)


# --------------------------------------------------------------------------- the tear model
def _masks(variants: list[tuple[Any, ...]]) -> set[int]:
    return {v[1] for v in variants if v[0] == "pages"}


def test_few_pages_tear_into_every_subset() -> None:
    """A write over 5 pages: drop, full, zero-filled, and all 30 proper non-empty subsets."""
    variants = write_variants(100, b"x" * 2000, 100, 512)
    assert variants[:3] == [("drop",), ("full",), ("zero",)]
    assert ALL_SUBSETS_PAGES == 5 and _masks(variants) == set(range(1, 31))
    assert len(variants) == 33


def test_many_pages_tear_into_the_documented_selection() -> None:
    n = 12
    full = (1 << n) - 1
    pages = write_variants(0, b"x" * 512 * n, 0, 512, rng=random.Random(0))
    ends = write_variants(0, b"x" * 512 * n, 0, 512, tears="ends")
    prefixes = {(1 << k) - 1 for k in range(1, n)}
    suffixes = {full ^ ((1 << k) - 1) for k in range(1, n)}
    assert _masks(ends) == prefixes | suffixes
    fixed = prefixes | suffixes | {full ^ (1 << i) for i in range(n)} | {1 << i for i in range(n)}
    fixed |= {1 | 1 << (n - 1), 0b111100001111, 0b010101010101, 0b101010101010}
    assert fixed <= _masks(pages) and len(_masks(pages) - fixed) <= 8
    assert 0 not in _masks(pages) and full not in _masks(pages)
    assert describe(("pages", 0b111100001111, 12), 0, 512) == "pages/0-3,8-11of12"
    assert describe(("pages", 0b000000000111, 12), 100, 512) == "head/1436"
    assert describe(("pages", 0b111000000000, 12), 0, 512) == "tail/4608"


def test_a_write_inside_one_page_cannot_tear() -> None:
    assert write_variants(10, b"abc", 100, 512) == [("drop",), ("full",)]


def test_limit_shares_states_among_crash_points() -> None:
    assert _quotas([3, 100, 100], None) == [3, 100, 100]
    assert _quotas([3, 100, 100], 203) == [3, 100, 100]
    assert _quotas([3, 100, 100], 100) == [3, 49, 48]
    assert _quotas([5, 5, 5, 5], 2) == [0, 1, 0, 1]
    assert _quotas([5, 5, 5, 5], 0) == [0, 0, 0, 0]


def test_racefree_caches_name_the_stores_shared_header() -> None:
    from racefree.store.files import SHM
    from racefree.testing import RACEFREE_CACHES

    assert RACEFREE_CACHES == (SHM,)
