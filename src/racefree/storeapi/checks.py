"""Argument checks and limits shared by every store write, on files and on PostgreSQL.

Both backends call these before they take a write lock or open a transaction,
so a bad id or document raises ``TypeError`` (or :class:`~racefree.LimitError`,
a ``ValueError``, for one past a limit) before anything is written, with the
same message on both.

The limits (``docs/store.md``) are one contract for both backends:

- an id is at most :data:`MAX_ID` bytes of UTF-8 (PostgreSQL indexes ``(store,
  id)`` in a btree, whose entries must stay under about 2.7 kB);
- a version is at most :data:`MAX_VERSION` (PostgreSQL's ``bigint``);
- a document nests arrays and objects at most :data:`MAX_DEPTH` deep (every
  reader parses it without ``RecursionError``, from any call stack);
- a document's compact JSON is at most :data:`MAX_DOC` bytes.
"""

from __future__ import annotations

import json
from typing import Any

from racefree._errors import LimitError
from racefree._json import MAX_DEPTH, TooDeep, parse, too_deep

__all__ = [
    "MAX_DEPTH", "MAX_DOC", "MAX_ID", "MAX_VERSION", "check_expect", "check_version",
    "encode_doc", "encode_id", "id_bytes", "next_version", "no_fence", "version_limit",
]

#: The longest id, in bytes of UTF-8 (lone surrogates kept as three bytes each).
MAX_ID = 1024
#: The largest version (PostgreSQL's bigint); an id at it can no longer be written.
MAX_VERSION = (1 << 63) - 1
#: The largest document: bytes of its compact ASCII JSON.
MAX_DOC = 256 << 20

# Compact ASCII JSON: ASCII keeps lone surrogates as \u escapes; NaN is not JSON.
# The C encoder is built once (JSONEncoder.encode builds one per call, a fifth of a
# put's time); without cycle markers, so one object may be encoded by several
# threads at once: a cycle ends in RecursionError instead of ValueError.
_json_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)


