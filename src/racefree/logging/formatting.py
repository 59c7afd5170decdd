"""A record's text and bytes as the standard handler makes them, its time text reused.

``Formatter.format`` turns the record's time into text at every record:
``converter(record.created)`` (0.3 µs) and ``time.strftime`` (0.35 µs), about
as much as the rest of what a racefree handler adds to a record. Records
logged within one second mostly give both the same arguments, so a handler
(:class:`TimeText`) keeps the last text and makes it again only when it may
differ: another second, converter, format or time zone (``time.tzset`` makes a
new ``time.tzname``; the C library reads ``TZ`` again, at ``time.mktime``, only
if its value changed). The milliseconds are added to each record, as the
standard formatter adds them.

Used only where the result is the standard one by construction: a formatter of
exactly the class ``logging.Formatter`` whose ``format`` and ``formatTime`` are
the standard ones (on the class and on the instance), ``time.strftime`` not
replaced, and a time format whose directives depend on the nine fields of a
``struct_time`` alone: digits, never a name (``%a``, ``%b``, ``%p``, ``%c``...
follow the locale, which ``locale.setlocale`` may change at any time) nor a
zone (``%Z``, ``%z``, ``%s``). Only ``time.localtime`` and ``time.gmtime`` as
converters skip the converter call; with another, the ``strftime`` is reused
when the ``struct_time`` it returns is the same. Every other case calls the
formatter's own methods, as the standard handler does.

:func:`record_encoding`: the standard handler's text file writes a byte-order
mark (``utf-8-sig``, ``utf-16``, ``utf-32``) once, at the start of the file;
racefree encodes each record without it and writes it before the first record
of each file (``handler._append_exclusive``). May import nothing of racefree.
"""

from __future__ import annotations

import codecs
import logging
import os
import sys
import time
from typing import Any

__all__ = ["TimeText", "numeric_format", "record_encoding", "standard"]


def standard(cls: type, name: str) -> Any:
    """``cls.name`` if it is the function the ``logging`` module defines, else None
    (replaced before racefree was imported: then never taken for the standard one)."""
    fn = vars(cls).get(name)
    if getattr(fn, "__module__", None) == "logging" and getattr(
            fn, "__qualname__", None) == f"{cls.__name__}.{name}":
        return fn
    return None


_Formatter = logging.Formatter
_FORMAT = standard(_Formatter, "format")
_FORMAT_TIME = standard(_Formatter, "formatTime")
#: The C library's strftime (None if replaced before racefree was imported).
_STRFTIME = time.strftime if getattr(time.strftime, "__module__", None) == "time" else None
_STRUCT_TIME = time.struct_time
_LOCALTIME = time.localtime
_GMTIME = time.gmtime
_UNSET = object()  # TZ not set
#: ``strftime`` directives whose text is digits (or a fixed character) computed from
#: the nine fields of a ``struct_time`` alone, in every locale and time zone.
_NUMERIC = frozenset("CdDeFgGHIjmMRSTuUVwWyY%nt")


def numeric_format(fmt: str) -> bool:
    """Whether every directive of ``fmt`` is in :data:`_NUMERIC` (no modifier either)."""
    i = fmt.find("%")
    while i >= 0:
        if i + 1 >= len(fmt) or fmt[i + 1] not in _NUMERIC:
            return False
        i = fmt.find("%", i + 2)
    return True


class TimeText:
    """One handler's cache: the arguments and the text of its last ``strftime``."""

    __slots__ = ("_conv", "_ct", "_fmt", "_numeric", "_sec", "_text", "_tz", "_zone")

    def __init__(self) -> None:
        self._fmt: str | None = None
        self._numeric = False
        self._ct: Any = None
        self._text = ""
        self._sec = -1
        self._conv: Any = None
        self._zone: Any = None
        self._tz: Any = None

    def format(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        """``formatter.format(record)``, exactly (the formatter's own where unsure)."""
        mine = vars(formatter)
        if (type(formatter) is not _Formatter or _FORMAT is None
                or _Formatter.format is not _FORMAT or "format" in mine or "formatTime" in mine):
            return formatter.format(record)
        # The body of logging.Formatter.format (the same from 3.8 to 3.13), its
        # formatTime call replaced by self._time.
        record.message = record.getMessage()
        if formatter.usesTime():
            record.asctime = self._time(formatter, record)
        s = formatter.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = formatter.formatException(record.exc_info)
        if record.exc_text:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + record.exc_text
        if record.stack_info:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + formatter.formatStack(record.stack_info)
        return s

    def _time(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        """``formatter.formatTime(record, formatter.datefmt)``, its text reused within a second."""
        datefmt = formatter.datefmt
        if _FORMAT_TIME is None or _Formatter.formatTime is not _FORMAT_TIME:
            return formatter.formatTime(record, datefmt)
        # logging.Formatter.formatTime, its converter and strftime calls made
        # only when their result may differ from the last call's.
        fmt = datefmt if datefmt else formatter.default_time_format
        if fmt is not self._fmt:
            self._fmt, self._ct, self._sec = fmt, None, -1
            self._numeric = type(fmt) is str and numeric_format(fmt)
        conv = formatter.converter
        created = record.created
        strftime = time.strftime
        if not self._numeric or strftime is not _STRFTIME:
            s = strftime(fmt, conv(created))
        elif (conv is _LOCALTIME or conv is _GMTIME) and type(created) is float and created >= 0:
            # A pure function of the second and of the C library's time zone,
            # which changes only when time.tzset() makes a new time.tzname, or
            # when the library reads TZ again (time.mktime does) and its value
            # changed (os.environ keeps the value it was given until it is set).
            zone = time.tzname
            env = getattr(os.environ, "_data", None)
            tz = env.get(b"TZ", _UNSET) if type(env) is dict else object()
            sec = int(created)  # what time.localtime floors created to
            if (sec == self._sec and conv is self._conv and zone is self._zone
                    and tz is self._tz):
                s = self._text
            else:
                ct = conv(created)
                s = strftime(fmt, ct)
                self._sec, self._conv, self._zone, self._tz = sec, conv, zone, tz
                self._ct, self._text = ct, s
        else:
            ct = conv(created)
            if type(ct) is _STRUCT_TIME and ct == self._ct:
                s = self._text  # the nine fields a numeric format reads are the same
            else:
                s = strftime(fmt, ct)
                if type(ct) is _STRUCT_TIME:
                    self._ct, self._text, self._sec = ct, s, -1
        if not datefmt:
            msec = formatter.default_msec_format
            if msec:
                s = msec % (s, record.msecs)
        return s


#: Encodings whose encoder starts with a byte-order mark: (the mark, the same without it).
_MARKED = {
    "utf-8-sig": (codecs.BOM_UTF8, "utf-8"),
    "utf-16": (codecs.BOM_UTF16, f"utf-16-{'le' if sys.byteorder == 'little' else 'be'}"),
    "utf-32": (codecs.BOM_UTF32, f"utf-32-{'le' if sys.byteorder == 'little' else 'be'}"),
}


def record_encoding(encoding: str) -> tuple[str, bytes]:
    """``(codec for each record, byte-order mark for the start of a file)`` for ``encoding``.

    The standard handler's text file writes the mark of ``utf-8-sig``, ``utf-16``
    or ``utf-32`` once, when it starts writing at offset 0; encoding each record
    on its own would put one before every record.
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return encoding, b""  # reported at the first record, as the stdlib reports it at open
    mark, plain = _MARKED.get(name, (b"", encoding))
    return plain, mark
