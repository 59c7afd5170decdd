"""The crash harness (``racefree crashcheck --dir``, ``racefree.testing``) in a shared directory.

The harness scans the directory it records: an ``lstat`` of each entry, then an
open of each regular file. Another user who may create entries there (``nobody``,
in a sticky directory) can rename a FIFO of theirs over a file of theirs in
between. A blocking open of that FIFO hung the harness for ever; it now opens with
``O_NONBLOCK`` and checks the descriptor, so the scan fails at once (or, for a
replayed tree, leaves the entry out as any special file).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, attacker, bounded, owner, shared_dir

from racefree.testing import _disk
from racefree.testing.recording import Recording

SWAP = ("import os, sys; os.mkfifo(sys.argv[1] + '.fifo', 0o666);"
        " os.rename(sys.argv[1] + '.fifo', sys.argv[1])")


@pytest.fixture
def scanned() -> Iterator[Path]:
    """A sticky directory holding ``x``, a file of nobody's."""
    with shared_dir("tmp") as d:
        where = d / "cc"
        where.mkdir()
        where.chmod(0o1777)
        attacker("import sys; open(sys.argv[1], 'w').write('data')", str(where / "x"))
        assert owner(where / "x") == NOBODY
        yield where


def _swap_after_lstat(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """nobody renames a FIFO over ``target`` right after the harness's lstat of it."""
    real = _disk.REAL.stat
    done: list[bool] = []

    def stat(path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        st = real(path, follow_symlinks=follow_symlinks)
        if path == str(target) and not done:
            done.append(True)
            attacker(SWAP, str(target))
        return st

    monkeypatch.setattr(_disk.REAL, "stat", stat)


def test_a_fifo_swapped_in_during_the_scan_fails_it_at_once(
    scanned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording's scan: ``OSError(EINVAL)`` naming the entry, not a hang."""
    _swap_after_lstat(monkeypatch, scanned / "x")
    exc = bounded(lambda: Recording(scanned), scanned / "x")
    assert isinstance(exc, OSError) and exc.errno == errno.EINVAL
    assert exc.filename == str(scanned / "x")


def test_a_fifo_swapped_in_while_a_tree_is_read_is_left_out(
    scanned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_tree`` (what a replay compares): the FIFO is left out, as any special file."""
    (scanned / "y").write_bytes(b"root's")
    _swap_after_lstat(monkeypatch, scanned / "x")
    got: dict[str, object] = {}
    exc = bounded(lambda: got.update(_disk.read_tree(scanned)), scanned / "x")
    assert exc is None
    assert got == {"y": b"root's"}
