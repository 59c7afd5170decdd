"""Another local user against the time-rotated log's backups, in a shared directory.

racefree runs as root, the attacker as ``nobody`` (``helpers.hostile``), in a
directory like ``/tmp``. ``TimedRotatingFileHandler`` deletes the oldest
backups beyond ``backupCount``, by name: files another user made under
backup names (dated far in the future) used to count as backups and push root's
own out, so that root deleted its own records.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import hostile

from racefree.logging import RotatingFileHandler, TimedRotatingFileHandler

PLANT = (
    "import sys\n"
    "for name in sys.argv[1:]:\n"
    "    open(name, 'w').write('attacker\\n')\n"
)
FUTURE = ("app.log.2099-12-31_23-59-58", "app.log.2099-12-31_23-59-59")


@pytest.mark.parametrize("compress", [False, True])
def test_case21_another_users_backup_names_neither_count_nor_are_deleted(compress: bool) -> None:
    """nobody plants two backups dated 2099; root rotates three times with backupCount=2:
    root keeps exactly its two newest backups, nobody's files are untouched (before: root's
    backups were all deleted, the planted ones kept as the "newest")."""
    with hostile.shared_dir("tmp") as shared:
        hostile.attacker(PLANT, *(str(shared / n) for n in FUTURE))
        assert all(hostile.owner(shared / n) == hostile.NOBODY for n in FUTURE)
        handler = TimedRotatingFileHandler(shared / "app.log", when="S", backupCount=2,
                                           compress=compress)
        try:
            for i in range(3):
                handler.emit(logging.makeLogRecord({"msg": f"record {i}"}))
                handler.doRollover()
            handler.emit(logging.makeLogRecord({"msg": "record 3"}))
        finally:
            handler.close()
        names = sorted(os.listdir(shared))
        for n in FUTURE:
            assert (shared / n).read_text() == "attacker\n"
            assert hostile.owner(shared / n) == hostile.NOBODY
        mine = [n for n in names if n.startswith("app.log.") and n not in FUTURE]
        assert len(mine) == 2, names
        assert all(hostile.owner(shared / n) == 0 for n in mine)
        assert sorted(_read(shared / n) for n in mine) == [b"record 1\n", b"record 2\n"]
        assert (shared / "app.log").read_bytes() == b"record 3\n"


def _read(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def test_case21_another_users_file_at_a_size_backup_name_is_never_shifted_into_the_log() -> None:
    """nobody plants app.log.1 holding a fake record; root's RotatingFileHandler rotates
    twice with backupCount=3: nobody's file is never moved along the backups (its lines
    would pass for root's); every backup is root's and holds root's records only."""
    with hostile.shared_dir("tmp") as shared:
        hostile.attacker("import sys; open(sys.argv[1], 'w').write('FAKE root record\\n')",
                         str(shared / "app.log.1"))
        assert hostile.owner(shared / "app.log.1") == hostile.NOBODY
        handler = RotatingFileHandler(shared / "app.log", maxBytes=10, backupCount=3)
        try:
            for i in range(3):
                handler.emit(logging.makeLogRecord({"msg": f"record {i}"}))
        finally:
            handler.close()
        names = sorted(n for n in os.listdir(shared) if n.startswith("app.log"))
        assert names == ["app.log", "app.log.1", "app.log.2"]
        assert all(hostile.owner(shared / n) == 0 for n in names)
        assert [(shared / n).read_bytes() for n in names] == [
            b"record 2\n", b"record 1\n", b"record 0\n"]
