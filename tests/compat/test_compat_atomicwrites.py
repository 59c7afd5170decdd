"""racefree.compat.atomicwrites: atomicwrites' idioms, against atomicwrites and the compat module.

Tests parametrized with ``mod`` expect the same outcome from both; the others
check where racefree differs on purpose (see the module's docstring).
"""

from __future__ import annotations

import errno
import importlib
import os
import stat
from pathlib import Path
from types import ModuleType

import pytest

from racefree import DurabilityError, _fs
from racefree.compat import atomicwrites as compat
from racefree.testing.injection import FaultFS


@pytest.fixture(params=["atomicwrites", "racefree.compat.atomicwrites"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_default_creates_a_new_file(mod: ModuleType, tmp_path: Path) -> None:
    """``atomic_write(path)``: overwrite=False by default; text mode; no temp left."""
    path = tmp_path / "new.txt"
    with mod.atomic_write(path) as f:
        f.write("hello\n")
    assert path.read_text() == "hello\n"
    assert _files(tmp_path) == ["new.txt"]


def test_default_refuses_an_existing_file(mod: ModuleType, tmp_path: Path) -> None:
    """An existing file is never replaced without overwrite=True (FileExistsError)."""
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(FileExistsError), mod.atomic_write(path) as f:
        f.write("new")
    assert path.read_text() == "old"
    assert _files(tmp_path) == ["f.txt"]


def test_overwrite_replaces(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with mod.atomic_write(path, overwrite=True) as f:
        f.write("new")
    assert path.read_text() == "new"


def test_binary_mode_and_encoding(mod: ModuleType, tmp_path: Path) -> None:
    with mod.atomic_write(tmp_path / "b", mode="wb", overwrite=True) as f:
        f.write(b"\x00\xff")
    assert (tmp_path / "b").read_bytes() == b"\x00\xff"
    with mod.atomic_write(tmp_path / "t", encoding="latin-1") as f:
        f.write("é")
    assert (tmp_path / "t").read_bytes() == b"\xe9"


def test_an_error_in_the_block_publishes_nothing(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(KeyError), mod.atomic_write(path, overwrite=True) as f:
        f.write("half")
        raise KeyError("boom")
    assert path.read_text() == "old"
    assert _files(tmp_path) == ["f.txt"]


def test_atomic_writer_open(mod: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    with mod.AtomicWriter(path, overwrite=True, newline="\r\n").open() as f:
        f.write("a\n")
    assert path.read_bytes() == b"a\r\n"


@pytest.mark.parametrize("mode", ["a", "x", "r"])
def test_modes_refused(mod: ModuleType, tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError):
        mod.AtomicWriter(tmp_path / "f", mode=mode)


def test_replace_and_move_atomic(mod: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("A")
    (tmp_path / "b").write_text("B")
    mod.replace_atomic(str(tmp_path / "a"), str(tmp_path / "b"))
    assert _files(tmp_path) == ["b"] and (tmp_path / "b").read_text() == "A"
    (tmp_path / "c").write_text("C")
    with pytest.raises(FileExistsError):
        mod.move_atomic(str(tmp_path / "c"), str(tmp_path / "b"))
    mod.move_atomic(str(tmp_path / "c"), str(tmp_path / "d"))
    assert _files(tmp_path) == ["b", "d"] and (tmp_path / "d").read_text() == "C"


# -- where racefree differs on purpose ------------------------------------------------------

def test_mode_bits_are_kept(tmp_path: Path) -> None:
    """An existing file keeps its bits; a new one gets the umask's (atomicwrites: 0o600)."""
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o640)
    with compat.atomic_write(path, overwrite=True) as f:
        f.write("new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        with compat.atomic_write(tmp_path / "g") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o644


def test_existing_file_refused_before_the_block_runs(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    ran = []
    with pytest.raises(FileExistsError), compat.atomic_write(path) as f:
        ran.append(f)  # pragma: no cover
    assert ran == []


def test_read_back_modes_and_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never read back"):
        compat.AtomicWriter(tmp_path / "f", mode="w+")
    with pytest.raises(TypeError, match="buffering"):
        compat.AtomicWriter(tmp_path / "f", buffering=1)


def test_subclass_hooks_are_refused() -> None:
    with pytest.raises(TypeError, match="get_fileobject"):
        class Custom(compat.AtomicWriter):
            def get_fileobject(self) -> None:  # pragma: no cover
                pass


def test_durable_by_default(tmp_path: Path) -> None:
    """The data is fsynced before the file is published: a failed fsync publishes nothing."""
    fault = FaultFS(op="fsync", nth=1, err=errno.EIO)
    fault.arm()
    with _fs.use(fault), pytest.raises(DurabilityError), \
            compat.atomic_write(tmp_path / "f") as f:
        f.write("x")
    assert _files(tmp_path) == []


def test_replace_atomic_directory_sync_failure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("A")
    fault = FaultFS(op="fsync_dir", nth=1, err=errno.EIO)
    fault.arm()
    with _fs.use(fault), pytest.raises(DurabilityError, match="may or may not"):
        compat.replace_atomic(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "A"
