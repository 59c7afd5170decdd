"""``racefree demo``: the naive code loses saves, racefree keeps every one (S1, S10)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from racefree.cli import demo, main


@pytest.mark.slow
def test_demo_runs_and_racefree_keeps_every_save() -> None:
    """The demo, run as a new user would, shows the naive code losing saves and racefree
    keeping all 400, and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "racefree", "demo", "--plain"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("racefree demo: 4 processes each save 100 chat conversations")
    pattern = r"naive: kept (\d+) of 400 conversation saves \((\d+) lost\)(; .*)?"
    naive = re.fullmatch(pattern, lines[1])
    assert naive is not None, lines[1]
    kept, lost = int(naive[1]), int(naive[2])
    assert kept + lost == 400
    assert kept < 400  # the race is real: processes released together lose saves
    assert lines[3] == "racefree: kept 400 of 400 conversation saves (none lost)"
    assert proc.stderr == ""


def _fake(label: str, kept: int, must_keep_all: bool) -> demo.Section:
    def section(setup: demo.Setup) -> demo.Outcome:
        assert os.listdir(setup.workdir) == []
        return demo.Outcome(label, "fake", kept, setup.total, must_keep_all=must_keep_all)

    return section


def test_a_racefree_section_that_loses_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sections are a list: an added section's loss makes the demo exit 1 and say so."""
    monkeypatch.setattr(
        demo,
        "SECTIONS",
        [_fake("naive", 10, False), _fake("racefree", 20, True), _fake("store", 19, True)],
    )
    assert main(["demo", "--processes", "2", "--saves", "10", "--plain"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "naive: kept 10 of 20 conversation saves (10 lost)",
        "    fake (0.00 s)",
        "racefree: kept 20 of 20 conversation saves (none lost)",
        "    fake (0.00 s)",
        "store: kept 19 of 20 conversation saves (1 lost)",
        "    fake (0.00 s)",
        "racefree demo: FAILED: store lost updates",
    ]


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """--processes below 2 is a one-line error and exit code 1."""
    assert main(["demo", "--processes", "1"]) == 1
    err = capsys.readouterr().err
    assert err == "racefree demo: error: --processes must be at least 2 and --saves at least 1\n"


def _writes_own_file(path: str, index: int, saves: int) -> int:
    Path(f"{path}.{index}").write_text(str(saves))
    return index * 10


def _fails(path: str, index: int, saves: int) -> int:
    raise OSError("disk on fire")


def test_run_together_returns_results_by_index_and_reports_failures(tmp_path: Path) -> None:
    """run_together runs one worker per process and returns their results by index; a failing
    worker is a RuntimeError naming its error."""
    setup = demo.Setup(str(tmp_path), 3, 7)
    assert demo.run_together(setup, _writes_own_file, str(tmp_path / "f")) == [0, 10, 20]
    assert sorted(os.listdir(tmp_path)) == ["f.0", "f.1", "f.2"]
    with pytest.raises(RuntimeError, match="OSError: disk on fire"):
        demo.run_together(setup, _fails, str(tmp_path / "g"))


@pytest.mark.slow
@pytest.mark.postgres
def test_demo_store_section_on_postgres_keeps_every_save_and_cleans_up() -> None:
    """``racefree demo --url postgresql://...`` runs the store section on PostgreSQL: it keeps
    all 400 saves, and the named store it made is empty afterwards."""
    from helpers.pgserver import server_url

    url = server_url()
    proc = subprocess.run(
        [sys.executable, "-m", "racefree", "demo", "--plain", "--url", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[5] == "racefree store: kept 400 of 400 conversation saves (none lost)"
    # The demo names its store racefree-demo-<pid>-<ns> and empties it at the end.
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM racefree_docs WHERE store LIKE 'racefree-demo-%' "
            "AND doc IS NOT NULL"
        ).fetchone()
    assert rows is not None and rows[0] == 0
