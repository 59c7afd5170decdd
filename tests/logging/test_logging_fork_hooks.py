"""Log handlers in an at-fork hook that runs before racefree's own (test_lock_fork_hooks.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.forkhooks import run_script

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork"),
]


def test_earlier_child_hook_logs_after_the_parents_rotation(tmp_path: Path) -> None:
    """A hook registered before racefree logs through a handler the parent made, forked
    while a parent thread is rotating (holding the write lock, mid-record): the child's
    record must neither be dropped (the parent's "record in progress" state) nor written
    while the parent holds the lock; every record is kept exactly once.
    """
    body = """
    import glob, logging, threading  # logging first: its own fork hook resets handler locks

    def record(msg):
        return logging.makeLogRecord({"msg": msg, "levelno": logging.INFO})

    def hook():
        handler.handle(record("from-child"))

    os.register_at_fork(after_in_child=hook)
    from racefree.logging import RotatingFileHandler
    handler = RotatingFileHandler(sys.argv[1], maxBytes=60, backupCount=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    inside, go = threading.Event(), threading.Event()

    def rotator(source, dest):
        inside.set()
        go.wait()
        os.rename(source, dest)

    handler.rotator = rotator
    handler.handle(record("a" * 30))
    t = threading.Thread(target=handler.handle, args=(record("b" * 40),))  # 31 + 41 > 60: rotates
    t.start()
    inside.wait()
    say(f"exit {fork_and_wait(lambda: 0, after_fork=lambda pid: go.set())}")
    t.join()
    handler.close()
    lines = []
    for name in sorted(glob.glob(sys.argv[1] + "*")):
        with open(name) as f:
            lines += f.read().splitlines()
    say(",".join(sorted(line[:10] for line in lines)))
    """
    code, out = run_script(body, str(tmp_path / "app.log"))
    assert (code, out) == (0, ["exit 0", "aaaaaaaaaa,bbbbbbbbbb,from-child"])
