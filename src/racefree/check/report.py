"""What ``racefree check`` found about one file, and where it may repair.

:class:`Found` is one line of the report. :func:`not_held` says why a repair
may not write in a directory: repairs (a torn tail cut, a salvage and its copy
aside, a store's recovery) write only where nobody but the caller or root can
change anything under them (``racefree._trust.check_held``), so that no other
user can turn racefree's writes towards another file or directory.
"""

from __future__ import annotations

import dataclasses
import os

from racefree import _trust
from racefree._errors import UnsafePathError

__all__ = ["Found", "not_held"]


@dataclasses.dataclass
class Found:
    """One thing ``check`` found: what it is, whether it is whole, and the details."""

    path: str
    kind: str  # "store" | "log" | "json" | "lock" | "temp" | "skipped"
    ok: bool
    detail: str
    repaired: bool = False
    lost: list[str] = dataclasses.field(default_factory=list)  #: what a salvage dropped


def not_held(directory: str | os.PathLike[str]) -> str | None:
    """Why a repair may not write in ``directory`` (None: it may).

    The reason is the refusal of ``_trust.check_held``: the first directory
    from ``/`` down that another user owns, or that others may change without
    the sticky bit. Nothing is written then.
    """
    try:
        _trust.check_held(directory, "repair in")
    except UnsafePathError as exc:
        return exc.reason
    return None
