#!/bin/sh
# Starts and stops a throw-away PostgreSQL server for the tests.
#
#   tests/pg/pgctl.sh start DIR PORT   initializes DIR on first use (data in DIR/data, sockets
#                                      in DIR, log in DIR/postgres.log), starts the server on
#                                      127.0.0.1:PORT and creates user `kuma` (password `kuma`)
#                                      and database `kuma` owned by it. Starting an existing DIR
#                                      again keeps its data (used to test outages).
#   tests/pg/pgctl.sh stop DIR         stops the server (fast shutdown); the data stays.
#   tests/pg/pgctl.sh destroy DIR      stops the server if it runs and removes DIR.
#   tests/pg/pgctl.sh status DIR       exit 0 when the server runs.
#
# As root the server runs as the `postgres` user (PostgreSQL refuses to run as root); when DIR
# is not reachable by that user, the data lives in a private directory under /tmp and DIR/data
# is a symbolic link to it. The server binaries are looked up in PG_BIN, then pg_config, then
# /usr/lib/postgresql/*/bin.
set -eu

usage() {
    echo "usage: $0 start DIR PORT | stop DIR | destroy DIR | status DIR" >&2
    exit 2
}

find_bin() {
    if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/pg_ctl" ]; then
        echo "$PG_BIN"
        return
    fi
    if command -v pg_config >/dev/null 2>&1; then
        b=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$b" ] && [ -x "$b/pg_ctl" ]; then
            echo "$b"
            return
        fi
    fi
    for b in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$b/pg_ctl" ]; then
            echo "$b"
            return
        fi
    done
    echo "pgctl: PostgreSQL server binaries not found (set PG_BIN)" >&2
    exit 1
}

# Runs a command as the database owner.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The data directory as the server user reaches it (DIR/data may be a link).
pgdata() {
    if [ -L "$dir/data" ]; then
        readlink "$dir/data"
    else
        echo "$dir/data"
    fi
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
BIN=$(find_bin)

case "$cmd" in
start)
    [ $# -eq 3 ] || usage
    port=$3
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -e "$dir/data/PG_VERSION" ]; then
        if [ "$(id -u)" = 0 ]; then
            chown postgres: "$dir"
            if ! runuser -u postgres -- test -w "$dir" -a -x "$dir"; then
                priv=$(mktemp -d /tmp/km-pg.XXXXXX)
                chown postgres: "$priv"
                rm -rf "$dir/data"
                ln -s "$priv" "$dir/data"
            fi
        fi
        if [ ! -L "$dir/data" ]; then
            mkdir -p "$dir/data"
            [ "$(id -u)" = 0 ] && chown postgres: "$dir/data"
        fi
        as_pg "$BIN/initdb" -D "$(pgdata)" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    # The socket goes next to the data (always reachable by the server user).
    sock=$(cd "$dir/data" && pwd -P)
    if ! as_pg "$BIN/pg_ctl" -D "$sock" -l "$sock/postgres.log" -w -t 60 \
        -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null; then
        tail -n 20 "$sock/postgres.log" >&2 || true
        exit 1
    fi
    psql() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres "$@"; }
    if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'kuma'")" != 1 ]; then
        psql -d postgres -c "CREATE ROLE kuma LOGIN PASSWORD 'kuma' CREATEDB"
    fi
    if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'kuma'")" != 1 ]; then
        psql -d postgres -c "CREATE DATABASE kuma OWNER kuma"
    fi
    ;;
stop)
    if [ -e "$dir/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$(pgdata)" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
destroy)
    if [ -e "$dir/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$(pgdata)" -m immediate -w -t 60 stop >/dev/null || true
    fi
    if [ -L "$dir/data" ]; then
        rm -rf "$(readlink "$dir/data")"
    fi
    rm -rf "$dir"
    ;;
status)
    as_pg "$BIN/pg_ctl" -D "$(pgdata)" status >/dev/null 2>&1
    ;;
*)
    usage
    ;;
esac
