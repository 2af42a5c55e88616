#!/usr/bin/env bash
# API server throughput: GET and PUT of one Dataplane through kuma-cp's REST API, on the memory
# store and on PostgreSQL, with hey; baseline in the same run: nginx serving the same JSON body
# as a static file (the cost of HTTP alone on this machine).
# Usage: bench/api.sh [seconds-per-run] (default 5); concurrency BENCH_C (default 16).
# Prints a Markdown table for docs/benchmarks.md. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conc=${BENCH_C:-16}
bin=build/release
command -v hey >/dev/null && command -v nginx >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey nginx-light >/dev/null
}
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
    [ -d "$tmp/pg" ] && tests/pg/pgctl.sh stop "$tmp/pg" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/ready" >/dev/null && return 0; sleep 0.1; done; return 1; }
rps() { hey "$@" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
p99() { hey "$@" 2>&1 | awk '/99% in/ {print $3*1000}'; }

dp='{"type":"Dataplane","mesh":"default","name":"dp-1","networking":{"address":"127.0.0.1","inbound":[{"port":8080,"servicePort":18080,"tags":{"kuma.io/service":"web","kuma.io/protocol":"http"}}]}}'
echo "$dp" > "$tmp/dp.json"

start_cp() { # $1 = store type; prints the API port
    local api diag
    api=$(port); diag=$(port)
    KUMA_API_SERVER_HTTP_PORT=$api KUMA_DIAGNOSTICS_SERVER_PORT=$diag KUMA_DP_SERVER_PORT=$(port) \
        KUMA_API_SERVER_HTTPS_ENABLED=false KUMA_STORE_TYPE=$1 KUMA_STORE_POSTGRES_PORT=${PGPORT:-5432} \
        KUMA_STORE_POSTGRES_HOST=127.0.0.1 "$bin/kuma-cp" run --log-level error >"$tmp/cp-$1.log" 2>&1 &
    pids+=($!)
    wait_ready "$diag" || { cat "$tmp/cp-$1.log" >&2; exit 1; }
    curl -fs -X PUT -H 'Content-Type: application/json' --data-binary @"$tmp/dp.json" \
        "http://127.0.0.1:$api/meshes/default/dataplanes/dp-1" >/dev/null
    echo "$api"
}

# Baseline: nginx static file with the same JSON body as a GET answer.
nport=$(port)
mkdir -p "$tmp/www"
curl -fs "http://127.0.0.1:$(start_cp memory)/meshes/default/dataplanes/dp-1" > "$tmp/www/dp.json"
cat > "$tmp/nginx.conf" <<NGX
worker_processes 1; daemon on; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$nport; root $tmp/www; } }
NGX
nginx -c "$tmp/nginx.conf"
sleep 0.3
base=$(rps -z "${secs}s" -c "$conc" "http://127.0.0.1:$nport/dp.json")

mem=$(start_cp memory)
mget=$(rps -z "${secs}s" -c "$conc" "http://127.0.0.1:$mem/meshes/default/dataplanes/dp-1")
mput=$(rps -z "${secs}s" -c "$conc" -m PUT -T application/json -D "$tmp/dp.json" "http://127.0.0.1:$mem/meshes/default/dataplanes/dp-1")

pget=n/a; pput=n/a
if [ -x tests/pg/pgctl.sh ]; then
    PGPORT=$(port); export PGPORT
    tests/pg/pgctl.sh start "$tmp/pg" "$PGPORT" >/dev/null
    KUMA_STORE_TYPE=postgres KUMA_STORE_POSTGRES_PORT=$PGPORT KUMA_STORE_POSTGRES_HOST=127.0.0.1 "$bin/kuma-cp" migrate up >/dev/null 2>&1
    pg=$(start_cp postgres)
    pget=$(rps -z "${secs}s" -c "$conc" "http://127.0.0.1:$pg/meshes/default/dataplanes/dp-1")
    pput=$(rps -z "${secs}s" -c "$conc" -m PUT -T application/json -D "$tmp/dp.json" "http://127.0.0.1:$pg/meshes/default/dataplanes/dp-1")
fi
ratio() { awk -v a="$1" -v b="$base" 'BEGIN { if (a+0 > 0) printf "%.2f", a/b; else print "n/a" }'; }
echo "| run ($conc connections, ${secs}s each) | requests/s | ratio to nginx static |"
echo "| --- | ---: | ---: |"
echo "| nginx static file, same JSON (baseline) | $base | 1.00 |"
echo "| kuma-cp memory: GET dataplane | $mget | $(ratio "$mget") |"
echo "| kuma-cp memory: PUT dataplane (update) | $mput | $(ratio "$mput") |"
echo "| kuma-cp postgres: GET dataplane | $pget | $(ratio "$pget") |"
echo "| kuma-cp postgres: PUT dataplane (update) | $pput | $(ratio "$pput") |"
