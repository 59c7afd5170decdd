"""Run a script that registers at-fork hooks around ``import racefree``, bounded in time.

The fork-hook tests need a fresh interpreter: whether a hook runs before or
after racefree's depends on which was registered first, so each script
registers its own hooks, then imports racefree, then forks. ``PRELUDE`` gives
the script ``fork_and_wait``: it forks (the child runs ``child()`` and exits
with its return value) and waits for the child under an alarm, so a child
that deadlocks (the bug these tests catch) is killed and reported as
``CHILD-HUNG`` instead of hanging the test; a parent that deadlocks inside
``os.fork()`` (in a ``before`` hook) is interrupted by the same alarm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent(
    """
    import os, signal, sys

    _child = [0]

    def _expire(*_):
        if _child[0]:
            os.kill(_child[0], signal.SIGKILL)
            os.waitpid(_child[0], 0)
            print("CHILD-HUNG", flush=True)
        else:
            print("PARENT-HUNG", flush=True)
        os._exit(3)

    signal.signal(signal.SIGALRM, _expire)

    def fork_and_wait(child, seconds=20, after_fork=None):
        signal.alarm(seconds)  # also bounds a deadlock inside os.fork() (a before hook)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = child()
            finally:
                os._exit(code)
        _child[0] = pid
        if after_fork is not None:
            after_fork(pid)
        _, status = os.waitpid(pid, 0)
        signal.alarm(0)
        _child[0] = 0
        return os.waitstatus_to_exitcode(status)

    def say(text):
        os.write(1, (text + "\\n").encode())
    """
)


def run_script(body: str, *args: str, timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``PRELUDE + body`` in a new interpreter (own process group); its exit code and lines.

    The whole group is killed if it outlives ``timeout``, so no grandchild survives.
    """
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # pragma: no cover - communicate() always waits
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = out.decode().splitlines()
    if proc.returncode != 0:
        lines.append(f"stderr: {err.decode()}")
    return proc.returncode, lines
