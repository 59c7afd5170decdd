"""``PgLock``: the :class:`racefree.FileLock` API on a PostgreSQL session advisory lock.

A session advisory lock is PostgreSQL's counterpart of ``flock(2)``: it
belongs to one server session and the server drops it when that session ends,
however it ends (the client was killed, its machine died and TCP keepalive
noticed, or an administrator ran ``pg_terminate_backend``). There is no lease
that can run out under a paused holder (pitfall L8). What can happen is that
the server ends the session while the holder still runs (network partition,
terminated backend): the holder is then told (``lock.lost``, and
:class:`LockLost` at release), and the fencing ``token`` it got at acquisition
lets the PostgreSQL store reject its late writes (Kleppmann 2016).

Each ``PgLock`` instance owns one dedicated connection (not pooled: the lock
lives exactly as long as that session), opened at first use and kept until
:meth:`PgLock.close`. Inside a process the instance is shared safely by threads
and asyncio tasks like a ``FileLock`` (owner = task, else thread; reentrant per
owner, L3); two instances are two sessions and exclude each other through the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from typing import Any

from racefree import _fork
from racefree._errors import LockLost, LockTimeout, WouldBlock
from racefree.lock.api import Acquired, LockAPI, async_waker, drop_one, refuse_coroutine_caller
from racefree.lock.registry import check_timeout, current_owner
from racefree.pg import driver as _pg
from racefree.pg.session import Attempt, Session, cancel_statement

__all__ = ["FenceToken", "PgLock"]


class FenceToken(int):
    """A fencing token: an ``int`` that also carries the name of the lock it came from.

    Tokens come from one sequence and grow with every acquisition of any
    lock of the database, so a later holder of a lock always has a larger token
    than an earlier one. Pass it as ``fence=`` to a PostgreSQL store's writes.
    """

    name: str

    def __new__(cls, value: int, name: str) -> FenceToken:
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (FenceToken, (int(self), self.name))

    def __repr__(self) -> str:
        return f"FenceToken({int(self)}, {self.name!r})"


class PgLock(LockAPI):
    """A lock on a PostgreSQL session advisory lock, with the ``FileLock`` API.

    ``url`` is a ``postgresql://`` URL; ``name`` any string (it is hashed to
    the 64-bit advisory key: sha256, so two names collide with negligible
    probability). ``shared=True`` takes ``pg_advisory_lock_shared``: many shared
    holders or one exclusive holder, across every client of the database.
    ``timeout`` is the default for :meth:`acquire`: None waits forever, 0 tries once.

    Waiting happens in the server (``pg_advisory_lock`` with ``lock_timeout``
    for a timeout), never by polling: a released lock is granted at once (L4).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        shared: bool = False,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"lock name must be a str, not {type(name).__name__}")
        self._url = _pg.parse_url(url)
        self._name = name
        self._shared = bool(shared)
        self._timeout = check_timeout(timeout)
        self._connect_timeout = connect_timeout
        self._path = f"{self._url.display}#{name}"
        self._mutex = threading.Lock()
        self._holders: dict[object, int] = {}
        self._inherited: dict[object, int] = {}
        self._busy = False  # one owner is talking to the server; the others wait
        self._waiters: list[Any] = []
        self._session = Session(self._url, name, self._shared, connect_timeout)
        self._token: FenceToken | None = None
        self._lost = False
        _instances.add(self)

    # -- properties (``path`` and ``timeout``: LockAPI) ------------------------
    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def shared(self) -> bool:
        """True for a reader (shared) lock."""
        return self._shared

    @property
    def locked(self) -> bool:
        """Whether any owner in this process holds it through this instance."""
        _after_fork()
        return bool(self._holders)

    @property
    def held_by_me(self) -> bool:
        """Whether the current owner (this asyncio task, else this thread) holds it."""
        _after_fork()
        return current_owner() in self._holders

    @property
    def token(self) -> FenceToken | None:
        """The fencing token of the current hold (None when not held).

        It grows with every acquisition: give it as ``fence=`` to the
        PostgreSQL store so that a holder that lost the lock cannot overwrite
        what a later holder wrote.
        """
        _after_fork()
        return self._token if self._holders else None

    @property
    def lost(self) -> bool:
        """True if the server ended the session that held the lock (so it is held no more).

        Checked without a round trip (a zero-timeout poll of the idle socket):
        the server's FATAL message, or TCP keepalive's verdict, shows up there.
        Stays True until the next successful acquire.
        """
        _after_fork()
        with self._mutex:
            if not self._lost and self._holders and not self._busy:
                self._lost = self._session.dead()
            return self._lost

    def __repr__(self) -> str:
        kind = "shared" if self._shared else "exclusive"
        return f"<PgLock {self._path!r} {kind} timeout={self._timeout}>"

    def close(self) -> None:
        """Close the lock's connection. A lock still held is released by the server."""
        _after_fork()
        with self._mutex:
            self._holders.clear()
            self._token = None
            self._session.discard()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: modules may be gone
            self._session.discard()

    # -- in-process admission -----------------------------------------------
    def _admit(self, owner: object) -> bool | None:
        """True if now held, None if this owner must take the server lock, False to wait.

        On None the instance is marked busy (``_mutex`` held).
        """
        n = self._holders.get(owner)
        if n is not None:
            self._holders[owner] = n + 1
            return True
        if self._busy:
            return False
        if self._holders:
            # A reader joins the readers of this instance, but only while their
            # session still holds the lock: once the server ended it, a writer may
            # hold it, and joining would make two holders (L8). It waits instead,
            # until the last reader's release (which reports the loss) wakes it.
            if self._shared and not self._lost:
                self._lost = self._session.dead()
            if self._shared and not self._lost:
                self._holders[owner] = 1
                return True
            return False
        self._busy = True
        return None

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def _record(self, owner: object, token: int) -> None:
        with self._mutex:
            self._busy = False
            self._holders[owner] = 1
            self._token = FenceToken(token, self._name)
            self._lost = False
            self._wake_all()  # readers of this instance join; writers re-check

    def _leave_queue(self, wake: Any) -> None:
        """A waiter gave up (timeout, error, cancellation): its wake-up leaves the queue."""
        with self._mutex:
            if wake is not None and wake in self._waiters:
                self._waiters.remove(wake)

    def _unbusy(self) -> None:
        with self._mutex:
            self._busy = False
            self._wake_all()

    # -- acquire / release (threads) ---------------------------------------
    def acquire(self, timeout: float | None = None) -> Acquired[PgLock]:
        """Wait until this owner holds the lock; returns an ``Acquired`` (as FileLock's).

        ``timeout`` (seconds) overrides the constructor's; None means the
        constructor's, whose None waits forever; 0 tries once. On timeout it
        raises :class:`LockTimeout` and nothing is held. A lost connection
        raises :class:`racefree.ConnectionLost` and nothing is held (the server
        drops a session's locks with it). Straight from an ``async def`` it
        raises ``TypeError`` before taking anything: use :meth:`acquire_async`.
        """
        refuse_coroutine_caller(self._path)
        t = self._timeout if timeout is None else check_timeout(timeout)
        self._acquire(t, blocking=True)
        return Acquired(self)

    def acquire_nowait(self) -> Acquired[PgLock]:
        """Take the lock without waiting, or raise :class:`WouldBlock` (nothing held)."""
        self._acquire(0, blocking=False)
        return Acquired(self)

    def _acquire(self, timeout: float | None, *, blocking: bool) -> None:
        _after_fork()
        owner = current_owner()
        deadline = None if timeout is None else time.monotonic() + timeout
        wake = None
        try:
            while True:
                with self._mutex:
                    verdict = self._admit(owner)
                    if verdict is True:
                        return
                    if verdict is None:
                        break
                    if not blocking:
                        raise WouldBlock(self._path)
                    gate = threading.Lock()
                    gate.acquire()
                    wake = gate.release
                    self._waiters.append(wake)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LockTimeout(self._path, timeout)
                if not gate.acquire(timeout=-1 if remaining is None else remaining):
                    raise LockTimeout(self._path, timeout)
                wake = None
        except BaseException:
            self._leave_queue(wake)
            raise
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            token = self._session.lock(remaining, not blocking or remaining == 0, None)
        except BaseException:
            self._unbusy()
            raise
        if token == 0:
            self._unbusy()
            if not blocking:
                raise WouldBlock(self._path)
            raise LockTimeout(self._path, timeout)
        self._record(owner, token)

    def release(self) -> None:
        """Drop one hold of the current owner; the last one unlocks in the server.

        Raises :class:`LockLost` if the server had ended the session meanwhile
        (the lock was free for others since then; nothing is held now), and
        ``RuntimeError`` if the current owner holds nothing. In a forked child,
        releasing a hold the parent had at fork time only forgets it (L5).
        """
        _after_fork()
        owner = current_owner()
        lost_with_others = False
        with self._mutex:
            n = self._holders.get(owner)
            if n is None:
                if drop_one(self._inherited, owner):
                    return
                raise RuntimeError(
                    f"release of {self._path}: the lock is not held by this thread or task"
                )
            if n > 1:
                self._holders[owner] = n - 1
                return
            del self._holders[owner]
            if self._holders:
                # The other readers keep the session; if the server ended it, this
                # reader's hold was lost too, and it is told now, not only the last (L8).
                if not self._lost:
                    self._lost = self._session.dead()
                if not self._lost:
                    return
                lost_with_others = True
            else:
                self._busy = True
                self._token = None
        if lost_with_others:
            raise LockLost(self._path, "the server ended the session that held it")
        reason = ""
        try:
            reason = self._session.unlock()
        finally:
            with self._mutex:
                if reason:
                    self._lost = True
                self._busy = False
                self._wake_all()
        if reason:
            raise LockLost(self._path, reason)

    # -- asyncio ------------------------------------------------------------
    async def acquire_async(self, timeout: float | None = None) -> Acquired[PgLock]:
        """Wait until the current task holds the lock, without blocking the event loop.

        The same guarantees as :meth:`acquire`. The server wait runs in a worker
        thread; cancelling the waiting task cancels that statement in the
        server (a cancel request) and, if the grant raced the cancel, the worker
        closes the session: a cancelled or timed-out waiter holds nothing (L9).
        """
        _after_fork()
        t = self._timeout if timeout is None else check_timeout(timeout)
        owner = current_owner()
        loop = asyncio.get_running_loop()
        deadline = None if t is None else loop.time() + t
        wake = None
        try:
            while True:
                with self._mutex:
                    verdict = self._admit(owner)
                    if verdict is True:
                        return Acquired(self)
                    if verdict is None:
                        break
                    fut: asyncio.Future[None] = loop.create_future()
                    wake = async_waker(loop, fut)
                    self._waiters.append(wake)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise LockTimeout(self._path, t)
                try:
                    await asyncio.wait_for(fut, remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    raise LockTimeout(self._path, t) from None
                wake = None
        except BaseException:
            self._leave_queue(wake)
            raise
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        attempt = Attempt()
        done: asyncio.Future[None] = loop.create_future()
        attempt.notify = async_waker(loop, done)
        try:
            threading.Thread(
                target=self._server_lock_worker,
                args=(remaining, attempt, t),
                name="racefree-pglock-wait",
                daemon=True,
            ).start()
        except BaseException:
            self._unbusy()
            raise
        try:
            await asyncio.shield(done)
        except BaseException:
            self._abandon(attempt)
            raise
        if attempt.error is not None:
            raise attempt.error
        if attempt.token is None:  # pragma: no cover - the worker sets one or the other
            raise RuntimeError("lock worker ended without a result")
        self._record(owner, attempt.token)
        return Acquired(self)

    def _server_lock_worker(
        self, timeout: float | None, attempt: Attempt, reported: float | None
    ) -> None:
        token = 0
        try:
            token = self._session.lock(timeout, timeout == 0, attempt)
            err: BaseException | None = None
            if token == 0:
                err = LockTimeout(self._path, reported)
        except BaseException as exc:  # handed to the waiting task
            err = exc
        with attempt.mutex:
            abandoned = attempt.abandoned
            attempt.done = True
            if not abandoned:
                attempt.error = err
                attempt.token = token if err is None else None
        if abandoned:
            # The task gave up: a grant that raced its cancel is handed back by
            # closing the session (nobody of this process holds the lock while
            # busy, so that takes nothing from anyone), then the others may go.
            if err is None:
                self._session.discard()
            self._unbusy()
            return
        if err is not None:
            self._unbusy()
        attempt.notify()

    def _abandon(self, attempt: Attempt) -> None:
        """The waiting task was cancelled: stop the server wait, or undo a grant."""
        with attempt.mutex:
            attempt.abandoned = True
            finished = attempt.done
            waiting = attempt.waiting
            conn = attempt.conn
        if finished:
            # The worker finished before the task saw it: undo its result here.
            if attempt.error is None and attempt.token is not None:
                self._session.discard()
                self._unbusy()
            return
        if waiting and conn is not None:
            threading.Thread(
                target=cancel_statement, args=(attempt,), name="racefree-pglock-cancel",
                daemon=True,
            ).start()


_instances: weakref.WeakSet[PgLock] = weakref.WeakSet()


def _after_fork() -> None:
    if _fork.maybe_child:
        _fork.check()  # a forked child resets every lock before it uses one (L5)


def _after_fork_child() -> None:
    """The child holds nothing and never touches the parent's session (L5).

    It forgets the inherited connection (see ``Session.forget``) and opens its
    own session when it locks; a ``with`` block entered before the fork
    can still exit in the child (its release only forgets the hold).
    """
    for lock in list(_instances):
        lock._mutex = threading.Lock()
        for owner, n in lock._holders.items():
            lock._inherited[owner] = lock._inherited.get(owner, 0) + n
        lock._holders = {}
        lock._busy = False
        lock._waiters = []
        lock._session.forget()
        lock._token = None
        lock._lost = False


_fork.on_child(_after_fork_child)  # before any use in the child: see racefree._fork
