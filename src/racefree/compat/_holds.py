"""What the compat locks share: holds counted per owner, and the peers' argument checks.

A compat lock object wraps one racefree lock (or two, for reader-writer
locks). racefree counts holds per owner (the asyncio task, else the thread)
and per lock file; the peers count per object (filelock: per object and
thread). :class:`Holds` keeps each compat object's own count per owner, which
is what ``lock_counter``, ``is_locked`` and fasteners' non-counting
``acquire`` are about.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from decimal import Decimal
from numbers import Real
from typing import Any

from racefree import _fork

__all__ = ["Holds", "check_blocking", "check_poll_interval", "seconds", "wait_for"]


class Holds:
    """How many holds each owner (thread or task) took through one compat object.

    ``modes`` is free for the object's own per-owner state (a reader-writer
    lock keeps which mode each owner holds there). A forked child starts with
    none of it, as racefree's own state (L5): a release there is a no-op.
    """

    __slots__ = ("__weakref__", "_counts", "_mutex", "modes")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._counts: dict[object, int] = {}
        self.modes: dict[object, Any] = {}
        _LIVE.add(self)

    def _locked(self) -> threading.Lock:
        if _fork.maybe_child:
            _fork.check()  # in a forked child, the mutex is replaced before it is used
        return self._mutex

    def count(self, owner: object) -> int:
        with self._locked():
            return self._counts.get(owner, 0)

    def total(self) -> int:
        with self._locked():
            return sum(self._counts.values())

    def owners(self) -> list[object]:
        with self._locked():
            return list(self._counts)

    def add(self, owner: object) -> None:
        with self._locked():
            self._counts[owner] = self._counts.get(owner, 0) + 1

    def drop(self, owner: object) -> None:
        with self._locked():
            n = self._counts[owner] - 1
            if n:
                self._counts[owner] = n
            else:
                del self._counts[owner]
                self.modes.pop(owner, None)


_LIVE: weakref.WeakSet[Holds] = weakref.WeakSet()


def _after_fork_child() -> None:
    for holds in list(_LIVE):
        holds._mutex = threading.Lock()
        holds._counts = {}
        holds.modes = {}


_fork.on_child(_after_fork_child)


def finished_task_owners(holds: Holds) -> list[asyncio.Task[object]]:
    """Owners that are asyncio tasks which have finished (they can never release)."""
    return [o for o in holds.owners() if isinstance(o, asyncio.Task) and o.done()]


def seconds(name: str, value: object) -> float:
    """A duration as the peers take it: a real number (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (Real, Decimal)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def wait_for(timeout: float) -> float | None:
    """filelock's timeout as racefree's: negative or infinite waits forever (None); NaN raises."""
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds, not nan")
    if timeout < 0 or math.isinf(timeout):
        return None
    return timeout


def check_blocking(blocking: object) -> bool:
    if not isinstance(blocking, bool):
        raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
    return blocking


def check_poll_interval(value: object) -> None:
    """Validated as the peer does, then ignored: racefree waits in the kernel, never polls."""
    if value is None:
        return
    interval = seconds("poll_interval", value)
    if interval < 0 or not math.isfinite(interval):
        raise ValueError(f"poll_interval must be finite and non-negative, not {interval!r}")
