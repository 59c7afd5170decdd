"""FileLock in at-fork hooks that run before racefree's own, in either order of registration.

``after_in_child`` hooks run in the order they were registered, so a hook
registered before ``import racefree`` runs in the child before racefree has
reset its state; ``before`` hooks run in reverse order, so such a hook's
``before`` runs after racefree's. Either may take a lock (filelock's fork
tests do). Each test runs a fresh interpreter (see ``helpers/forkhooks.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.forkhooks import run_script

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork"),
]

_CHILD_TRIES = """
def hook():
    import racefree
    lock = {make}
    try:
        lock.acquire_nowait()
    except racefree.WouldBlock:
        say("child: busy")
    else:
        say("child: acquired")
        lock.release()
    say(f"child: locked={{lock.locked}}")

os.register_at_fork(after_in_child=hook)
import racefree
held = racefree.FileLock(sys.argv[1])
held.acquire()
say(f"exit {{fork_and_wait(lambda: 0)}}")
"""


def test_earlier_child_hook_with_a_new_instance_sees_the_parents_lock(tmp_path: Path) -> None:
    """A hook registered before racefree takes a new FileLock in the child: it must not
    hang on the registry lock that racefree's before-fork hook held, and must find the lock
    busy (the parent holds it).
    """
    code, out = run_script(
        _CHILD_TRIES.format(make="racefree.FileLock(sys.argv[1])"), str(tmp_path / "x.lock")
    )
    assert (code, out) == (0, ["child: busy", "child: locked=False", "exit 0"])


def test_earlier_child_hook_with_the_parents_instance_holds_nothing(tmp_path: Path) -> None:
    """The same with the instance the parent holds through: the child must not inherit the
    hold (the parent's entry, reentrant for the forking thread's id) nor lock through the
    parent's open file description (flock would grant it: same description).
    """
    code, out = run_script(_CHILD_TRIES.format(make="held"), str(tmp_path / "x.lock"))
    assert (code, out) == (0, ["child: busy", "child: locked=False", "exit 0"])


def test_lock_taken_by_an_earlier_hook_survives_racefrees_own_hook(tmp_path: Path) -> None:
    """A hook registered before racefree takes the lock in the child; racefree's own child
    hook runs after it and must keep that hold: the parent cannot take the lock until the
    child releases it.
    """
    body = """
    r, w = os.pipe()
    r2, w2 = os.pipe()
    holder = []

    def hook():
        import racefree
        holder.append(racefree.FileLock(sys.argv[1]))
        holder[0].acquire(timeout=10)

    os.register_at_fork(after_in_child=hook)
    import racefree
    racefree.FileLock(sys.argv[2]).acquire()  # the registry is in use before the fork

    def child():
        lock = holder[0]
        os.write(w, b"1" if lock.held_by_me else b"0")
        os.read(r2, 1)  # the parent has tried
        lock.release()
        return 0

    def parent(pid):
        say(f"child holds: {os.read(r, 1) == b'1'}")
        try:
            racefree.FileLock(sys.argv[1]).acquire_nowait()
            say("parent: acquired")
        except racefree.WouldBlock:
            say("parent: busy")
        os.write(w2, b"x")

    say(f"exit {fork_and_wait(child, after_fork=parent)}")
    after = racefree.FileLock(sys.argv[1])
    after.acquire(timeout=10)
    say("parent: acquired after the child")
    after.release()
    """
    code, out = run_script(body, str(tmp_path / "x.lock"), str(tmp_path / "other.lock"))
    assert (code, out) == (
        0,
        ["child holds: True", "parent: busy", "exit 0", "parent: acquired after the child"],
    )


def test_earlier_before_hook_can_take_a_lock_in_the_parent(tmp_path: Path) -> None:
    """A hook registered before racefree runs its ``before`` after racefree's: taking a
    FileLock there (a new file) must not deadlock on a lock racefree holds across the fork;
    the child does not inherit the hold, the parent keeps it.
    """
    body = """
    taken = []

    def before():
        lock = racefree.FileLock(sys.argv[1])
        lock.acquire(timeout=10)
        taken.append(lock)

    os.register_at_fork(before=before)
    import racefree
    racefree.FileLock(sys.argv[2]).acquire()  # the registry is in use before the fork

    def child():
        lock = taken[0]
        return 0 if not lock.locked and not lock.held_by_me else 1

    say(f"exit {fork_and_wait(child)}")
    say(f"parent holds: {taken[0].held_by_me}")
    """
    code, out = run_script(body, str(tmp_path / "a.lock"), str(tmp_path / "b.lock"))
    assert (code, out) == (0, ["exit 0", "parent holds: True"])


def test_later_child_hook_sees_a_reset_registry(tmp_path: Path) -> None:
    """The usual order (hook registered after racefree): the child starts clean as before."""
    body = """
    import racefree
    held = racefree.FileLock(sys.argv[1])
    held.acquire()

    def hook():
        try:
            held.acquire_nowait()
            say("child: acquired")
        except racefree.WouldBlock:
            say("child: busy")

    os.register_at_fork(after_in_child=hook)
    say(f"exit {fork_and_wait(lambda: 0)}")
    """
    code, out = run_script(body, str(tmp_path / "x.lock"))
    assert (code, out) == (0, ["child: busy", "exit 0"])
