"""``handler.stream`` of the racefree handlers: what code written for ``FileHandler.stream`` uses.

The standard handlers keep an open text file in ``stream``; code built on them
calls ``stream.write``, ``stream.flush``, ``stream.fileno()``, or, in a
``shouldRollover`` of its own, ``stream.seek(0, 2)`` and ``stream.tell()``.
This object offers those, writing through the handler: each ``write`` is
appended as one whole record under the handler's locks, never buffered.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, Protocol

from racefree import _fs

__all__ = ["SharedStream"]


class SharedFileHandler(Protocol):
    """What the stream needs of its handler (``handler.SharedFileHandler``).

    A protocol, so that this module does not import the handler that imports it.
    """

    baseFilename: str
    encoding: str | None
    errors: str | None
    stream: Any
    lock: threading.RLock | None
    _enc: str
    _fd: int

    def _append(self, data: bytes, record: Any) -> None: ...
    def close(self) -> None: ...


class SharedStream:
    """A file-like view of a racefree handler's current log file (``handler.stream``)."""

    mode = "a"

    def __init__(self, handler: SharedFileHandler) -> None:
        self._handler = handler

    @property
    def name(self) -> str:
        return self._handler.baseFilename

    @property
    def encoding(self) -> str:
        return self._handler.encoding or self._handler._enc

    @property
    def errors(self) -> str | None:
        return self._handler.errors

    @property
    def closed(self) -> bool:
        return self._handler.stream is not self

    def write(self, text: str) -> int:
        """Append ``text`` as one whole record (rotating first if it is due); its length."""
        handler = self._handler
        data = text.encode(handler._enc, handler.errors or "strict")
        with handler.lock if handler.lock is not None else _Null():
            handler._append(data, None)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: :meth:`write` has written the record before it returns."""

    def fileno(self) -> int:
        """The descriptor of the current log file in this process (it changes at rotation)."""
        fd = self._handler._fd
        if fd < 0:
            raise ValueError("I/O operation on closed file")
        return fd

    def tell(self) -> int:
        """The current size of the log file this process has open."""
        return _fs.lseek(self.fileno(), 0, os.SEEK_END)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Only ``seek(0, 2)`` (as the stdlib's ``shouldRollover`` does): the file's size."""
        if (offset, whence) != (0, os.SEEK_END):
            raise io.UnsupportedOperation("a shared log file is only appended to")
        return self.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """Close the handler's file (as closing ``FileHandler.stream`` would)."""
        self._handler.close()

    def __repr__(self) -> str:
        return f"<racefree.logging stream {self.name!r}>"


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
