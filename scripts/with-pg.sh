#!/usr/bin/env bash
# Runs a command with a private PostgreSQL server on a free loopback port, then removes it.
# The command sees KM_TEST_PG_PORT, KM_TEST_PG_HOST and KM_TEST_PG_DIR (see tests/pg/pgctl.sh).
# Usage: scripts/with-pg.sh COMMAND [ARGS...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/km-pg.XXXXXX)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { "$root/tests/pg/pgctl.sh" destroy "$dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$root/tests/pg/pgctl.sh" start "$dir" "$port" >/dev/null
export KM_TEST_PG_PORT=$port KM_TEST_PG_HOST=127.0.0.1 KM_TEST_PG_DIR=$dir
export KM_TEST_PGCTL="$root/tests/pg/pgctl.sh"
"$@"
