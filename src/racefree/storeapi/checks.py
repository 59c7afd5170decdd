"""Argument checks shared by every store write, on files and on PostgreSQL.

Both backends call these before they take a write lock or open a transaction,
so a bad id or document raises ``TypeError`` (or ``ValueError`` for one that
is too large) before anything is written, with the same message on both.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "MAX_RECORD", "check_expect", "check_version", "encode_doc", "encode_id", "no_fence",
]

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

#: The largest id or document (in bytes): a record's lengths are 32-bit.
MAX_RECORD = 0xFFFF0000

def encode_id(key: object) -> bytes:
    """The stored form of an id: UTF-8 with lone surrogates kept; TypeError for a non-str."""
    if not isinstance(key, str):
        raise TypeError(f"store ids are str, not {type(key).__name__}")
    data = key.encode("utf-8", "surrogatepass")
    if len(data) > MAX_RECORD:
        raise ValueError(f"an id of {len(data)} bytes is larger than a record can be")
    return data


def encode_doc(doc: object) -> bytes:
    """The stored bytes of a document; TypeError (nothing written) unless a JSON object."""
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict (a JSON object), not {type(doc).__name__}")
    try:
        data = _encode(doc).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the document is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise TypeError("the document is not JSON-serialisable: it contains itself") from None
    if len(data) > MAX_RECORD:
        raise ValueError(f"a document of {len(data)} bytes is larger than a record can be")
    return data


def check_expect(expect: object) -> int | None:
    if expect is None:
        return None
    if isinstance(expect, bool) or not isinstance(expect, int):
        raise TypeError(f"expect_version must be an int or None, not {expect!r}")
    if expect < 0:
        raise ValueError(f"expect_version must be >= 0, not {expect}")
    return expect


def check_version(version: object) -> int:
    """An exact version (``put_at_versions``): an int >= 1, else ``ValueError``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a version is an int >= 1, not {version!r}")
    return version


def no_fence(fence: object) -> None:
    if fence is not None:
        raise ValueError(
            "fencing tokens are for the PostgreSQL store; a file store's writers are"
            " serialised by a kernel lock that is released only when its holder dies"
        )
