"""JSON nesting: the depth limit racefree writes under, and parsing that never overflows a stack.

A leaf module (it imports nothing from racefree). Python's JSON parser and
encoder recurse once per nested array or object, inside the caller's own call
stack: a document nested a thousand deep, or a shallower one read from a deep
call stack, raises ``RecursionError``. So:

- writers that promise every reader can read what they wrote (the stores, the
  log) refuse a value nested deeper than :data:`MAX_DEPTH` (:func:`too_deep`,
  checked on the encoded bytes, cheaply);
- readers call :func:`parse`: a parse that hits ``RecursionError`` is run again
  in a new thread, whose stack is empty, and only if that fails too is the
  data deeper than Python can parse: :class:`TooDeep`, which each reader turns
  into its own typed error naming the file and the offset (:func:`deep_offset`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MAX_DEPTH", "TooDeep", "deep_offset", "parse", "too_deep"]

T = TypeVar("T")

#: The deepest nesting of arrays and objects a store document or a log record may have.
#: Real data rarely goes past 20; a reader at any stack depth parses 100 in a fresh
#: thread with room to spare under Python's default recursion limit of 1000.
MAX_DEPTH = 100

# A JSON string (compact or not), so that brackets inside strings are not counted.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_INNERMOST = re.compile(rb"\{\}|\[\]")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class TooDeep(Exception):
    """The data is nested deeper than Python can parse, even from an empty stack."""


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests arrays and objects deeper than ``limit``.

    Costs two ``bytes.count`` calls when ``data`` holds at most ``limit``
    brackets (a typical document); otherwise the strings are removed, and the
    innermost empty pairs are removed once per level, at C speed, up to
    ``limit + 1`` times.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def deep_offset(data: bytes, limit: int = MAX_DEPTH) -> int:
    """The offset of the first bracket of ``data`` that opens level ``limit + 1`` (or 0).

    Only for error messages: it walks the brackets one by one in Python.
    """
    depth = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return match.start()
        elif token in (b"]", b"}"):
            depth -= 1
    return 0


def parse(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` (a JSON parse); if it overflows the stack, again in a fresh thread.

    Exceptions of ``func`` propagate unchanged, except a ``RecursionError`` in the
    fresh thread too, which becomes :class:`TooDeep`.
    """
    try:
        return func(*args)
    except RecursionError:
        pass
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, func(*args)))
        except BaseException as exc:  # handed to the calling thread, raised there
            box.append((False, exc))

    worker = threading.Thread(target=run, name="racefree-json-parse", daemon=True)
    worker.start()
    worker.join()
    ok, value = box[0]
    if ok:
        result: T = value
        return result
    if isinstance(value, RecursionError):
        raise TooDeep() from None
    raise value
