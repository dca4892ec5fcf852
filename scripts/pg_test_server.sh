#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests (never for data you want to keep).
#
#   scripts/pg_test_server.sh run [CMD...]   start one, run CMD (default: scripts/test.sh) with
#                                            WAGON_TEST_POSTGRES_URL exported, stop it and delete it afterwards
#   scripts/pg_test_server.sh start          start one; prints `export WAGON_TEST_POSTGRES_URL=...` (and its
#                                            directory, for stop): eval "$(scripts/pg_test_server.sh start)"
#   scripts/pg_test_server.sh stop DIR       stop the one started in DIR and delete DIR
#
# Needs the Debian/Ubuntu `postgresql` package (binaries in /usr/lib/postgresql/<version>/bin) or initdb and
# pg_ctl on PATH. PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (created by
# the package). The cluster lives in a temporary directory, listens on 127.0.0.1 only (port WAGON_PG_PORT,
# default: a free one) and trusts local connections of its superuser `wagon`; the tests create and drop their own
# databases in it.
set -euo pipefail

pg_bin() {
  if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
  echo "pg_test_server: PostgreSQL binaries not found (apt-get install postgresql)" >&2
  return 1
}

as_owner() {  # run a command as the cluster's owner: postgres when we are root, else ourselves
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local bin dir port
  bin=$(pg_bin)
  dir=$(mktemp -d /tmp/wagon-pg.XXXXXX)
  port=${WAGON_PG_PORT:-$(free_port)}
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "pg_test_server: no postgres user to run the server as" >&2; return 1; }
    chown postgres "$dir"
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U wagon --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -p $port -h 127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; return 1; }
  echo "$port" >"$dir/port"
  PG_DIR=$dir
  PG_URL="postgresql+psycopg://wagon@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1 bin
  bin=$(pg_bin)
  [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start)
    start
    echo "export WAGON_TEST_POSTGRES_URL=$PG_URL"
    echo "export WAGON_TEST_POSTGRES_DIR=$PG_DIR  # stop with: $0 stop $PG_DIR"
    ;;
  stop)
    [ -n "${2:-}" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    stop "$2"
    ;;
  run)
    shift
    start
    trap 'stop "$PG_DIR"' EXIT
    echo "pg_test_server: PostgreSQL on 127.0.0.1:$(cat "$PG_DIR/port") ($PG_DIR)"
    export WAGON_TEST_POSTGRES_URL=$PG_URL
    if [ $# -eq 0 ]; then set -- "$(dirname "${BASH_SOURCE[0]}")/test.sh"; fi
    "$@"
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
