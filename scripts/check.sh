#!/usr/bin/env bash
# Runs every check: the test suite, ruff and mypy --strict.
# Creates .venv with the project and its dev extras on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy --strict src
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
