"""A :class:`~racefree.JsonFile`'s text: every way a document fails to read or write, typed.

Reading: anything that is not one whole UTF-8 JSON document that Python can
turn into values is :class:`~racefree.CorruptFileError`, naming the file and
the byte offset: invalid JSON, an empty file, bytes that are not UTF-8,
arrays and objects nested deeper than Python can parse even from an empty
stack, and an integer of more digits than Python converts
(``sys.get_int_max_str_digits()``, 4300 by default), which ``json`` reports as
a bare ``ValueError``.

Writing: what cannot be written is refused before anything is: ``TypeError``
for what is not JSON, ``ValueError`` for NaN, infinities, a reference cycle or
an integer too long to convert, and :class:`~racefree.LimitError` (a
``ValueError``) for a document nested deeper than Python can encode even from
an empty stack (which no reader could parse back). A string that holds a lone
surrogate (``"\\udc80"``, which UTF-8 cannot encode but JSON's ``\\u`` escapes
can) is written escaped: the whole document is then written with ASCII escapes,
and reads back equal.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from racefree import _json
from racefree._errors import CorruptFileError, LimitError

__all__ = ["decode", "encode"]

# Roughly the nesting at which Python's parser gives up, for the offset in the message.
_PARSE_DEPTH = 900
_LONG_INT = re.compile(rb"\d{4301,}")


def decode(path: str, raw: bytes) -> Any:
    """Parse ``raw``; anything that is not one whole JSON document is CorruptFileError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(path, f"not UTF-8 ({exc.reason})", offset=exc.start) from exc
    skip = 0
    if text.startswith("\ufeff"):  # a byte-order mark some editors write: not damage
        text, skip = text[1:], 3
    try:
        return _json.parse(json.loads, text)
    except json.JSONDecodeError as exc:
        detail = "the file is empty" if not raw else f"invalid JSON: {exc.msg}"
        offset = skip + len(text[: exc.pos].encode("utf-8"))
        raise CorruptFileError(path, detail, offset=offset, line=exc.lineno) from exc
    except _json.TooDeep:
        raise CorruptFileError(
            path, "nested too deeply to parse (arrays and objects inside each other)",
            offset=_json.deep_offset(raw, _PARSE_DEPTH),
        ) from None
    except ValueError as exc:
        # Valid JSON that Python will not turn into a value: an integer longer than
        # sys.get_int_max_str_digits() (the parser's own errors are JSONDecodeError).
        long_int = _LONG_INT.search(raw)
        raise CorruptFileError(
            path, f"cannot be read into Python values: {exc}",
            offset=long_int.start() if long_int else None,
        ) from None


def encode(obj: Any, indent: int | str | None) -> bytes:
    """``obj`` as the bytes of a JSON file (a final newline), or a typed error, writing nothing."""
    try:
        # A RecursionError from a deep caller's stack: encoded again on an empty one.
        text: str = _json.parse(_dumps, obj, indent, False)
    except _json.TooDeep:
        depth = _depth(obj)
        raise LimitError(
            "depth", sys.getrecursionlimit(), depth,
            f"the document is nested {depth} levels deep: more than Python can encode (or"
            " parse back); nothing was written",
        ) from None
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: UTF-8 has no encoding for it, JSON's \u escape has. Escaping
        # everything that is not ASCII keeps the document equal when it is read back.
        return (_json.parse(_dumps, obj, indent, True) + "\n").encode("ascii")


def _dumps(obj: Any, indent: int | str | None, ascii_only: bool) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=ascii_only, allow_nan=False)


def _depth(obj: Any) -> int:
    """How deep lists and dicts nest in ``obj`` (without recursion: any depth)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    seen: set[int] = set()
    while stack:
        value, level = stack.pop()
        if isinstance(value, (list, tuple, dict)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            deepest = max(deepest, level)
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, level + 1) for item in items)
    return deepest
