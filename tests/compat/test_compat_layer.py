"""The compat layer sits on top: nothing in the library imports it, and it needs no peer."""

from __future__ import annotations

import subprocess
import sys

_CODE = """
import importlib, pathlib, sys
import racefree
root = pathlib.Path(racefree.__path__[0])
for file in sorted(root.rglob("*.py")):
    parts = ("racefree",) + file.relative_to(root).with_suffix("").parts
    if parts[1:2] in (("compat",), ("__main__",)):
        continue
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    try:
        importlib.import_module(name)
    except ImportError:  # an optional extra (psycopg, rich) that is not installed
        pass
print(sorted(m for m in sys.modules if m.startswith("racefree.compat")))
for name in ("filelock", "fasteners", "atomicwrites"):
    sys.modules[name] = None  # the peers are not installed
importlib.import_module("racefree.compat.filelock")
importlib.import_module("racefree.compat.fasteners")
importlib.import_module("racefree.compat.atomicwrites")
print("ok")
"""


def test_no_library_module_imports_compat_and_compat_needs_no_peer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "ok"]
