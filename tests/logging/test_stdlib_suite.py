"""The interpreter's own tests of its rotating handlers, run against racefree's classes.

``test.test_logging`` (shipped with CPython) is imported as installed, never
copied; ``logging.handlers.RotatingFileHandler`` and
``logging.handlers.TimedRotatingFileHandler`` are replaced by racefree's for the
length of each test (the tests name them through the module), and the temporary
directory is the test's own, so that sidecar files land there. Every test of
``RotatingFileHandlerTest`` and ``TimedRotatingFileHandlerTest``, and
``HandlerTest.test_path_objects``, must pass; the ones that cannot, because
racefree differs on purpose, are listed in ``DIFFERENT`` with the reason (and in
the table of differences in ``docs/logging.md``).
"""

from __future__ import annotations

import logging.handlers
import tempfile
import unittest
from pathlib import Path
from types import ModuleType

import pytest

import racefree.logging as rl

stdlib_tests: ModuleType | None
try:
    import test.test_logging as stdlib_tests
except ImportError:  # pragma: no cover - an interpreter without its test package
    stdlib_tests = None

#: Tests of the interpreter that racefree fails on purpose, with the reason.
DIFFERENT: dict[str, str] = {}


def _names() -> list[str]:
    if stdlib_tests is None:  # pragma: no cover
        return ["(no test package)"]
    loader = unittest.TestLoader()
    # Spelt test_pathlike_objects from Python 3.13 on.
    names = [f"HandlerTest.{n}" for n in ("test_path_objects", "test_pathlike_objects")
             if hasattr(stdlib_tests.HandlerTest, n)]
    for cls in ("RotatingFileHandlerTest", "TimedRotatingFileHandlerTest"):
        names += [f"{cls}.{n}" for n in loader.getTestCaseNames(getattr(stdlib_tests, cls))]
    return names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", _names())
def test_interpreter_handler_tests_pass_against_racefree(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One test of the interpreter's test.test_logging, with racefree's handler classes
    swapped into logging.handlers: it passes (or is a documented, deliberate difference)."""
    if stdlib_tests is None:  # pragma: no cover - e.g. Debian's python3 without python3-test
        pytest.skip("this interpreter has no test package (test.test_logging)")
    if name in DIFFERENT:
        pytest.skip(f"racefree differs on purpose: {DIFFERENT[name]}")
    monkeypatch.setattr(logging.handlers, "RotatingFileHandler", rl.RotatingFileHandler)
    monkeypatch.setattr(
        logging.handlers, "TimedRotatingFileHandler", rl.TimedRotatingFileHandler
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # The interpreter's tests start from a root logger without handlers (pytest adds some).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    suite = unittest.TestSuite([unittest.TestLoader().loadTestsFromName(name, stdlib_tests)])
    result = unittest.TestResult()
    suite.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert problems == [], "\n".join(problems)
    assert result.testsRun == 1 and not result.skipped, result.skipped
    # racefree's classes were the ones under test.
    assert logging.handlers.RotatingFileHandler is rl.RotatingFileHandler
