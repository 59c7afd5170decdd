"""Fork safety for every layer: a forked child resets racefree's state before its first use.

Each layer keeps per-process state (open descriptors that share the parent's
open file descriptions, mutexes another thread may have held at the fork,
who holds which lock) that a child must drop before it uses any of it (L5).
The layers register their reset here (:func:`on_child`) instead of with
``os.register_at_fork``, because ``after_in_child`` hooks run in the order
they were registered: a hook registered *before* racefree was imported runs
before racefree's own, and if it took a lock it would find the parent's state
(a registry mutex held since the fork, the parent's kernel lock shared through
an inherited descriptor, so "acquired" while the parent holds it). So:

- no racefree hook holds a lock across the fork (a hook registered earlier
  runs its ``before`` after racefree's, and may use racefree in the parent);
- from just before a fork until the child has reset, :data:`maybe_child` is
  true; every entry point of a layer checks it (one attribute read on a fast
  path) and calls :func:`check`, which in a child that has not reset yet runs
  every registered reset at once, whichever hook or call gets there first;
- racefree's own ``after_in_child`` hook calls :func:`check` too, so a child
  that never uses racefree still closes its copies of the parent's descriptors.

A leaf module: it imports nothing from racefree.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["check", "maybe_child", "on_child"]

#: True while a fork may have happened that this process has not reset after:
#: from a ``before`` hook until the fork returns in the parent, and in a child
#: until :func:`check` has run there. Read it, never write it, outside this module.
maybe_child = False

_pid = os.getpid()
_resets: list[Callable[[], None]] = []
# Forks in flight in this process (several threads may fork at once).
_forking = 0
_forking_lock = threading.Lock()


def on_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in a forked child before racefree's state is used there.

    Resets run in the order they were registered, once per child, from the
    first racefree call in the child or from racefree's ``after_in_child``
    hook, whichever comes first. A reset must not raise for state it finds
    half-updated (another thread of the parent may have been mid-way).
    """
    _resets.append(reset)


def check() -> None:
    """In a forked child that has not reset yet, reset every layer now; else nothing.

    One ``getpid()``; call it where :data:`maybe_child` is true, or on a path
    that is slow anyway.
    """
    global _pid, _forking, _forking_lock, maybe_child
    pid = os.getpid()
    if pid == _pid:
        return
    # First, so that a reset that calls back into racefree does not reset again.
    _pid = pid
    # Another thread of the parent may have held it (forking too): it does not exist here.
    _forking_lock = threading.Lock()
    _forking = 0
    error: BaseException | None = None
    for reset in list(_resets):
        try:
            reset()
        except BaseException as exc:  # every layer must still reset; the first error is raised
            if error is None:
                error = exc
    maybe_child = False
    if error is not None:
        raise error


def _before() -> None:
    global _forking, maybe_child
    with _forking_lock:
        _forking += 1
        maybe_child = True


def _after_in_parent() -> None:
    global _forking, maybe_child
    with _forking_lock:
        _forking -= 1
        maybe_child = _forking > 0


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=check)
