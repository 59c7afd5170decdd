"""PgLock in an at-fork hook that runs before racefree's own (see test_lock_fork_hooks.py)."""

from __future__ import annotations

import os

import pytest
from helpers.forkhooks import run_script
from helpers.pgserver import unique_name

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork"),
]


def test_earlier_child_hook_does_not_inherit_the_parents_hold(
    url: str, request: pytest.FixtureRequest
) -> None:
    """A hook registered before racefree tries the PgLock its parent holds: busy (a session
    of its own, refused by the server), not the parent's hold (same thread id in the child)
    nor the parent's session.
    """
    body = """
    def hook():
        try:
            held.acquire_nowait()
        except racefree.WouldBlock:
            say("child: busy")
        else:
            say("child: acquired")
            held.release()
        say(f"child: locked={held.locked}")
        held.close()

    os.register_at_fork(after_in_child=hook)
    import racefree
    held = racefree.open_lock(sys.argv[1], sys.argv[2])
    held.acquire()
    say(f"exit {fork_and_wait(lambda: 0)}")
    say(f"parent: locked={held.locked} lost={held.lost}")
    held.release()
    held.close()
    """
    code, out = run_script(body, url, unique_name(request))
    assert (code, out) == (
        0, ["child: busy", "child: locked=False", "exit 0", "parent: locked=True lost=False"]
    )