def _not_json(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


if _c_make_encoder is not None:
    _c_encoder = _c_make_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def _encode(doc: dict[str, Any]) -> str:
        return "".join(_c_encoder(doc, 0))

else:  # pragma: no cover - CPython always has the C encoder

    def _encode(doc: dict[str, Any]) -> str:
        return _json_encode(doc)

def id_bytes(key: object) -> bytes:
    """An id's UTF-8 bytes (lone surrogates kept), for a lookup; TypeError for a non-str.

    No length check: an id past :data:`MAX_ID` is simply never found.
    """
    if not isinstance(key, str):
        raise TypeError(f"store ids are str, not {type(key).__name__}")
    return key.encode("utf-8", "surrogatepass")


def encode_id(key: object) -> bytes:
    """The stored form of an id: TypeError for a non-str, LimitError past :data:`MAX_ID` bytes."""
    data = id_bytes(key)
    if len(data) > MAX_ID:
        raise LimitError(
            "id", MAX_ID, len(data),
            f"an id of {len(data)} bytes is longer than the limit of {MAX_ID} bytes",
        )
    return data


_CONTAINERS = frozenset({dict, list, tuple})
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _walk(doc: dict[str, Any]) -> tuple[bool, int]:
    """``(converted, containers)`` for a document the encoder accepted.

    ``converted``: whether a dict in it has a key json.dumps converts (int,
    float, bool, None): only then can two keys of one dict collide.
    ``containers``: how many dicts and lists it holds, a bound on its depth (only
    past :data:`MAX_DEPTH` is the depth itself measured). A walk of the
    containers without recursion: cheaper than a scan of the encoded bytes.
    """
    stack: list[Any] = [doc]
    pop, push = stack.pop, stack.append
    containers = 0
    while stack:
        item = pop()
        containers += 1
        values = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    return True, containers
        for value in values:
            kind = type(value)
            if kind in _CONTAINERS or (kind not in _SCALARS and isinstance(value, (dict, list,
                                                                                   tuple))):
                push(value)
    return False, containers


def _colliding_key(obj: Any) -> str | None:
    """A JSON key that two keys of one dict in ``obj`` both become (``{1: a, "1": b}``)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(type(k) is str for k in item):
                seen: set[str] = set()
                for k in item:
                    text = k if isinstance(k, str) else json.dumps(k)
                    if text in seen:
                        return text
                    seen.add(text)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list, tuple)))
        else:
            stack.extend(v for v in item if isinstance(v, (dict, list, tuple)))
    return None


def _contains_itself(obj: Any) -> bool:
    """Whether a dict or list in ``obj`` contains itself (a cycle), walked without recursion."""
    path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        item, leaving = stack.pop()
        if leaving:
            path.discard(id(item))
            continue
        if id(item) in path:
            return True
        path.add(id(item))
        stack.append((item, True))
        children = item.values() if isinstance(item, dict) else item
        stack.extend((v, False) for v in children if isinstance(v, (dict, list, tuple)))
    return False


def encode_doc(doc: object) -> bytes:
    """The stored bytes of a document; nothing is written when this raises.

    ``TypeError`` unless a JSON object (a ``dict`` ``json.dumps`` accepts, NaN
    refused), or when two of one dict's keys become one JSON key (``{1: a, "1":
    b}``: the document would not read back as written); :class:`LimitError` for
    one nested deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_DOC` bytes.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict (a JSON object), not {type(doc).__name__}")
    try:
        try:
            data = _encode(doc).encode("ascii")
        except RecursionError:
            # A deep call stack, a cycle or a very deep document: again on a fresh stack.
            data = parse(_encode, doc).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the document is not JSON-serialisable: {exc}") from None
    except TooDeep:
        if _contains_itself(doc):
            raise TypeError("the document is not JSON-serialisable: it contains itself") from None
        data = b"[" * (MAX_DEPTH + 1)  # nested too deep for the encoder: past the limit
    if len(data) > MAX_DOC:
        raise LimitError(
            "document", MAX_DOC, len(data),
            f"a document of {len(data)} bytes is larger than the limit of {MAX_DOC} bytes",
        )
    converted, containers = _walk(doc)
    if (converted or containers > MAX_DEPTH) and too_deep(data):
        raise LimitError(
            "depth", MAX_DEPTH, MAX_DEPTH + 1,
            f"the document is nested more than {MAX_DEPTH} levels deep (the limit)",
        )
    if converted:
        key = _colliding_key(doc)
        if key is not None:
            raise TypeError(
                f"the document has two keys that are both {key!r} in JSON (json.dumps turns"
                " int, float, bool and None keys into strings): it would not read back as written"
            )
    return data


def check_expect(expect: object) -> int | None:
    if expect is None:
        return None
    if isinstance(expect, bool) or not isinstance(expect, int):
        raise TypeError(f"expect_version must be an int or None, not {expect!r}")
    if expect < 0:
        raise ValueError(f"expect_version must be >= 0, not {expect}")
    if expect > MAX_VERSION:
        raise LimitError(
            "version", MAX_VERSION, expect,
            f"expect_version {expect} is larger than the largest version, {MAX_VERSION}",
        )
    return expect


def check_version(version: object) -> int:
    """An exact version (``put_at_versions``): an int from 1 to :data:`MAX_VERSION`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a version is an int >= 1, not {version!r}")
    if version > MAX_VERSION:
        raise LimitError(
            "version", MAX_VERSION, version,
            f"version {version} is larger than the largest version, {MAX_VERSION}",
        )
    return version


def next_version(key: str, current: int) -> int:
    """The version after ``current`` for a write of ``key``; LimitError past :data:`MAX_VERSION`."""
    if current >= MAX_VERSION:
        raise version_limit(key)
    return current + 1


def version_limit(key: str) -> LimitError:
    """The error for a write of ``key`` whose version is already :data:`MAX_VERSION`."""
    return LimitError(
        "version", MAX_VERSION, MAX_VERSION + 1,
        f"{key!r} is at version {MAX_VERSION}, the largest a store keeps: it cannot be"
        " written again",
    )


def no_fence(fence: object) -> None:
    if fence is not None:
        raise ValueError(
            "fencing tokens are for the PostgreSQL store; a file store's writers are"
            " serialised by a kernel lock that is released only when its holder dies"
        )
