#!/usr/bin/env bash
# Re-vendor the dashboard's chart library (uPlot) from the npm registry into app/api/static/vendor/uplot/.
# The service itself never downloads anything: the files are committed.
set -euo pipefail
version=${UPLOT_VERSION:-1.6.32}
dest="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/app/api/static/vendor/uplot"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$dest/"
echo "uPlot $version vendored into $dest"
