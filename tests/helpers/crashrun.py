"""What the crash-state test modules share: running an exploration and counting its states.

Each test records one or more operations with :class:`racefree.testing.Recorder`
and calls :func:`run`, which explores every crash state (``racefree.testing.explore``),
requires no violation and at least a minimum number of states, and adds the
count to :data:`COUNTS` under the operation's name. :func:`print_counts` prints
the table at the end of a module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from racefree.testing import CrashReport, CrashState, Recording, explore

#: Distinct crash states explored per operation, over the crash-state test modules.
COUNTS: dict[str, int] = {}


def run(
    name: str,
    rec: Recording,
    check: Callable[[Path, CrashState], None],
    tmp_path: Path,
    *,
    minimum: int,
    **kwargs: Any,
) -> CrashReport:
    """Explore every crash state of ``rec``; no violation, at least ``minimum`` states."""
    rec.verify_against_disk()
    result = explore(name, rec, check, tmp_path / "states", **kwargs)
    print(result.summary())
    assert result.violations == [], result.format()
    COUNTS[name] = COUNTS.get(name, 0) + result.states
    assert result.states >= minimum, result.summary()
    return result


def versions_allowed(versions: list[Any], acked: tuple[str, ...]) -> list[Any]:
    """With versions[i] written by operation ``str(i)`` in order: what a crash may show.

    Every acknowledged version was durable, so the newest acknowledged one (or
    the initial ``versions[0]``) or the one in flight, nothing older and nothing newer.
    """
    done = len(acked)
    return versions[done : done + 2]


def print_counts(request: pytest.FixtureRequest, title: str, counts: dict[str, int]) -> None:
    """Print ``counts`` as a table past pytest's capture."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [f"  {name:<44} {n:>7}" for name, n in sorted(counts.items())]
    text = f"\n{title}:\n" + "\n".join(lines)
    text += f"\n  {'total':<44} {sum(counts.values()):>7}\n"
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text)
    else:  # pragma: no cover
        print(text)
