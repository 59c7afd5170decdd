"""The per-process state of :class:`~racefree.LockFile`: owners, waiters, the refresher.

One :class:`State` per lock file path in a process, shared by every
``LockFile`` instance on that path (so two instances exclude each other without
polling, and one owner is reentrant across them). The state keeps who holds
the lock (a thread or an asyncio task), who waits, the hold on disk and the
daemon thread that refreshes it. After ``fork()`` the child starts empty (L5).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import weakref

from racefree import _fork, _fs
from racefree.lock.api import async_waker, drop_one
from racefree.lockfile import disk as _disk

__all__ = [
    "Backoff",
    "Refresher",
    "State",
    "forget_inherited",
    "mark_held",
    "state_for",
]


class Backoff:
    """Poll delays: 1 ms doubling to 50 ms, each with jitter so waiters spread out.

    There is no kernel wake-up for a lock file another process removes, so a
    waiter for another process polls (a FileLock waiter blocks in the kernel
    instead and takes a released lock at once). Waiters in this process do not
    poll: they wait on the state's condition and are woken by the release.
    """

    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = 0.001

    def next(self, deadline: float | None) -> float:
        delay = self.delay * random.uniform(0.5, 1.0)  # jitter, not secrecy
        self.delay = min(self.delay * 2, 0.05)
        if deadline is not None:
            delay = min(delay, max(deadline - time.monotonic(), 0.0))
        return delay


class Refresher:
    """Keeps one hold fresh and notices when it is lost (L8), from a shared thread.

    Every ``stale_after / 3`` seconds the process's refresher thread touches
    the lock file through the holder's descriptor (a waiter on another host
    judges the lock by whether it is refreshed) and checks that the lock file
    is still ours. One daemon thread serves every hold of the process, so an
    acquisition does not pay for starting and joining a thread.
    """

    __slots__ = ("due", "hold", "interval")

    def __init__(self, hold: _disk.Hold, stale_after: float) -> None:
        self.hold = hold
        self.interval = stale_after / 3
        self.due = time.monotonic() + self.interval
        with _ticker.cond:
            _ticker.entries.add(self)
            _ticker.start()
            _ticker.cond.notify()

    def stop(self) -> None:
        """Stop refreshing. When it returns no refresh of this hold is running.

        Refreshes run under the ticker's lock, so the holder may close the
        descriptor right after: the refresher can never touch a reused one.
        """
        with _ticker.cond:
            _ticker.entries.discard(self)

    def tick(self, now: float) -> bool:
        """Refresh once (ticker lock held); False once the hold is found lost."""
        hold = self.hold
        try:
            _disk.refresh(hold)
            if not _disk.still_held(hold):
                hold.lost = True
                return False
        except OSError:
            # A transient error (an NFS server restarting): keep trying. If it
            # lasts, waiters elsewhere reclaim the lock after stale_after and
            # the next check, or the release, reports it lost.
            pass
        except Exception as exc:
            # Anything else is not transient: this hold is no longer refreshed, so
            # other hosts will judge it stale. The holder is told (``lost``, and
            # LockLost at release), and the thread lives on for the other holds.
            hold.failure = f"refreshing it failed: {exc!r}"
            hold.lost = True
            return False
        self.due = now + self.interval
        return True


class _Ticker:
    """The one refresher thread of a process, started on first use."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.entries: set[Refresher] = set()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name="racefree-lockfile-refresh", daemon=True
            )
            self.thread.start()

    def _run(self) -> None:
        with self.cond:
            while True:
                if not self.entries:
                    self.cond.wait()
                    continue
                first = min(self.entries, key=lambda e: e.due)
                now = time.monotonic()
                if first.due > now:
                    self.cond.wait(first.due - now)
                    continue
                if not first.tick(now):
                    self.entries.discard(first)


_ticker = _Ticker()


class State:
    """The state of one lock file in this process; fields change only under ``cond``."""

    __slots__ = ("__weakref__", "async_waiters", "cond", "depth", "hold", "last_lost",
                 "observer", "owner", "refresher")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.owner: object = None  # the owner holding, or acquiring the file
        self.depth = 0  # reentrant holds of ``owner``; 0 while it acquires the file
        self.hold: _disk.Hold | None = None
        self.refresher: Refresher | None = None
        self.observer = _disk.Observer()  # used by the acquiring owner only
        self.last_lost = False
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wake(self) -> None:
        """Let waiters of this process re-check (``cond`` held)."""
        self.cond.notify_all()
        waiters, self.async_waiters = self.async_waiters, []
        for loop, fut in waiters:
            async_waker(loop, fut)()


# States live as long as an instance refers to them, or a hold does (_held):
# a program that locks many distinct paths does not grow this for ever.
_registry: weakref.WeakValueDictionary[str, State] = weakref.WeakValueDictionary()
_held: set[State] = set()
_registry_lock = threading.Lock()
# (key, owner) -> holds a forked child inherited from its parent.
_inherited: dict[tuple[str, object], int] = {}


def _after_fork_child() -> None:
    """Start the child with nothing held and no one waiting (L5).

    The parent's lock file stays the parent's: its record names the parent's
    pid, and the child never removes it. A ``with`` block the parent entered
    before ``fork()`` may exit in the child: that release only forgets the hold.
    """
    global _registry_lock, _ticker
    _registry_lock = threading.Lock()
    _ticker = _Ticker()  # the parent's thread does not exist here, its lock may be held
    for key, state in _registry.items():
        if state.depth:
            k = (key, state.owner)
            _inherited[k] = _inherited.get(k, 0) + state.depth
        if state.hold is not None:
            # The child's copy of the holder's descriptor: closing it takes
            # nothing from the parent (there is no kernel lock on it).
            with contextlib.suppress(OSError):
                _fs.close(state.hold.fd)
    _registry.clear()
    _held.clear()


_fork.on_child(_after_fork_child)  # before any use in the child: see racefree._fork


def state_for(key: str) -> State:
    with _registry_lock:
        state = _registry.get(key)
        if state is None:
            state = _registry[key] = State()
        return state


def forget_inherited(key: str, owner: object) -> bool:
    """In a forked child: drop one hold the parent had at fork time; False if there is none."""
    with _registry_lock:
        return drop_one(_inherited, (key, owner))


def mark_held(state: State, held: bool) -> None:
    """Keep a held state alive while no instance refers to it (``state.cond`` held)."""
    if held:
        _held.add(state)
    else:
        _held.discard(state)
