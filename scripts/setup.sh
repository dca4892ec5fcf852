#!/usr/bin/env bash
# Create (if absent) and fill the project's virtual environment in .venv. Safe to run again and again: it installs
# on the first run and again only when pyproject.toml or this script change (so later runs work offline).
#   PYTHON=python3.11 scripts/setup.sh     # interpreter used to create .venv (default: python3)
#   WAGON_SETUP_FORCE=1 scripts/setup.sh   # reinstall even if nothing changed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("${PYTHON:-python3}" --version)"
  "${PYTHON:-python3}" -m venv .venv
fi

stamp=.venv/.wagon-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "${WAGON_SETUP_FORCE:-0}" != 1 ] && [ -x .venv/bin/wagon-detector ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

echo "setup: installing dependencies into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned, so the project's own install never pulls a different build
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "$want" > "$stamp"
