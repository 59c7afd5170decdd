"""A racefree log handler that keeps what ``handleError`` was given, for tests that assert it."""

from __future__ import annotations

import logging
import sys

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
