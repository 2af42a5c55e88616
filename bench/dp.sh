#!/usr/bin/env bash
# Data plane benchmark: the same nginx origin (a 1 KB file) measured direct and through three
# proxy pairs, each chained like a sidecar pair (client -> proxy A -> proxy B -> origin):
#   kuma    kuma-dp (web's outbound listener) -> kuma-dp (backend's inbound), configured by a
#           kuma-cp on the memory store over xDS
#   haproxy two Debian haproxy processes (mode http, keep-alive and connection reuse)
#   nginx   two Debian nginx processes (proxy_pass to a keep-alive upstream)
# Every proxy runs one worker thread (kuma-dp --concurrency 1, haproxy nbthread 1, nginx
# worker_processes 1). For each target:
#   fixed   wrk, 2 threads, 16 keep-alive connections, 1000 requests/s in total (paced by
#           bench/dp_pace.lua), D seconds: p50/p90/p99 latency (wrk --latency) and the CPU
#           time of the two proxy processes (/proc/PID/stat utime+stime) per request
#   max     wrk, 2 threads, 16 keep-alive connections, D seconds, no pacing: requests/s and CPU
#           per request
#   tcp     iperf3 (5 s, one stream) through a TCP proxy pair of the same kind: Gbit/s
# Plus the RSS of an idle kuma-dp whose Dataplane has 100 outbounds (100 services with one
# endpoint each, default --concurrency), and of the sidecar pair after the load.
# Loopback only, every wait bounded. Usage: bench/dp.sh [D=10]   (BENCH_SKIP_BUILD=1 skips make)
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
bin=build/release

need=()
for p in haproxy nginx-light libnginx-mod-stream wrk iperf3 curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -n "${BENCH_SKIP_BUILD:-}" ] || make -s VARIANT=release build/release/kuma-cp build/release/kuma-dp

