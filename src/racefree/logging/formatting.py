"""A record's text and bytes as the standard handler makes them, its time text reused.

``Formatter.format`` turns the record's time into text at every record:
``converter(record.created)``, then ``time.strftime`` (about 0.35 µs). Records
logged within one second give ``strftime`` the same arguments, so a handler
(:class:`TimeText`) keeps its last result and calls it again only when the
format or the ``struct_time`` changes. The converter is still called for every
record: the C library may change its time zone at any call (``time.tzset``,
or ``TZ`` read again lazily, at ``time.mktime``). The milliseconds are added to
each record, as the standard formatter adds them.

Used only where the result is the standard one by construction: a formatter of
exactly the class ``logging.Formatter`` whose ``format`` and ``formatTime`` are
the standard ones (on the class and on the instance), ``time.strftime`` not
replaced, and a time format whose directives depend on the nine fields of a
``struct_time`` alone: digits, never a name (``%a``, ``%b``, ``%p``, ``%c``...
follow the locale, which ``locale.setlocale`` may change at any time) nor a
zone (``%Z``, ``%z``, ``%s``), and the converter ``time.localtime`` or
``time.gmtime`` (their fields are ints). Every other case calls the formatter's
own methods, as the standard handler does.

:func:`record_encoding`: the standard handler's text file writes a byte-order
mark (``utf-8-sig``, ``utf-16``, ``utf-32``) once, at the start of the file;
racefree encodes each record without it and writes it before the first record
of each file (``exclusive.ExclusivePath._append_exclusive``). May import nothing of racefree.
"""

from __future__ import annotations

import codecs
import logging
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

    __slots__ = ("_ct", "_fmt", "_numeric", "_text")

    def __init__(self) -> None:
        self._fmt: str | None = None
        self._numeric = False
        self._ct: Any = None
        self._text = ""

    def format(self, formatter: logging.Formatter, record: logging.LogRecord) -> str:
        """``formatter.format(record)``, exactly (the formatter's own where unsure)."""
        cls = _Formatter
        if type(formatter) is not cls:
            return formatter.format(record)  # any other (duck-typed, __slots__...) as it is
        mine = formatter.__dict__
        if cls.format is not _FORMAT or "format" in mine or "formatTime" in mine:
            return formatter.format(record)  # _FORMAT is None: never the standard one
        # The body of logging.Formatter.format (the same from 3.8 to 3.13), with
        # the body of its formatTime where it calls that, its strftime call made
        # only when its arguments differ from the last call's.
        record.message = record.getMessage()
        if formatter.usesTime():
            datefmt = formatter.datefmt
            if cls.formatTime is not _FORMAT_TIME:
                record.asctime = formatter.formatTime(record, datefmt)
            else:
                fmt = datefmt if datefmt else formatter.default_time_format
                if fmt is not self._fmt:
                    self._fmt, self._ct = fmt, None
                    self._numeric = type(fmt) is str and numeric_format(fmt)
                conv = formatter.converter
                # Called for every record, as the stdlib does: the C library's time
                # zone may change at any call (TZ is read again lazily, at mktime).
                ct = conv(record.created)
                strftime = time.strftime
                if (self._numeric and (conv is _LOCALTIME or conv is _GMTIME)
                        and strftime is _STRFTIME and type(ct) is _STRUCT_TIME):
                    # Their struct_time holds ints; a numeric format reads its nine
                    # fields only.
                    if ct == self._ct:
                        t = self._text
                    else:
                        t = self._text = strftime(fmt, ct)
                        self._ct = ct
                else:
                    t = strftime(fmt, ct)
                if not datefmt:
                    msec = formatter.default_msec_format
                    if msec:
                        t = msec % (t, record.msecs)
                record.asctime = t
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
