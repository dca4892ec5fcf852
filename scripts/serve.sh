#!/usr/bin/env bash
# Serve the REST API with the embedded defaults (SQLite in ./var, model models/wagon-obb.pt).
#   HOST=0.0.0.0 PORT=8080 scripts/serve.sh    # any WAGON_* variable is honoured too (see README)
# API keys are required: on its first start (empty database) the server prints an admin key once, on stderr;
# WAGON_ADMIN_KEY=<32+ characters> sets that key instead. WAGON_AUTH=off scripts/serve.sh serves without keys
# (local demos only: anyone who reaches the port may do anything).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec .venv/bin/wagon-detector serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
