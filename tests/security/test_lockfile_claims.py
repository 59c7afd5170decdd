"""Another local user squats on a LockFile's claim names in a shared directory.

The lock-file protocol removes a lock file by first claiming its inode under a name fixed
by the inode number (``.P.<ino>.claim<g>``, ``racefree.lockfile.disk``); an existing claim
is a claimer at work, passed over only once it stood for ``stale_after``. Another user who
may create entries there could make that name first, again and again with a new inode so
that it never looks old, and ``release()`` waited for ever. A file at a claim name that the
trust rule does not trust is no claimer's: it is passed over at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from helpers.hostile import NOBODY, attacker, owner, shared_dir

import racefree
from racefree.lockfile.disk import _claim_name

PRECREATE = "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL))"


def test_another_users_file_at_a_claim_name_does_not_stall_release() -> None:
    with shared_dir("tmp") as shared:
        _squat_then_release(shared)


def _squat_then_release(shared: Path) -> None:
    path = shared / "job.lock"
    lock = racefree.LockFile(path, stale_after=60)
    held, planted = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:  # a LockFile hold is released by the thread that took it
        try:
            with lock:
                held.set()
                planted.wait(30)
        except BaseException as exc:
            errors.append(exc)

    release = threading.Thread(target=holder, daemon=True)
    release.start()
    assert held.wait(10)
    claim = Path(_claim_name(str(path), os.stat(path).st_ino, 1))
    attacker(PRECREATE, str(claim))
    assert owner(claim) == NOBODY  # the squat is in place
    planted.set()
    release.join(10)  # bounded: without the rule it waits stale_after (60 s) for the squat
    assert not release.is_alive() and errors == []
    assert not path.exists()  # released: the lock file removed
    assert owner(claim) == NOBODY  # the squatter's file left alone
    with lock:  # and the path works again
        assert path.exists()
