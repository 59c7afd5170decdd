"""The reads of a :class:`racefree.Store`: ``get`` (through the handle's cache), lookups, snapshots.

A read compares one word of the shared header with the end its index covers
and catches up only if another process wrote (``Handle.refresh``); it takes no
lock. A ``get`` of a document the handle has cached (``store.cache``) is a copy
of it; otherwise one ``pread`` of the document and a JSON parse.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from racefree import _fork, _fs, _json
from racefree._errors import CorruptFileError
from racefree.store.cache import copy_doc
from racefree.store.compact import cut_short, read_doc
from racefree.store.core import Core
from racefree.store.files import W_END
from racefree.store.index import State
from racefree.store.segment import M24, M36, M40
from racefree.storeapi.checks import id_bytes

__all__ = ["StoreReads"]

_MISSING: Any = object()
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _first_value(raw: bytes) -> Any:
    return _scan_once(raw.decode("ascii"), 0)[0]


class StoreReads:
    """The read calls of :class:`racefree.Store` (a base class of it)."""

    _core: Core
    _path: str

    # -- reads -------------------------------------------------------------------
    def _current(self) -> State:
        core = self._core
        st = core.state
        if core.fast[W_END] != st.end:
            st = core.refresh()
        return st

    def _read(self, st: State, value: int) -> Any:
        off = value & M40
        raw = read_doc(self._core, st, (value >> 76) & M24, off, (value >> 40) & M36)
        try:
            return _scan_once(raw.decode("ascii"), 0)[0]
        except (ValueError, StopIteration):
            raise CorruptFileError(self._path, "a document is not JSON", offset=off) from None
        except RecursionError:
            return self._parse_deep(raw, off)

    def _parse_deep(self, raw: bytes, off: int) -> Any:
        """Parse a document that overflowed this thread's stack (see ``racefree._json``)."""
        try:
            return _json.parse(_first_value, raw)
        except (ValueError, StopIteration):
            raise CorruptFileError(self._path, "a document is not JSON", offset=off) from None
        except _json.TooDeep:
            raise CorruptFileError(
                self._path, "a document is nested too deeply to parse",
                offset=off + _json.deep_offset(raw),
            ) from None

    def get(self, id: str, default: Any = None) -> Any:
        """The document stored under ``id`` (a new object each call), or ``default``.

        Never blocks on other processes' writers: no lock. A document this handle
        read before and nobody changed since comes from its cache (``cache_bytes``):
        no system call, no parse (a copy: every dict and list new). Otherwise one
        ``pread`` of the document (a segment cut short: :class:`CorruptFileError`),
        more only if another process wrote since this process last looked.
        """
        core = self._core
        st = core.state
        if core.fast[1] != st.end:  # W_END: changed by any process's write
            st = core.refresh()
        hit = st.cache.young.get(id)
        if hit is not None:
            plan = hit[1]
            if not plan:
                return hit[0].copy()
            try:
                return copy_doc(hit[0], plan)
            except RecursionError:  # a deep call stack: read and parsed below
                pass
        return self._get_slow(st, id, default)

    def _get_slow(self, st: State, id: str, default: Any) -> Any:
        value = st.index.get(id)
        if value is None:
            if not isinstance(id, str):
                raise TypeError(f"store ids are str, not {type(id).__name__}")
            return default
        cache = st.cache
        if id in cache.old:  # a look without the lock first: most misses are in neither dict
            hit = cache.promote(id)
            if hit is not None:
                with contextlib.suppress(RecursionError):
                    return copy_doc(hit[0], hit[1]) if hit[1] else hit[0].copy()
        off = value & M40
        length = (value >> 40) & M36
        raw = _fs.pread(st.fds[(value >> 76) & M24], length, off)
        if len(raw) != length:
            raise cut_short(self._core, (value >> 76) & M24, off)
        try:
            doc = _scan_once(raw.decode("ascii"), 0)[0]
        except (ValueError, StopIteration):
            raise CorruptFileError(self._path, "a document is not JSON", offset=off) from None
        except RecursionError:  # a deep call stack: parsed again on a fresh one
            return self._parse_deep(raw, off)
        if not cache.half:
            return doc
        return cache.add(id, doc, length, st.index, value)

    def __getitem__(self, id: str) -> dict[str, Any]:
        doc = self.get(id, _MISSING)
        if doc is _MISSING:
            raise KeyError(id)
        result: dict[str, Any] = doc
        return result

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._current().index

    def version(self, id: str) -> int | None:
        """The version of ``id``'s document (1 for its first put), or None if absent."""
        id_bytes(id)  # TypeError for a non-str; a longer id than any stored is just absent
        value = self._current().index.get(id)
        return None if value is None else value >> 100

    def __len__(self) -> int:
        return len(self._current().index)

    def _snapshot(self) -> tuple[State, list[tuple[str, int]]]:
        if _fork.maybe_child:
            _fork.check()  # before taking the mutex: a forked child replaces it first
        with self._core.mu:  # no catch-up may change the index while it is copied
            st = self._core.refresh()
            pairs = list(st.index.items())
        pairs.sort()
        return st, pairs

    def keys(self) -> list[str]:
        """Every id, sorted (code point order = UTF-8 byte order), from one snapshot."""
        return [key for key, _ in self._snapshot()[1]]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``(id, document)`` pair, sorted by id, from one consistent snapshot."""
        st, pairs = self._snapshot()
        return [(key, self._read(st, value)) for key, value in pairs]

    def items_with_versions(self) -> list[tuple[str, int, dict[str, Any]]]:
        """Every ``(id, version, document)``, from one snapshot (``racefree store copy``)."""
        st, pairs = self._snapshot()
        return [(key, value >> 100, self._read(st, value)) for key, value in pairs]
