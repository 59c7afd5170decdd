"""Helpers of the logging tests: a handler that keeps what ``handleError`` was given, a record,
and a counter of the seam's calls."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pytest

from racefree import _fs
from racefree.logging import RotatingFileHandler


class Recording(RotatingFileHandler):
    """Keeps what handleError was given (``reported``) instead of printing it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.reported: list[BaseException | None] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def handleError(self, record: logging.LogRecord) -> None:
        self.reported.append(sys.exc_info()[1])


def rec(msg: str) -> logging.LogRecord:
    """A record whose message is ``msg``."""
    return logging.makeLogRecord({"msg": msg})


def count_seam_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of seam function ``name`` from now on (in one cell, resettable)."""
    real: Callable[..., Any] = getattr(_fs, name)
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_fs, name, counted)
    return calls
