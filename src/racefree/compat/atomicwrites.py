"""atomicwrites' API on racefree's atomic files: ``from racefree.compat import atomicwrites``.

Names: :func:`atomic_write`, :class:`AtomicWriter`, :func:`replace_atomic`,
:func:`move_atomic`. The idioms that work unchanged::

    with atomic_write("config.json", overwrite=True) as f:   # replace it
        f.write(text)
    with atomic_write("new.txt") as f:        # overwrite=False, the default: create only
        f.write(text)                         # FileExistsError if the file exists
    with atomic_write("blob", mode="wb", overwrite=True) as f: ...
    with AtomicWriter("x.txt", overwrite=True, encoding="utf-8").open() as f: ...

Writing is :func:`racefree.atomic_open`: a temp file in the same directory,
fsynced, renamed over the target (``overwrite=True``) or linked to it only if
no file exists (``overwrite=False``), then the directory fsynced. An exception
in the block publishes nothing and removes the temp. What differs, on purpose:

- **Mode bits.** An existing file keeps its permission bits (and owner, as
  root); a new one gets ``0o666 & ~umask``. atomicwrites leaves every file it
  writes at ``0o600`` (its temp file's mode, atomicwrites #42).
- **Existing file, overwrite=False.** ``FileExistsError`` is raised when the
  ``with`` starts, before the block runs (atomicwrites runs the block, then
  raises at the commit). A file created by someone else while the block runs
  still gets ``FileExistsError`` at the end, and is never replaced.
- **Modes and options.** ``mode`` is ``"w"``/``"wt"`` or ``"wb"``: the file is
  for writing only (``"w+"`` is refused). Open options are ``encoding``,
  ``errors`` and ``newline`` (text: the locale's encoding by default, as
  ``open()``); others raise ``TypeError``. The file object has no ``name``.
- ``AtomicWriter`` is not a toolkit: a subclass that overrides
  ``get_fileobject``, ``sync``, ``commit`` or ``rollback`` is refused
  (``TypeError``), since racefree does those steps itself.
- ``replace_atomic`` and ``move_atomic`` rename an existing file and fsync the
  directory, as atomicwrites does (neither fsyncs the file's data: do it first).
  Both follow links on the way under racefree's rule (``docs/security.md``): a
  link another user planted in a shared directory, or an entry of theirs at
  either name, raises :class:`racefree.UnsafePathError` and nothing moves.
"""

from __future__ import annotations

import contextlib
import locale
import os
from functools import partial
from typing import IO, Any

from racefree import _fs, _trust
from racefree._errors import DurabilityError
from racefree.files.atomic import atomic_open

__all__ = ["AtomicWriter", "atomic_write", "move_atomic", "replace_atomic"]

_TEXT = {"w": "w", "wt": "w", "tw": "w"}
_BINARY = {"wb": "wb", "bw": "wb"}
_OPEN_OPTIONS = frozenset({"encoding", "errors", "newline"})
_HOOKS = ("get_fileobject", "sync", "commit", "rollback")


class AtomicWriter:
    """atomicwrites' ``AtomicWriter(path, mode="w", overwrite=False, **open_kwargs)``.

    ``open()`` is a context manager yielding the file to write; the file is
    published when the block exits without an exception (see the module
    docstring for what that guarantees).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in _HOOKS if name in cls.__dict__]
        if overridden:
            raise TypeError(
                f"{cls.__name__} overrides {', '.join(overridden)}: racefree's AtomicWriter does"
                " these steps itself (temp file, fsync, publish, cleanup) and has no such hooks"
            )

    def __init__(
        self, path: str | os.PathLike[str], mode: str = "w", overwrite: bool = False,
        **open_kwargs: Any,
    ) -> None:
        if "a" in mode:
            raise ValueError("Appending to an existing file is not supported")
        if "x" in mode:
            raise ValueError("Use the `overwrite`-parameter instead.")
        if "w" not in mode:
            raise ValueError("AtomicWriters can only be written to.")
        if mode not in _TEXT and mode not in _BINARY:
            raise ValueError(f"mode {mode!r}: racefree's atomic files are written, never read back")
        unknown = sorted(set(open_kwargs) - _OPEN_OPTIONS)
        if unknown:
            raise TypeError(f"open options not supported: {', '.join(unknown)}")
        if mode in _BINARY and open_kwargs:
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        self._path = os.fspath(path)
        self._mode = mode
        self._overwrite = bool(overwrite)
        self._open_kwargs = open_kwargs

    def open(self) -> contextlib.AbstractContextManager[IO[Any]]:
        """The file to write, as a context manager: published on a clean exit, else discarded."""
        if self._mode in _BINARY:
            return atomic_open(self._path, "wb", overwrite=self._overwrite)
        kwargs = dict(self._open_kwargs)
        if kwargs.get("encoding") is None:
            kwargs["encoding"] = locale.getpreferredencoding(False)  # what open() uses
        return atomic_open(self._path, "w", overwrite=self._overwrite, **kwargs)


def atomic_write(
    path: str | os.PathLike[str], writer_cls: type[AtomicWriter] = AtomicWriter,
    **cls_kwargs: Any,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """``with atomic_write(path, mode="w", overwrite=False, **open_kwargs) as f:``.

    The file appears whole or not at all, durably (fsync of the file, then of
    the directory). ``overwrite=False`` (the default, as in atomicwrites)
    creates the file only if none exists: ``FileExistsError`` otherwise.
    """
    return writer_cls(path, **cls_kwargs).open()


def replace_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` to ``dst``, replacing it, then fsync ``dst``'s directory (atomic, one rename).

    The directory fsync's failure is a :class:`racefree.DurabilityError`: the
    rename happened but may not survive a power loss.
    """
    src, dst = _under_rule(src, "move"), _under_rule(dst, "replace")
    _fs.replace(src, dst)
    _sync_dir(dst, "renamed")


def move_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` to ``dst`` only if ``dst`` does not exist (``FileExistsError``), then fsync.

    ``link`` then ``unlink``: for a moment both names exist (as in atomicwrites).
    """
    src, dst = _under_rule(src, "move"), _under_rule(dst, "replace")
    _fs.link(src, dst)
    _fs.unlink(src)
    _sync_dir(dst, "moved")
    if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
        _sync_dir(src, "moved")


def _under_rule(path: str | os.PathLike[str], action: str) -> str:
    """``path`` with every link on the way to it checked (``racefree._trust``), not its last.

    rename(2) and link(2) follow the links of the directories on the way but act on
    the last name itself. A link another user planted in a shared directory (``/tmp``)
    on the way would make root move a file into, or replace one in, a directory of
    its choosing, so it is refused (:class:`~racefree.UnsafePathError`), as is an
    entry of theirs at the name (to move, or to replace: root would adopt their file
    or drop one of theirs). The path returned holds no link but its last name.
    """
    where = _trust.resolve(path, follow_last=False)
    if where.st is not None:
        _trust.check(where.path, where.st, where.dir_st, action,
                     again=partial(_fs.stat, where.path, follow_symlinks=False))
    return where.path


def _sync_dir(path: str, what: str) -> None:
    try:
        _fs.fsync_dir(os.path.dirname(path) or os.curdir)
    except OSError as exc:
        raise DurabilityError(
            path, exc.errno or 5,
            f"the file was {what} but its directory could not be synced: the change may or"
            " may not be committed",
        ) from exc
