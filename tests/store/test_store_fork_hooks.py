"""Store in an at-fork hook that runs before racefree's own (see test_lock_fork_hooks.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.forkhooks import run_script

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork"),
]


def test_earlier_child_hook_writes_after_the_parents_writer(tmp_path: Path) -> None:
    """A hook registered before racefree writes to a store the parent opened, forked while a
    parent thread is inside ``update`` (holding the store's mutex and its write lock): the
    child must not hang on the mutex, nor write through the parent's lock while the parent
    holds it; its put lands after the parent's update, and both are kept.
    """
    body = """
    import json, threading

    def hook():
        store.put("child", {"n": 1})

    os.register_at_fork(after_in_child=hook)
    import racefree
    store = racefree.Store(sys.argv[1])
    store.put("a", {"n": 0})
    inside, go = threading.Event(), threading.Event()

    def fn(doc):
        inside.set()
        go.wait()
        return {"n": doc["n"] + 1}

    t = threading.Thread(target=store.update, args=("a", fn))
    t.start()
    inside.wait()
    say(f"exit {fork_and_wait(lambda: 0, after_fork=lambda pid: go.set())}")
    t.join()
    say(json.dumps([store.get(k) for k in ("a", "child")] + [store.version("a")]))
    store.close()
    """
    code, out = run_script(body, str(tmp_path / "store"))
    assert (code, out) == (0, ["exit 0", '[{"n": 1}, {"n": 1}, 2]'])
