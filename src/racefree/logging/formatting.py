"""A record's text as the standard ``logging.Formatter`` makes it, with its time text reused.

``Formatter.format`` turns the record's time into text at every record:
``time.localtime`` and ``time.strftime``, about 0.6 µs, more than half of what
the rest of a racefree handler adds to a record. Records logged within one
second share that text (the milliseconds are added afterwards, as the standard
formatter adds them), so a handler keeps the last second's text and makes it
again only when the second, the converter, the format or the time zone changes.

Used only where the result is the standard one by construction: a formatter of
exactly the class ``logging.Formatter`` (a subclass may format time its own
way), no method of it replaced on the instance, the converter
``time.localtime`` or ``time.gmtime`` (pure functions of the second and of the
time zone, whose ``time.tzset`` makes a new ``time.tzname``). Every other
formatter is called as it is. A record with an exception or a stack is
formatted by the formatter itself. May import nothing of racefree.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["TimeText"]

_Formatter = logging.Formatter
#: Formatter methods that, replaced on an instance, change what ``format`` returns.
_METHODS = frozenset(
    {"format", "formatTime", "formatMessage", "usesTime", "formatException", "formatStack"}
)
_PURE = (time.localtime, time.gmtime)
_strftime = time.strftime


class TimeText:
    """One handler's cache: the text of the last second its records were logged in."""

    __slots__ = ("_conv", "_fmt", "_ok", "_sec", "_seen", "_text", "_tz")

    def __init__(self) -> None:
        self._seen: Any = None  # the formatter judged last, and its instance dict's size
        self._ok = False
        self._sec = -1
        self._conv: Any = None
        self._fmt: Any = None
        self._tz: Any = None
        self._text = ""

    def format(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        """``formatter.format(record)``, exactly (the formatter is called where unsure)."""
        if type(formatter) is not _Formatter or not self._plain(formatter):
            return formatter.format(record)
        if record.exc_info or record.exc_text or record.stack_info:
            return formatter.format(record)
        record.message = record.getMessage()
        if formatter.usesTime():
            record.asctime = self._time(formatter, record)
        return formatter.formatMessage(record)

    def _plain(self, formatter: logging.Formatter) -> bool:
        # Judged again when the formatter or its number of instance attributes
        # changes (a method set on the instance adds one).
        seen = (formatter, len(vars(formatter)))
        if self._seen is None or self._seen[0] is not formatter or self._seen[1] != seen[1]:
            self._seen = seen
            self._ok = _METHODS.isdisjoint(vars(formatter))
        return self._ok

    def _time(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        """``formatter.formatTime(record, formatter.datefmt)``, reusing the second's text."""
        conv = formatter.converter
        datefmt = formatter.datefmt
        if conv not in _PURE:
            return formatter.formatTime(record, datefmt)
        created = record.created
        if type(created) is not float or created < 0:
            return formatter.formatTime(record, datefmt)  # a record made by other means
        fmt = datefmt if datefmt else formatter.default_time_format
        sec = int(created)  # time.localtime floors to the second; so does int() here
        tz = time.tzname
        if sec != self._sec or conv is not self._conv or fmt != self._fmt or tz is not self._tz:
            self._text = _strftime(fmt, conv(created))
            self._sec, self._conv, self._fmt, self._tz = sec, conv, fmt, tz
        text = self._text
        if not datefmt:
            msec = formatter.default_msec_format
            if msec:
                text = msec % (text, record.msecs)
        return text
