"""Shared fixtures.

``store_factory`` runs the Store contract against every backend: the file
store always, and PostgreSQL when a server is reachable (see ``tests/helpers/pgserver.py``).
``url`` and ``admin`` are that server for the PostgreSQL tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(params=["file", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A function that opens (or reopens) one store; every store it opened is closed after the test.

    Calling it twice opens the same store twice (a reopen, or a second handle).
    """
    opened: list[Any] = []
    if request.param == "file":
        from racefree import Store

        def make(**kwargs: Any) -> Any:
            store = Store(tmp_path / "store", **kwargs)
            opened.append(store)
            return store

    else:
        from helpers.pgserver import pg_store_factory

        make = pg_store_factory(request, opened)
    try:
        yield make
    finally:
        for store in reversed(opened):
            store.close()


@pytest.fixture
def url() -> str:
    """The PostgreSQL test server's URL (the test skips, or fails in CI, without one)."""
    from helpers.pgserver import server_url

    return server_url()


@pytest.fixture
def admin(url: str) -> Iterator[Any]:
    """An autocommit connection to the test server, to look behind the library's back."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("RACEFREE_TEST_POSTGRES")
    return f"racefree: RACEFREE_TEST_POSTGRES={'set' if url else 'unset'}"
