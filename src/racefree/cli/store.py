"""``racefree store DIR ls | get ID | put ID JSON | rm ID | compact | check``.

For a person looking into their data. ``DIR`` is a store directory (or a
``file://`` or ``postgresql://`` URL, through :func:`racefree.open_store`).
``racefree store copy SRC DST`` moves a store between backends (its own module,
``racefree.cli.store_copy``). Errors are one line on stderr and exit code 1.
Ids are printed as JSON strings (non-ASCII letters as they are), so that any
id (newlines, NUL, ``../x``) prints unambiguously. ``put`` and ``rm`` take
``--expect VERSION`` (compare-and-set; 0: the id must not exist), before or
after the other arguments; ``--`` ends the options (for an id ``--expect``).
``ls``, ``get`` and ``check`` open a file store read-only (``readonly=True``):
they work for a user who may only read the directory, and change nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from racefree._errors import ConflictError

if TYPE_CHECKING:
    pass

_ACTIONS = ("ls", "get", "put", "rm", "compact", "check")
_ARGS = {"ls": 0, "get": 1, "put": 2, "rm": 1, "compact": 0, "check": 0}
_EXPECT = ("put", "rm")  # the actions that take --expect VERSION
_READS = ("ls", "get", "check")  # opened read-only: they change nothing, not even a torn tail


def _open(location: str, *, create: bool, readonly: bool) -> Any:
    """The store at ``location``; a file store is opened read-only for ``readonly``
    (so that a user who may only read its directory can look into it)."""
    from racefree.backends.dispatch import open_store, parse_target

    kind, where = parse_target(location)
    if kind == "file":
        if os.path.exists(where) and not os.path.isdir(where):
            raise ValueError(f"{where!r} is a file, not a store directory")
        if not create and not os.path.isfile(os.path.join(where, "MANIFEST")):
            raise ValueError(f"no store at {where!r} (no MANIFEST there; "
                             f"'racefree store DIR put ID JSON' creates one)")
        parent = os.path.dirname(os.path.abspath(where))
        if create and not os.path.isdir(parent):
            raise ValueError(f"cannot create a store at {where!r}: its parent directory "
                             f"{parent!r} does not exist")
        if readonly:
            return open_store(location, readonly=True)
    return open_store(location)


def _options(words: list[str]) -> tuple[list[str], int | None]:
    """``(the other words, the --expect version or None)``; options may be anywhere.

    argparse hands the store command its words unparsed (REMAINDER, so that ids
    such as ``--force`` stay ids): ``--expect`` is picked out here; ``--`` ends it.
    """
    rest: list[str] = []
    expect: int | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            rest += words[i + 1 :]
            break
        if word == "--expect" or word.startswith("--expect="):
            if word == "--expect":
                if i + 1 == len(words):
                    raise ValueError("--expect needs a VERSION")
                value, i = words[i + 1], i + 2
            else:
                value, i = word.partition("=")[2], i + 1
            if expect is not None:
                raise ValueError("--expect is given twice")
            if not (value.isascii() and value.isdigit()):
                raise ValueError(f"--expect takes a version number (0: must not exist), "
                                 f"not {value!r}")
            expect = int(value)
            continue
        rest.append(word)
        i += 1
    return rest, expect


def _copy(words: list[str]) -> int:
    try:
        module = importlib.import_module(f"{__package__}.store_copy")
    except ModuleNotFoundError:
        raise ValueError("'racefree store copy' is not available in this installation") from None
    parser = argparse.ArgumentParser(prog="racefree store copy")
    module.add_copy_parser(parser)
    return int(module.run_copy(parser.parse_args(words)))


def run(args: argparse.Namespace) -> int:
    words = list(args.rest)
    if args.location == "copy" and words and not os.path.isdir("copy"):
        return _copy(words)
    words, expect = _options(words)
    action = words.pop(0) if words else "ls"
    if action not in _ACTIONS:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(_ACTIONS)}, or copy")
    if len(words) != _ARGS[action]:
        raise ValueError(f"'{action}' takes {_ARGS[action]} argument(s), got {len(words)}")
    if expect is not None and action not in _EXPECT:
        raise ValueError(f"--expect is for put and rm, not {action!r}")
    store = _open(args.location, create=action == "put", readonly=action in _READS)
    try:
        if action in _EXPECT:
            return int(_ACTION_FUNCS[action](store, *words, expect=expect))
        return int(_ACTION_FUNCS[action](store, *words))
    finally:
        store.close()


def _id(key: str) -> str:
    """``key`` as a JSON string for the terminal: non-ASCII kept unless stdout cannot show it."""
    text = json.dumps(key, ensure_ascii=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):  # a lone surrogate, or a narrow terminal
        return json.dumps(key)
    return text


def _conflict(exc: ConflictError, expect: int) -> ValueError:
    """One clear line for a failed compare-and-set."""
    if exc.actual is None:
        found = "does not exist"
    elif expect == 0:
        found = f"already exists at version {exc.actual}"
    else:
        found = f"is at version {exc.actual}, not {expect}"
    return ValueError(f"{_id(exc.key)} {found} (--expect {expect}): nothing was written")


def _ls(store: Any) -> int:
    for key, version, doc in store.items_with_versions():
        print(f"{_id(key)}\tv{version}\t{len(json.dumps(doc))} bytes")
    return 0


def _get(store: Any, key: str) -> int:
    doc = store.get(key)
    if doc is None:
        raise KeyError(f"no document with id {key!r}")
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def _put(store: Any, key: str, text: str, *, expect: int | None = None) -> int:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the document is not JSON: {exc}") from None
    try:
        version = store.put(key, doc, expect_version=expect)
    except ConflictError as exc:
        raise _conflict(exc, expect or 0) from None
    print(f"{_id(key)} is now version {version}")
    return 0


def _rm(store: Any, key: str, *, expect: int | None = None) -> int:
    try:
        deleted = store.delete(key, expect_version=expect)
    except ConflictError as exc:
        raise _conflict(exc, expect or 0) from None
    if not deleted and expect != 0:
        raise KeyError(f"no document with id {key!r}")
    print(f"{_id(key)} deleted" if deleted else f"{_id(key)} does not exist: nothing deleted")
    return 0


def _compact(store: Any) -> int:
    store.compact()
    print("compacted")
    return 0


def _check(store: Any) -> int:
    report = store.check()
    fields = getattr(report, "__dataclass_fields__", {})
    parts = [f"{name}={getattr(report, name)}" for name in fields]
    print("ok: " + (" ".join(parts) if parts else str(report)))
    return 0


_ACTION_FUNCS: dict[str, Any] = {
    "ls": _ls, "get": _get, "put": _put, "rm": _rm, "compact": _compact, "check": _check,
}


def _run_or_keyerror(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except KeyError as exc:
        print(f"racefree store: error: {exc.args[0]}", file=sys.stderr)
        return 1


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "store",
        help="look into a document store: ls, get, put, rm, compact, check (or copy)",
        description=(
            "racefree store DIR ls | get ID | put ID JSON | rm ID | compact | check; "
            "racefree store copy SRC DST. DIR is a directory or a file:// or "
            "postgresql:// URL. Ids are printed as JSON strings. put and rm take "
            "--expect VERSION (write only if the stored version is VERSION; 0: the id "
            "must not exist), anywhere after DIR; -- ends the options."
        ),
    )
    parser.add_argument("location", metavar="DIR", help="the store (or 'copy')")
    parser.add_argument(
        "rest", nargs=argparse.REMAINDER, metavar="ACTION ...",
        help=f"one of {', '.join(_ACTIONS)} (default ls), then ID, or ID JSON for put",
    )
    parser.set_defaults(func=_run_or_keyerror)
