"""LockFile in at-fork hooks that run before racefree's own (see test_lock_fork_hooks.py)."""

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
held = racefree.LockFile(sys.argv[1])
held.acquire()
say(f"exit {{fork_and_wait(lambda: 0)}}")
say(f"parent: token={{held.token}}")
held.release()
"""


@pytest.mark.parametrize("make", ["held", "racefree.LockFile(sys.argv[1])"])
def test_earlier_child_hook_does_not_inherit_the_parents_hold(tmp_path: Path, make: str) -> None:
    """A hook registered before racefree tries the LockFile its parent holds: busy, not a
    reentrant hold inherited from the parent's state (same thread id in the child).
    """
    code, out = run_script(_CHILD_TRIES.format(make=make), str(tmp_path / "x.lock"))
    assert (code, out) == (0, ["child: busy", "child: locked=False", "exit 0", "parent: token=1"])


def test_lock_file_taken_by_an_earlier_hook_survives_racefrees_own_hook(tmp_path: Path) -> None:
    """The child's hook takes the lock file; racefree's later child hook keeps that hold."""
    body = """
    holder = []

    def hook():
        import racefree
        holder.append(racefree.LockFile(sys.argv[1]))
        holder[0].acquire(timeout=10)

    os.register_at_fork(after_in_child=hook)
    import racefree
    other = racefree.LockFile(sys.argv[2])
    other.acquire()  # the process's lock-file state is in use before the fork

    def child():
        lock = holder[0]
        ok = lock.held_by_me and lock.token == 1
        lock.release()
        return 0 if ok else 1

    say(f"exit {fork_and_wait(child)}")
    other.release()
    """
    code, out = run_script(body, str(tmp_path / "x.lock"), str(tmp_path / "other.lock"))
    assert (code, out) == (0, ["exit 0"])
    assert not (tmp_path / "x.lock").exists()
