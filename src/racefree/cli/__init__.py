"""The ``racefree`` command line.

Each subcommand lives in a module of this package that defines
``add_parser(subparsers) -> None`` (which registers the subcommand and sets
``func`` on its parser with ``set_defaults(func=...)``; ``func(args)`` returns
the exit code). Errors that reach here are printed as one clear line on
stderr with a non-zero exit code, never a traceback.

The top layer: it may import every other layer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from racefree._errors import RacefreeError

# The modules that define subcommands, in the order ``--help`` lists them.
_COMMANDS = ("demo", "torture", "check", "log", "store")


def build_parser() -> argparse.ArgumentParser:
    import racefree

    parser = argparse.ArgumentParser(
        prog="racefree",
        description="File-based storage that never loses an update.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {racefree.__version__}"
    )
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
    except (RacefreeError, OSError, ValueError, TypeError) as exc:
        print(f"racefree {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
