"""``StoreBatch``: the writes of a ``with store.batch()`` block, committed as one record."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from racefree.store.segment import OP_DELETE, OP_PUT
from racefree.storeapi.checks import check_expect, encode_doc, encode_id, no_fence

__all__ = ["Op", "StoreBatch"]

#: One write of a batch (op, id, id bytes, doc bytes, expect_version, exact version).
Op = tuple[int, str, bytes, bytes, "int | None", "int | None"]


class StoreBatch:
    """Writes collected in a ``with`` block, written as one record at its end.

    Nothing is written before the block ends, nor if it raises. At the end every
    ``expect_version`` is checked in order (later ops see earlier ones); one
    mismatch raises :class:`ConflictError` and writes nothing. ``versions`` then
    maps each id to its new version (None for a delete of an absent id).
    """

    def __init__(self, commit: Callable[[list[Op]], dict[str, int | None]]) -> None:
        self._commit = commit
        self._ops: list[Op] = []
        self.versions: dict[str, int | None] = {}

    def put(
        self, id: str, doc: dict[str, Any], *, expect_version: int | None = None,
        fence: None = None,
    ) -> None:
        """Add a put (checked now: TypeError for a bad id or document)."""
        no_fence(fence)
        self._ops.append(
            (OP_PUT, id, encode_id(id), encode_doc(doc), check_expect(expect_version), None)
        )

    def delete(self, id: str, *, expect_version: int | None = None, fence: None = None) -> None:
        """Add a delete."""
        no_fence(fence)
        self._ops.append((OP_DELETE, id, encode_id(id), b"", check_expect(expect_version), None))

    def __enter__(self) -> StoreBatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._ops:
            ops, self._ops = self._ops, []
            self.versions = self._commit(ops)
