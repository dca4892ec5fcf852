#!/usr/bin/env bash
# Serve the REST API with the embedded defaults (SQLite in ./var, model models/wagon-obb.pt).
#   HOST=0.0.0.0 PORT=8080 scripts/serve.sh    # any WAGON_* variable is honoured too (see README)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec .venv/bin/wagon-detector serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
