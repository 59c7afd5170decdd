"""``acquire()``'s result and ``await lock.acquire()`` for PgLock (helpers/acquire_checks.py)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.acquire_checks import CHECKS
from helpers.pgserver import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.mark.parametrize("check", list(CHECKS))
def test_acquire_result(url: str, request: pytest.FixtureRequest, check: str) -> None:
    """Each check of the acquire result against PgLock (one session per instance)."""
    from racefree import open_lock

    name = unique_name(request)
    opened: list[Any] = []

    def make() -> Any:
        lock = open_lock(url, name, timeout=5)
        opened.append(lock)
        return lock

    try:
        CHECKS[check](make)
    finally:
        for lock in opened:
            lock.close()
