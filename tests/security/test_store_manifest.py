"""Case 5: the store's MANIFEST (and its other files) in a directory another user can write.

racefree runs as root; the attacker is ``nobody``, in a sticky, world-writable store
directory (like the system's temporary directory). Each test asserts that the attack is
in place, that the store refused it with ``UnsafePathError`` before writing anything, and
that the victim file outside is byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile import NOBODY, attacker, is_link, owner, shared_dir

from racefree import Store, UnsafePathError
from racefree.store.segment import SEG_HEADER, SEG_MAGIC

#: A MANIFEST that names segment 1: what the attacker makes the link point at.
MANIFEST = (json.dumps({"racefree": "store", "format": 1, "gen": 0, "segments": [1]}) + "\n")

# Plant a symbolic link (argv[1] -> argv[2]) and a valid empty segment 1 (argv[3]), so that
# a store that followed the link would open and later replace the link's target.
_PLANT = """
import os, sys
os.symlink(sys.argv[2], sys.argv[1])
with open(sys.argv[3], "wb") as f:
    f.write(bytes.fromhex(sys.argv[4]) + bytes((1 << 20) - 16))
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky, world-writable directory (root's, mode 1777) used as the store directory."""
    with shared_dir("tmp") as d:
        yield d


def _victim(tmp_path: Path) -> Path:
    """A root-owned file outside the shared directory, holding what a MANIFEST holds."""
    victim = tmp_path / "victim"
    victim.write_text(MANIFEST)
    return victim


def _segment_header() -> str:
    return SEG_HEADER.pack(SEG_MAGIC, 1).hex()


def test_manifest_link_planted_by_another_user_is_refused(tmp_path: Path, shared: Path) -> None:
    """Case 5: a MANIFEST that is another user's link to a file outside is never followed:
    the store refuses to open (UnsafePathError), so no compaction or roll can replace the
    link's target; the target is unchanged."""
    victim = _victim(tmp_path)
    before = victim.read_bytes()
    attacker(_PLANT, str(shared / "MANIFEST"), str(victim), str(shared / "seg-00000001.rfs"),
             _segment_header())
    assert is_link(shared / "MANIFEST") and owner(shared / "MANIFEST") == NOBODY
    assert os.readlink(shared / "MANIFEST") == str(victim)
    with pytest.raises(UnsafePathError) as err, Store(shared, durable=False) as s:
        s.put("a", {"n": 1})
        s.compact()  # replaces the MANIFEST: through the link, if it was followed
    assert err.value.path == str(shared / "MANIFEST")
    assert victim.read_bytes() == before
    assert is_link(shared / "MANIFEST") and os.readlink(shared / "MANIFEST") == str(victim)
    assert sorted(os.listdir(shared)) == ["MANIFEST", "seg-00000001.rfs"]  # nothing made


def test_manifest_file_planted_by_another_user_is_refused(tmp_path: Path, shared: Path) -> None:
    """Case 5: a MANIFEST that is another user's regular file (they could swap it for a
    link at any time, or point it at segments of their own) is not trusted."""
    attacker("import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
             str(shared / "MANIFEST"), MANIFEST)
    attacker(_PLANT.replace("os.symlink(sys.argv[2], sys.argv[1])", "pass"),
             "-", "-", str(shared / "seg-00000001.rfs"), _segment_header())
    assert owner(shared / "MANIFEST") == NOBODY
    before = (shared / "MANIFEST").read_bytes()
    with pytest.raises(UnsafePathError) as err, Store(shared, durable=False) as s:
        s.put("a", {"n": 1})
    assert f"owned by uid {NOBODY}" in err.value.reason
    assert (shared / "MANIFEST").read_bytes() == before
    assert sorted(os.listdir(shared)) == ["MANIFEST", "seg-00000001.rfs"]  # nothing made


def test_next_segment_link_planted_by_another_user_is_refused(
    tmp_path: Path, shared: Path
) -> None:
    """A link another user planted at the next segment's name: the roll refuses it
    (UnsafePathError), writes nothing through it, and every acknowledged document stays."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's data\n")
    with Store(shared, durable=False, _segment_size=64 << 10) as s:
        s.put("a", {"n": 1})
    attacker("import os, sys; os.symlink(sys.argv[2], sys.argv[1])",
             str(shared / "seg-00000002.rfs"), str(victim))
    assert is_link(shared / "seg-00000002.rfs")
    big = {"pad": "x" * (2 << 20)}  # larger than segment 1: the put rolls to segment 2
    with Store(shared, durable=False, _segment_size=64 << 10) as s:
        with pytest.raises(UnsafePathError) as err:
            s.put("big", big)
        assert err.value.path == str(shared / "seg-00000002.rfs")
        assert s.items() == [("a", {"n": 1})]
    assert victim.read_bytes() == b"root's data\n"
    assert is_link(shared / "seg-00000002.rfs")
