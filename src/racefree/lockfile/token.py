"""The fencing token of a :class:`racefree.LockFile`: ``P.token``, one counter per lock.

Each acquisition hands out the next token and publishes it here (atomic and
durable) before the lock is reported held, so that tokens only ever grow, even
across a power loss: storage that remembers the highest token it has seen can
reject a late write from a holder that lost the lock (pitfall L8).
"""

from __future__ import annotations

import os

from racefree import _fs, _trust
from racefree._errors import CorruptFileError
from racefree.lockfile.disk import NEW, unique, unlink_quiet

__all__ = ["read_token", "token_path", "write_token"]


def token_path(path: str) -> str:
    return path + ".token"


#: A token file is one decimal number and a newline; anything longer is not one.
_MAX_TOKEN_FILE = 32


def read_token(path: str) -> int:
    """The last fencing token handed out for the lock at ``path`` (0 if none yet).

    Opened like every file racefree owns (never through a link, never blocking,
    a regular file it may trust, else :class:`~racefree.UnsafePathError`), and
    read with one bounded read: a FIFO or ``/dev/zero`` there never hangs it.
    """
    tpath = token_path(path)
    try:
        fd, _st, _created = _trust.open_own(tpath, os.O_RDONLY, create=False)
    except FileNotFoundError:
        return 0
    try:
        raw = _fs.pread(fd, _MAX_TOKEN_FILE + 1, 0)
    finally:
        _fs.close(fd)
    text = raw.strip()
    if not text.isdigit() or raw != text + b"\n":
        # Written only by write_token (atomic replace), so never torn by us:
        # never read a damaged counter as 0, tokens would go backwards.
        raise CorruptFileError(tpath, f"not a fencing token: {raw[:40]!r}")
    return int(text)


def write_token(path: str, token: int, mode: int | None = None) -> None:
    """Publish ``token`` as the last one handed out: atomic and durable when it returns.

    ``mode``: the token file's exact permission bits (None: ``0o666 & ~umask``).
    """
    tpath = token_path(path)
    tmp = unique(path, "tok")
    fd = _fs.open(tmp, NEW, 0o666 if mode is None else 0o600)
    try:
        try:
            if mode is not None:
                _fs.fchmod(fd, mode)
            _fs.write_all(fd, b"%d\n" % token)
            _fs.fsync(fd)
        finally:
            _fs.close(fd)
        _fs.replace(tmp, tpath)
    except BaseException:
        unlink_quiet(tmp)
        raise
    # Durable, so that after a power loss the counter cannot go back to a
    # value a holder already used.
    _fs.fsync_dir(os.path.dirname(tpath) or ".")
