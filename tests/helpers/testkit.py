"""Small pieces several test modules share: reaping children, a real tmpfs, lock argument checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest


def reap(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """Kill and wait for every child still running (for a ``finally``: none outlives its test)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, why: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (root only: else skip, saying ``why``).

    Unmounted (lazily) afterwards, whatever the test did.
    """
    if os.geteuid() != 0:
        pytest.skip(why)
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, timeout=30, check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def check_bad_timeouts(make: Callable[..., Any], bad: float) -> Any:
    """``bad`` (negative or NaN) is a ValueError in a lock's constructor, ``acquire`` and
    ``acquire_async``, a str timeout a TypeError; nothing is held after. Returns the lock.
    """
    with pytest.raises(ValueError):
        make(timeout=bad)
    lock = make()
    with pytest.raises(ValueError):
        lock.acquire(timeout=bad)
    with pytest.raises(ValueError):
        asyncio.run(lock.acquire_async(timeout=bad))
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")
    assert not lock.locked
    return lock
