"""``racefree.__version__`` and ``racefree --version``: the package metadata, read lazily."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import racefree
from racefree.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _python(code: str) -> str:
    """What a fresh interpreter running ``code`` prints."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def test_version_is_the_package_metadata() -> None:
    """The one version there is: pyproject.toml's, as installed."""
    assert racefree.__version__ == version("racefree") == _pyproject_version()


def test_import_does_not_read_the_metadata() -> None:
    """``import racefree`` stays cheap: the metadata is read on first use of __version__."""
    code = (
        "import sys, racefree\n"
        "before = 'importlib.metadata' in sys.modules or '__version__' in vars(racefree)\n"
        "v = racefree.__version__\n"
        "print(before, 'importlib.metadata' in sys.modules, v)\n"
    )
    assert _python(code).split() == ["False", "True", racefree.__version__]


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``racefree --version`` prints the name and version, exit status 0."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"racefree {racefree.__version__}\n"


def test_import_loads_only_the_errors() -> None:
    """``import racefree`` loads racefree and its errors, not typing nor re (~4 ms, not ~11)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import racefree\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.startswith('racefree')), 'typing' in new, 're' in new)\n"
    )
    assert _python(code).strip() == "['racefree', 'racefree._errors'] False False"
