"""The pytest plugin of :mod:`racefree.testing`: fixtures ``race``, ``crash_states``, ``faults``.

pytest loads it through the ``pytest11`` entry point of the installed package;
nothing else imports it, so ``import racefree`` and ``import racefree.testing``
never import pytest. Each fixture is the function of the same name with test
conveniences:

- ``race(fn, *args, **options)``: a run that does not finish in time fails the
  test with the reason instead of raising ``TimeoutError``;
- ``crash_states(operation, verify, **options)``: works in the test's
  ``tmp_path``, and a violation fails the test with the violating states shown
  (their directories, what survived, the calls before the crash); pass
  ``fail=False`` to get the :class:`~racefree.testing.CrashReport` instead;
- ``faults(call, error, **options)``: the context manager; any left open by the
  test is closed at teardown, so the seam is always restored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["crash_states", "faults", "race"]


@pytest.fixture
def race() -> Callable[..., Any]:
    """:func:`racefree.testing.race`, failing the test (not raising) on a timeout."""
    from racefree.testing.races import race as run_race

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return run_race(fn, *args, **kwargs)
        except TimeoutError as exc:
            pytest.fail(str(exc), pytrace=False)

    return call


@pytest.fixture
def crash_states(tmp_path: Path) -> Callable[..., Any]:
    """:func:`racefree.testing.crash_states` in ``tmp_path``; a violation fails the test."""
    from racefree.testing.replay import crash_states as explore_states

    runs = itertools.count()

    def call(operation: Callable[[Path], Any], verify: Callable[[Path, bool], Any], *,
             fail: bool = True, **kwargs: Any) -> Any:
        kwargs.setdefault("directory", tmp_path / f"crash-states-{next(runs)}")
        report = explore_states(operation, verify, **kwargs)
        if fail and report.violations:
            pytest.fail(report.format(limit=3), pytrace=False)
        return report

    return call


@pytest.fixture
def faults() -> Iterator[Callable[..., Any]]:
    """:func:`racefree.testing.faults`; every block still open at teardown is closed."""
    from racefree.testing.injection import faults as inject

    opened: list[Any] = []

    def call(op: str, error: int, **kwargs: Any) -> Any:
        block = inject(op, error, **kwargs)
        opened.append(block)
        return block

    yield call
    for block in reversed(opened):
        # Closing the block's generator runs its ``finally``, which restores the seam;
        # a block that ended (or never started) is left as it is.
        block.gen.close()
