#!/usr/bin/env bash
# xDS control plane benchmark: N simulated proxies (bench/xds_load.c) against one kuma-cp on
# the memory store, with S services. Each proxy has a Dataplane (one inbound of service
# svc-(i % S), 5 outbounds), so it gets 5 listeners + 5 outbound clusters + EDS.
# Reports the reconnect storm (all N connecting at once) until every proxy holds a full config,
# the CP's RSS per connected proxy, and the time from a store change (an endpoint added to
# svc-0) until every affected proxy has it.
# Usage: bench/xds.sh [N=1000] [S=1000]. Loopback only; bounded by timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
svc=${2:-1000}
bin=build/release
make -s VARIANT=release all build/release/xds-load >/dev/null
tmp=$(mktemp -d)
cp_pid=
cleanup() { [ -n "$cp_pid" ] && kill "$cp_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$tmp/cp.log" "$KEEP_LOG"; cleanup' EXIT
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(port); diag=$(port); dp=$(port); plain=$(port)
KUMA_API_SERVER_HTTP_PORT=$api KUMA_DIAGNOSTICS_SERVER_PORT=$diag KUMA_DP_SERVER_PORT=$dp \
KUMA_DP_SERVER_PLAINTEXT_PORT=$plain KUMA_API_SERVER_HTTPS_ENABLED=false KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none \
KUMA_GENERAL_WORK_DIR=$tmp "$bin/kuma-cp" run --log-level ${CP_LOG:-warn} >"$tmp/cp.log" 2>&1 &
cp_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$diag/ready" >/dev/null && break; sleep 0.1; done
t0=$(date +%s.%N)
/usr/bin/python3 - "$api" "$n" "$svc" <<'PY'
import http.client, json, sys
api, n, svc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", api)
for i in range(n):
    addr = "127.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, (i & 255) or 1)
    outs = [{"port": 20000 + k, "tags": {"kuma.io/service": "svc-%d" % ((i * 7 + k * 13 + 1) % svc)}} for k in range(5)]
    dp = {"type": "Dataplane", "mesh": "default", "name": "dp-%d" % i,
          "networking": {"address": addr,
                         "inbound": [{"port": 8080, "servicePort": 18080, "tags": {"kuma.io/service": "svc-%d" % (i % svc), "kuma.io/protocol": "http"}}],
                         "outbound": outs}}
    c.request("PUT", "/meshes/default/dataplanes/dp-%d" % i, json.dumps(dp), {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status not in (200, 201):
        sys.exit("PUT dp-%d: %d" % (i, r.status))
PY
t1=$(date +%s.%N)
echo "setup: $n dataplanes, $svc services, registered in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
change="curl -fs -X PUT -H 'Content-Type: application/json' http://127.0.0.1:$api/meshes/default/dataplanes/extra -d '{\"type\":\"Dataplane\",\"mesh\":\"default\",\"name\":\"extra\",\"networking\":{\"address\":\"127.250.0.1\",\"inbound\":[{\"port\":8080,\"tags\":{\"kuma.io/service\":\"svc-0\",\"kuma.io/protocol\":\"http\"}}]}}' >/dev/null"
"$bin/xds-load" --port "$plain" --clients "$n" --cp-pid "$cp_pid" --change-cmd "$change" --timeout 120
affected=$(/usr/bin/python3 -c "print(sum(1 for i in range($n) if any((i*7+k*13+1) % $svc == 0 for k in range(5))))")
echo "affected_by_change: $affected proxies have svc-0 as an outbound"
