"""Argument encodings of PostgreSQL store writes, and ``PgBatch``.

The checks are the file store's own (``racefree.storeapi.checks``), so both backends
accept and refuse the same ids and documents with the same errors, before
anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from racefree.storeapi.checks import check_expect, encode_id
from racefree.storeapi.checks import encode_doc as _file_encode_doc

if TYPE_CHECKING:
    from racefree.pg.lock import FenceToken

__all__ = ["DELETE", "PUT", "Op", "PgBatch", "decode_id", "encode_doc"]

PUT, DELETE = 1, 2

# One write of a call or batch: (op, id, encoded id, doc text, expect_version).
Op = tuple[int, str, bytes, "str | None", "int | None"]


def decode_id(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


def encode_doc(doc: object) -> str:
    """The stored text of a document, exactly as the file store writes it.

    The file store's own encoder, so both backends accept and refuse the same
    documents with the same TypeError, before anything is written.
    """
    return _file_encode_doc(doc).decode("ascii")


class PgBatch:
    """Writes collected in a ``with`` block and committed as one transaction at its end.

    Nothing is sent before the block ends, nor if it raises. At the end every
    ``expect_version`` and ``fence`` is checked in order (later ops see
    earlier ones); one failure raises :class:`ConflictError` or
    :class:`LockLost` and writes nothing. ``versions`` then maps each id to its
    new version (None for a delete of an absent id).
    """

    def __init__(
        self, commit: Callable[[list[Op], list[FenceToken]], dict[str, int | None]]
    ) -> None:
        self._commit = commit
        self._ops: list[Op] = []
        self._fences: list[FenceToken] = []
        self.versions: dict[str, int | None] = {}

    def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: FenceToken | None = None,
    ) -> None:
        """Add a put (checked now: TypeError for a bad id or document)."""
        self._ops.append((PUT, id, encode_id(id), encode_doc(doc), check_expect(expect_version)))
        if fence is not None:
            self._fences.append(fence)

    def delete(
        self, id: str, *, expect_version: int | None = None, fence: FenceToken | None = None
    ) -> None:
        """Add a delete."""
        self._ops.append((DELETE, id, encode_id(id), None, check_expect(expect_version)))
        if fence is not None:
            self._fences.append(fence)

    def __enter__(self) -> PgBatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and (self._ops or self._fences):
            ops, self._ops = self._ops, []
            fences, self._fences = self._fences, []
            if ops:
                self.versions = self._commit(ops, fences)
