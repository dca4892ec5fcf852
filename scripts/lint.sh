#!/usr/bin/env bash
# Lint, formatting, types and import contracts (all configured in pyproject.toml); CI runs it before the tests.
#   scripts/lint.sh          check everything, exit non-zero on any finding
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
status=0
echo "lint: ruff check" && .venv/bin/ruff check . || status=1
echo "lint: ruff format --check" && .venv/bin/ruff format --check . || status=1
echo "lint: mypy" && .venv/bin/mypy || status=1
echo "lint: lint-imports" && .venv/bin/lint-imports --no-cache || status=1
echo "lint: settings table in docs/deployment.md" && .venv/bin/python -m app.core.settings_doc --check || status=1
exit "$status"
