"""Testing tools: prove code built on racefree, or any program, free of races and crash bugs.

The same machinery racefree proves itself with, as a public API:

- :func:`race`: call a function from many real processes, threads and asyncio tasks at once,
  released together by a barrier, bounded in time (``races``);
- :func:`crash_states`: record what an operation does at racefree's file-system seam, build
  every state a power loss could leave, and check each one (``recording``, ``recorder``,
  ``tears``, ``states``, ``replay``);
- :func:`faults`: fail the Nth ``write``, ``fsync``, ``rename``... with ``ENOSPC``, ``EDQUOT``
  or ``EIO`` (``injection``);
- ``racefree crashcheck``: the crash states of any program, in any language, from an
  ``strace`` recording (``strace.py``, ``crashcheck.py``);
- a pytest plugin with fixtures for all of these (``plugin.py``; loaded by pytest through
  its entry point, never imported here, so ``import racefree.testing`` does not import pytest).

See ``docs/testing.md``. This package stands on the far side of the seam: it implements
the recording, failing and replaying file systems, and its own bookkeeping I/O goes to
the real file system directly (``_disk.py``), never through the swappable seam.

May import: every library layer and the public ``racefree`` package (it is a user of
them all); no library layer imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from racefree.testing.injection import (
        CALLS,
        ERRNOS,
        FaultFS,
        InjectedFault,
        count_calls,
        faults,
    )
    from racefree.testing.races import Call, RaceResult, race
    from racefree.testing.recorder import NoSyncFS, Recorder
    from racefree.testing.recording import ModelError, Recording
    from racefree.testing.replay import (
        RACEFREE_CACHES,
        CrashReport,
        Violation,
        crash_states,
        explore,
    )
    from racefree.testing.states import CrashState, enumerate_states

# Each module is imported on first use: ``import racefree.testing`` stays cheap.
_LAZY = {
    "CALLS": "racefree.testing.injection",
    "Call": "racefree.testing.races",
    "CrashReport": "racefree.testing.replay",
    "CrashState": "racefree.testing.states",
    "ERRNOS": "racefree.testing.injection",
    "FaultFS": "racefree.testing.injection",
    "InjectedFault": "racefree.testing.injection",
    "ModelError": "racefree.testing.recording",
    "NoSyncFS": "racefree.testing.recorder",
    "RACEFREE_CACHES": "racefree.testing.replay",
    "RaceResult": "racefree.testing.races",
    "Recorder": "racefree.testing.recorder",
    "Recording": "racefree.testing.recording",
    "Violation": "racefree.testing.replay",
    "count_calls": "racefree.testing.injection",
    "crash_states": "racefree.testing.replay",
    "enumerate_states": "racefree.testing.states",
    "explore": "racefree.testing.replay",
    "faults": "racefree.testing.injection",
    "race": "racefree.testing.races",
}

__all__ = [
    "CALLS",
    "ERRNOS",
    "RACEFREE_CACHES",
    "Call",
    "CrashReport",
    "CrashState",
    "FaultFS",
    "InjectedFault",
    "ModelError",
    "NoSyncFS",
    "RaceResult",
    "Recorder",
    "Recording",
    "Violation",
    "count_calls",
    "crash_states",
    "enumerate_states",
    "explore",
    "faults",
    "race",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'racefree.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
