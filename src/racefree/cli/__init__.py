"""The ``racefree`` command line.

Each subcommand lives in a module of this package that defines
``add_parser(subparsers) -> None`` (which registers the subcommand and sets
``func`` on its parser with ``set_defaults(func=...)``; ``func(args)`` returns
the exit code). Errors that reach here are printed as one clear line on
stderr with a non-zero exit code, never a traceback; connection errors of the
PostgreSQL driver too. No password reaches stderr: every message is scrubbed
of the passwords found (by parsing) in the command's URLs and ``PGPASSWORD``.

The top layer: it may import every other layer.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from racefree._errors import RacefreeError

# The modules that define subcommands, in the order ``--help`` lists them.
_COMMANDS = ("demo", "torture", "crashcheck", "check", "log", "store")


class _Version(argparse.Action):
    """``--version``: the installed package's version, read only when asked.

    (Read at parser build time, a copy of racefree run from a source tree
    without package metadata could not run any command.)
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print racefree's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import racefree

        print(f"{parser.prog} {racefree.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="racefree",
        description="File-based storage that never loses an update.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("racefree: interrupted", file=sys.stderr)
        return 130
    except (RacefreeError, OSError, ValueError, TypeError, ImportError) as exc:
        _fail(args.command, str(exc), argv)
        return 1
    except Exception as exc:
        if not _is_driver_error(exc):
            raise
        _fail(args.command, _first_line(exc), argv)
        return 1


def _is_driver_error(exc: BaseException) -> bool:
    """An error of the PostgreSQL driver (a refused connection, a wrong password...)."""
    module = type(exc).__module__
    return module == "psycopg" or module.startswith(("psycopg.", "psycopg_pool"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(command: str, message: str, argv: Sequence[str] | None) -> None:
    """Print the error as one line, without any password the command was given."""
    from racefree.pg.driver import redact, secrets_in

    secrets: list[str] = []
    for arg in sys.argv[1:] if argv is None else argv:
        secrets += secrets_in(arg)
    if os.environ.get("PGPASSWORD"):
        secrets.append(os.environ["PGPASSWORD"])
    line = redact(" ".join(message.split()), secrets)
    print(f"racefree {command}: error: {line}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