tmp=$(mktemp -d /tmp/km-bench-dp.XXXXXX)
chmod 755 "$tmp" # the nginx workers run as www-data
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_TMP:-}" ] && echo "bench: kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
bg() { "$@" </dev/null >>"$tmp/bg.log" 2>&1 & pids+=($!); }
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
until_ok() { # seconds command...: bounded poll
    local s=$1
    shift
    for _ in $(seq $((s * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: timed out waiting for: $*" >&2
    tail -30 "$tmp/bg.log" >&2
    exit 1
}

# ---- origin: nginx with a 1 KB file, iperf3 server ----
origin=$(port); iperf=$(port)
mkdir -p "$tmp/www"
head -c 1024 /dev/zero | tr '\0' 'k' >"$tmp/www/1k"
ngx_common="pid PIDFILE; error_log $tmp/nginx-err.log; daemon off; worker_processes 1;
events { worker_connections 4096; }"
cat >"$tmp/origin.conf" <<EOF
${ngx_common//PIDFILE/$tmp/origin.pid}
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$origin; root $tmp/www; } }
EOF
bg nginx -c "$tmp/origin.conf" -p "$tmp"
bg iperf3 -s -B 127.0.0.1 -p "$iperf"
until_ok 10 curl -fs "http://127.0.0.1:$origin/1k"

# ---- kuma: kuma-cp + two kuma-dp ----
api=$(port); diag=$(port); dps=$(port); plain=$(port)
KUMA_API_SERVER_HTTP_PORT=$api KUMA_DIAGNOSTICS_SERVER_PORT=$diag KUMA_DP_SERVER_PORT=$dps \
KUMA_DP_SERVER_PLAINTEXT_PORT=$plain KUMA_API_SERVER_HTTPS_ENABLED=false \
KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none \
KUMA_API_SERVER_HTTPS_PORT=$(port) KUMA_INTER_CP_SERVER_PORT=$(port) \
KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT=$(port) KUMA_MONITORING_ASSIGNMENT_SERVER_PORT=$(port) \
KUMA_GENERAL_WORK_DIR=$tmp/cp bg "$bin/kuma-cp" run --log-level warn
until_ok 30 curl -fs "http://127.0.0.1:$diag/ready"
k_out=$(port); k_out_tcp=$(port); k_in=$(port); k_in_tcp=$(port)
cat >"$tmp/backend.yaml" <<EOF
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: $k_in
    servicePort: $origin
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
  - port: $k_in_tcp
    servicePort: $iperf
    tags: {kuma.io/service: stream, kuma.io/protocol: tcp}
EOF
cat >"$tmp/web.yaml" <<EOF
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: $(port)
    servicePort: $(port)
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: $k_out
    tags: {kuma.io/service: backend}
  - port: $k_out_tcp
    tags: {kuma.io/service: stream}
EOF
kdp() { # name yaml admin [more flags]
    local n=$1 y=$2 a=$3
    shift 3
    "$bin/kuma-dp" run --cp-address "http://127.0.0.1:$plain" --dataplane-file "$y" \
        --admin-port "$a" --drain-time 1s --log-level warn "$@" </dev/null >"$tmp/$n.log" 2>&1 &
    pids+=($!)
}
kb_admin=$(port); kw_admin=$(port)
kdp kuma-backend "$tmp/backend.yaml" "$kb_admin" --concurrency 1
kb_pid=${pids[-1]}
kdp kuma-web "$tmp/web.yaml" "$kw_admin" --concurrency 1
kw_pid=${pids[-1]}
until_ok 30 curl -fs "http://127.0.0.1:$k_out/1k"
until_ok 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$k_out_tcp"

# ---- haproxy pair ----
h_a=$(port); h_b=$(port); h_a_tcp=$(port); h_b_tcp=$(port)
hcfg() { # name front back front_tcp back_tcp
    cat >"$tmp/$1.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend f
  mode http
  bind 127.0.0.1:$2
  default_backend b
backend b
  mode http
  http-reuse always
  server s1 127.0.0.1:$3
listen t
  mode tcp
  bind 127.0.0.1:$4
  server s1 127.0.0.1:$5
EOF
}
hcfg haproxy-b "$h_b" "$origin" "$h_b_tcp" "$iperf"
hcfg haproxy-a "$h_a" "$h_b" "$h_a_tcp" "$h_b_tcp"
bg haproxy -db -f "$tmp/haproxy-b.cfg"
hb_pid=${pids[-1]}
bg haproxy -db -f "$tmp/haproxy-a.cfg"
ha_pid=${pids[-1]}
until_ok 10 curl -fs "http://127.0.0.1:$h_a/1k"

# ---- nginx pair ----
n_a=$(port); n_b=$(port); n_a_tcp=$(port); n_b_tcp=$(port)
ncfg() { # name front back front_tcp back_tcp
    cat >"$tmp/$1.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
${ngx_common//PIDFILE/$tmp/$1.pid}
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$3; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$2;
    location / { proxy_pass http://up; proxy_http_version 1.1;
                 proxy_set_header Connection ""; proxy_buffering on; }
  }
}
stream { server { listen 127.0.0.1:$4; proxy_pass 127.0.0.1:$5; } }
EOF
}
ncfg nginx-b "$n_b" "$origin" "$n_b_tcp" "$iperf"
ncfg nginx-a "$n_a" "$n_b" "$n_a_tcp" "$n_b_tcp"
bg nginx -c "$tmp/nginx-b.conf" -p "$tmp"
bg nginx -c "$tmp/nginx-a.conf" -p "$tmp"
until_ok 10 curl -fs "http://127.0.0.1:$n_a/1k"
# nginx: the master (our child) and its worker
nginx_pids() { local m; m=$(cat "$tmp/$1.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }

# ---- measurements ----
cpu_ticks() { # pids... -> utime+stime summed, in clock ticks
    local t=0 p f
    for p in "$@"; do
        read -r -a f <"/proc/$p/stat"
        t=$((t + f[13] + f[14]))
    done
    echo "$t"
}
res=$tmp/results
: >"$res"
# run NAME URL TCPPORT PIDS...
run() {
    local name=$1 url=$2 tcp=$3
    shift 3
    local c0 c1 out
    wrk -t 2 -c 16 -d 1s "$url" >/dev/null # warm-up
    c0=$(cpu_ticks "$@")
    out=$(wrk -t 2 -c 16 -d "${dur}s" --latency -s bench/dp_pace.lua "$url" -- 1000 2)
    c1=$(cpu_ticks "$@")
    echo "$out" >"$tmp/$name.fixed.txt"
    echo "$name fixed $(echo "$out" | awk '/^ +50%/{p50=$2} /^ +90%/{p90=$2} /^ +99%/{p99=$2}
        /^Requests\/sec/{r=$2} /requests in/{n=$1} /Non-2xx|Socket errors/{e=e" "$0}
        END{print p50, p90, p99, r, n, (e==""?"-":"err")}') $((c1 - c0))" >>"$res"
    c0=$(cpu_ticks "$@")
    out=$(wrk -t 2 -c 16 -d "${dur}s" "$url")
    c1=$(cpu_ticks "$@")
    echo "$out" >"$tmp/$name.max.txt"
    echo "$name max $(echo "$out" | awk '/^Requests\/sec/{r=$2} /requests in/{n=$1}
        /Non-2xx|Socket errors/{e=e" "$0} END{print r, n, (e==""?"-":"err")}') $((c1 - c0))" >>"$res"
    out=$(iperf3 -c 127.0.0.1 -p "$tcp" -t 5 -J 2>&1 || true)
    echo "$out" >"$tmp/$name.iperf.json"
    echo "$name tcp $(echo "$out" | /usr/bin/python3 -c 'import json,sys
try: print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception: print("err")')" >>"$res"
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
anon_kb() { awk '/^RssAnon/{print $2}' "/proc/$1/status"; }

echo "bench: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), ${dur}s per run" >&2
run direct "http://127.0.0.1:$origin/1k" "$iperf"
echo "direct done" >&2
run kuma "http://127.0.0.1:$k_out/1k" "$k_out_tcp" "$kw_pid" "$kb_pid"
echo "kuma done" >&2
run haproxy "http://127.0.0.1:$h_a/1k" "$h_a_tcp" "$ha_pid" "$hb_pid"
echo "haproxy done" >&2
# shellcheck disable=SC2046
run nginx "http://127.0.0.1:$n_a/1k" "$n_a_tcp" $(nginx_pids nginx-a) $(nginx_pids nginx-b)
echo "nginx done" >&2
for n in kuma:"$kw_pid $kb_pid" haproxy:"$ha_pid $hb_pid" \
         nginx:"$(nginx_pids nginx-a) $(nginx_pids nginx-b)"; do
    r=0; h=0; a=0
    for p in ${n#*:}; do
        r=$((r + $(rss_kb "$p"))); h=$((h + $(hwm_kb "$p"))); a=$((a + $(anon_kb "$p")))
    done
    echo "${n%%:*} rss $r $h $a" >>"$res"
done

# ---- idle kuma-dp with 100 outbounds ----
/usr/bin/python3 - "$api" "$tmp/big.yaml" <<'PY'
import http.client, json, sys
api, out = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
for i in range(100):
    dp = {"type": "Dataplane", "mesh": "default", "name": "svc-%d-1" % i,
          "networking": {"address": "127.0.1.%d" % (i + 1), "inbound": [{"port": 8080,
              "servicePort": 18080, "tags": {"kuma.io/service": "svc-%d" % i,
                                             "kuma.io/protocol": "http"}}]}}
    c.request("PUT", "/meshes/default/dataplanes/svc-%d-1" % i, json.dumps(dp),
              {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
import socket
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    return p
y = ["type: Dataplane", "mesh: default", "name: big-1", "networking:", "  address: 127.0.0.1",
     "  inbound:", "  - port: %d" % port(), "    servicePort: %d" % port(),
     "    tags: {kuma.io/service: big, kuma.io/protocol: http}", "  outbound:"]
for i in range(100):
    y += ["  - port: %d" % port(), "    tags: {kuma.io/service: svc-%d}" % i]
open(out, "w").write("\n".join(y) + "\n")
PY
big_admin=$(port)
kdp kuma-big "$tmp/big.yaml" "$big_admin"
big_pid=${pids[-1]}
clusters() { curl -fs "http://127.0.0.1:$big_admin/clusters" | grep -c '::health_flags::healthy'; }
full() { [ "$(clusters)" -ge 101 ]; }
until_ok 30 full
sleep 2
echo "kuma-idle-100 rss $(rss_kb "$big_pid") $(hwm_kb "$big_pid") $(anon_kb "$big_pid") $(clusters)" >>"$res"

/usr/bin/python3 - "$res" "$dur" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], {})[f[1]] = f[2:]
dur = int(sys.argv[2])
def us(v):  # wrk latency "123.00us" / "1.23ms" / "1.00s" -> microseconds
    for suf, m in (("us", 1), ("ms", 1000), ("s", 1000000)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * m
    return float("nan")
import os
hz = os.sysconf("SC_CLK_TCK")
names = ["direct", "kuma", "haproxy", "nginx"]
lat = {n: [us(x) for x in rows[n]["fixed"][:3]] for n in names}
print("| target | p50 µs | p90 µs | p99 µs | added p99 µs | rps @fixed | max rps | max rps / direct | max rps / haproxy | CPU µs/req @1000 rps | CPU µs/req @max | TCP Gbit/s | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    fx, mx, tcp = rows[n]["fixed"], rows[n]["max"], rows[n]["tcp"][0]
    p50, p90, p99 = lat[n]
    added = p99 - lat["direct"][2]
    rps = float(mx[0])
    cpu_fixed = int(fx[6]) / hz * 1e6 / max(1, int(fx[4])) if n != "direct" else None
    cpu_max = int(mx[3]) / hz * 1e6 / max(1, int(mx[1])) if n != "direct" else None
    err = "yes" if fx[5] != "-" or mx[2] != "-" else "none"
    print("| %s | %.0f | %.0f | %.0f | %s | %.0f | %.0f | %.2f | %s | %s | %s | %s | %s |" % (
        n, p50, p90, p99, "-" if n == "direct" else "%+.0f" % added, float(fx[3]), rps,
        rps / float(rows["direct"]["max"][0]),
        "%.2f" % (rps / float(rows["haproxy"]["max"][0])) if n != "direct" else "-",
        "-" if cpu_fixed is None else "%.0f" % cpu_fixed,
        "-" if cpu_max is None else "%.0f" % cpu_max, tcp, err))
ka = lat["kuma"][2] - lat["direct"][2]
ha = lat["haproxy"][2] - lat["direct"][2]
print()
print("added p99, kuma pair / haproxy pair: %s" % ("%.2f" % (ka / ha) if ha > 0 else "n/a (haproxy added <= 0)"))
for n in ("kuma", "haproxy", "nginx"):
    r = rows[n]["rss"]
    print("RSS of the %s pair (2 processes) after the load: %.1f MB (peak %.1f MB, private anonymous %.1f MB)" % (n, int(r[0]) / 1024, int(r[1]) / 1024, int(r[2]) / 1024))
r = rows["kuma-idle-100"]["rss"]
print("RSS of an idle kuma-dp with 100 outbounds (%s endpoints healthy): %.1f MB (peak %.1f MB, private anonymous %.1f MB)" % (r[3], int(r[0]) / 1024, int(r[1]) / 1024, int(r[2]) / 1024))
PY
