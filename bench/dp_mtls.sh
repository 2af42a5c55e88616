#!/usr/bin/env bash
# mTLS benchmark (issue 5). One nginx origin (a 1 KB file, as in bench/dp.sh), measured direct
# and through four proxy pairs chained like sidecars (client -> proxy A -> proxy B -> origin):
#   kuma         two kuma-dp in mesh "default" (no mTLS), configured by kuma-cp over xDS
#   kuma-mtls    two kuma-dp in mesh "secure" (builtin CA, STRICT, allow-all TrafficPermission):
#                TLS 1.3 between the sidecars with certificates from the CP over SDS
#   haproxy      two haproxy processes, plaintext between them (reference)
#   haproxy-tls  two haproxy processes, mutual TLS between them (certificates issued by the
#                mesh CA of "secure": ECDSA P-256)
# Every proxy has one worker thread (kuma-dp --concurrency 1, haproxy nbthread 1). For each
# target: wrk -t 2 -c 16 --latency paced to 1000 requests/s (bench/dp_pace.lua) for D seconds:
# p50/p90/p99 and CPU of both proxy processes (/proc/PID/stat utime+stime) per request.
#
# Then full TLS 1.3 handshakes (build/release/tls-handshake: one connection each, no
# resumption, client certificate from the mesh CA, ECDSA P-256) against
#   kuma-dp     the inbound listener of kuma-mtls's backend sidecar (--concurrency 1)
#   s_server    openssl s_server -www (one process, serial)
#   nginx       nginx with ssl, worker_processes 1
# all three with a server certificate from the same mesh CA and requiring a client certificate
# signed by it: handshakes/s (wall, one client thread) and server CPU per handshake
# (-> handshakes/s per core). And the CA: build/release/ca-bench.
#
# Every measurement is repeated R times (rounds, targets interleaved). Loopback only, every wait
# bounded. Usage: bench/dp_mtls.sh [D=10] [R=2] [N_HANDSHAKES=2000]
#   BENCH_SKIP_BUILD=1 skips make; BENCH_BIN=dir takes kuma-cp/kuma-dp from another build.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
rounds=${2:-2}
nhs=${3:-2000}
bin=${BENCH_BIN:-build/release}
tools=build/release

need=()
for p in haproxy nginx-light wrk openssl curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    make -s VARIANT=release "$tools/tls-handshake" "$tools/ca-bench"
    [ -n "${BENCH_BIN:-}" ] || make -s VARIANT=release build/release/kuma-cp build/release/kuma-dp
fi

tmp=$(mktemp -d /tmp/km-bench-mtls.XXXXXX)
chmod 755 "$tmp" # the nginx workers run as www-data
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP_TMP:-}" ]; then echo "bench: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
bg() { "$@" </dev/null >>"$tmp/bg.log" 2>&1 & pids+=($!); }
port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0))
print(s.getsockname()[1])'
}
until_ok() { # seconds command...: bounded poll
    local s=$1
    shift
    for _ in $(seq $((s * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: timed out waiting for: $*" >&2
    tail -30 "$tmp/bg.log" >&2
    for f in "$tmp"/kuma-*.log; do echo "== $f" >&2; tail -10 "$f" >&2; done
    exit 1
}

# ---- origin: nginx with a 1 KB file ----
origin=$(port)
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
until_ok 10 curl -fs "http://127.0.0.1:$origin/1k"

# ---- kuma-cp, mesh "secure" with mTLS ----
api=$(port); diag=$(port); dps=$(port); plain=$(port)
KUMA_API_SERVER_HTTP_PORT=$api KUMA_DIAGNOSTICS_SERVER_PORT=$diag KUMA_DP_SERVER_PORT=$dps \
KUMA_DP_SERVER_PLAINTEXT_PORT=$plain KUMA_API_SERVER_HTTPS_ENABLED=false \
KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none \
KUMA_API_SERVER_HTTPS_PORT=$(port) KUMA_INTER_CP_SERVER_PORT=$(port) \
KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT=$(port) KUMA_MONITORING_ASSIGNMENT_SERVER_PORT=$(port) \
KUMA_GENERAL_WORK_DIR=$tmp/cp bg "$bin/kuma-cp" run --log-level warn
until_ok 30 curl -fs "http://127.0.0.1:$diag/ready"
capi() { # method path [json]
    curl -fsS -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} \
        "http://127.0.0.1:$api$2" >/dev/null
}
capi PUT /meshes/secure '{"type":"Mesh","name":"secure","mtls":{"enabledBackend":"ca-1",
  "backends":[{"name":"ca-1","type":"builtin"}]}}'
capi PUT /meshes/secure/traffic-permissions/allow-all '{"type":"TrafficPermission",
  "mesh":"secure","name":"allow-all","sources":[{"match":{"kuma.io/service":"*"}}],
  "destinations":[{"match":{"kuma.io/service":"*"}}]}'
secret() { # mesh name file: the secret's data, base64-decoded
    curl -fsS "http://127.0.0.1:$api/meshes/$1/secrets/$2" |
        /usr/bin/python3 -c 'import base64, json, sys
sys.stdout.write(base64.b64decode(json.load(sys.stdin)["data"]).decode())' >"$3"
}
get_ca() {
    secret secure secure.ca-builtin-cert-ca-1 "$tmp/ca.pem" &&
        secret secure secure.ca-builtin-key-ca-1 "$tmp/ca.key"
}
until_ok 10 get_ca

# ---- four kuma-dp: a plaintext pair in "default", an mTLS pair in "secure" ----
dp_yaml() { # file mesh name inbound_port service_port service [outbound_port outbound_service]
    {
        printf 'type: Dataplane\nmesh: %s\nname: %s\nnetworking:\n  address: 127.0.0.1\n' "$2" "$3"
        printf '  inbound:\n  - port: %s\n    servicePort: %s\n' "$4" "$5"
        printf '    tags: {kuma.io/service: %s, kuma.io/protocol: http}\n' "$6"
        if [ $# -ge 8 ]; then
            printf '  outbound:\n  - port: %s\n    tags: {kuma.io/service: %s}\n' "$7" "$8"
        fi
    } >"$1"
}
kdp() { # name yaml admin
    "$bin/kuma-dp" run --cp-address "http://127.0.0.1:$plain" --dataplane-file "$2" \
        --admin-port "$3" --drain-time 1s --log-level warn --concurrency 1 \
        </dev/null >"$tmp/$1.log" 2>&1 &
    pids+=($!)
}
k_out=$(port); k_in=$(port); s_out=$(port); s_in=$(port)
kb_admin=$(port); kw_admin=$(port); sb_admin=$(port); sw_admin=$(port)
dp_yaml "$tmp/kb.yaml" default backend-1 "$k_in" "$origin" backend
dp_yaml "$tmp/kw.yaml" default web-1 "$(port)" "$(port)" web "$k_out" backend
dp_yaml "$tmp/sb.yaml" secure backend-1 "$s_in" "$origin" backend
dp_yaml "$tmp/sw.yaml" secure web-1 "$(port)" "$(port)" web "$s_out" backend
kdp kuma-backend "$tmp/kb.yaml" "$kb_admin"; kb_pid=${pids[-1]}
kdp kuma-web "$tmp/kw.yaml" "$kw_admin"; kw_pid=${pids[-1]}
kdp kuma-mtls-backend "$tmp/sb.yaml" "$sb_admin"; sb_pid=${pids[-1]}
kdp kuma-mtls-web "$tmp/sw.yaml" "$sw_admin"; sw_pid=${pids[-1]}
until_ok 30 curl -fs "http://127.0.0.1:$k_out/1k"
until_ok 30 curl -fs "http://127.0.0.1:$s_out/1k"
ssl_hs() { # admin port -> sum of *.ssl.handshake
    curl -fs "http://127.0.0.1:$1/stats" | awk -F': ' '/\.ssl\.handshake: /{s+=$2} END{print s+0}'
}
mtls_on() { curl -fs "http://127.0.0.1:$s_out/1k" && [ "$(ssl_hs "$sb_admin")" -gt 0 ]; }
until_ok 30 mtls_on
# on the wire: plaintext to the mTLS inbound must not get the file
if curl -fs -m 3 "http://127.0.0.1:$s_in/1k" >/dev/null 2>&1; then
    echo "bench: the mTLS inbound answered plaintext" >&2
    exit 1
fi

# ---- certificates from the mesh CA for the other servers and the clients ----
hs=$tools/tls-handshake
"$hs" issue "$tmp/ca.pem" "$tmp/ca.key" secure backend "$tmp/srv.pem" "$tmp/srv.key" 86400
"$hs" issue "$tmp/ca.pem" "$tmp/ca.key" secure web "$tmp/cli.pem" "$tmp/cli.key" 86400
cat "$tmp/srv.pem" "$tmp/srv.key" >"$tmp/haproxy-b.pem"
cat "$tmp/cli.pem" "$tmp/cli.key" >"$tmp/haproxy-a.pem"
chmod 644 "$tmp"/*.key "$tmp"/*.pem

# ---- haproxy pairs: plaintext and mutual TLS between A and B ----
h_a=$(port); h_b=$(port); t_a=$(port); t_b=$(port)
hcfg() { # name front back [bind_opts] [server_opts]
    cat >"$tmp/$1.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend f
  mode http
  bind 127.0.0.1:$2 ${4:-}
  default_backend b
backend b
  mode http
  http-reuse always
  server s1 127.0.0.1:$3 ${5:-}
EOF
}
hcfg haproxy-b "$h_b" "$origin"
hcfg haproxy-a "$h_a" "$h_b"
hcfg haproxy-tls-b "$t_b" "$origin" "ssl crt $tmp/haproxy-b.pem ca-file $tmp/ca.pem verify required"
hcfg haproxy-tls-a "$t_a" "$t_b" "" "ssl crt $tmp/haproxy-a.pem ca-file $tmp/ca.pem verify required"
bg haproxy -db -f "$tmp/haproxy-b.cfg"; hb_pid=${pids[-1]}
bg haproxy -db -f "$tmp/haproxy-a.cfg"; ha_pid=${pids[-1]}
bg haproxy -db -f "$tmp/haproxy-tls-b.cfg"; tb_pid=${pids[-1]}
bg haproxy -db -f "$tmp/haproxy-tls-a.cfg"; ta_pid=${pids[-1]}
until_ok 10 curl -fs "http://127.0.0.1:$h_a/1k"
until_ok 10 curl -fs "http://127.0.0.1:$t_a/1k"
if curl -fs -m 3 "http://127.0.0.1:$t_b/1k" >/dev/null 2>&1; then
    echo "bench: haproxy-tls-b answered plaintext" >&2
    exit 1
fi

# ---- TLS servers for the handshake test, on the same certificates ----
ss_port=$(port); ng_port=$(port)
bg openssl s_server -accept "127.0.0.1:$ss_port" -cert "$tmp/srv.pem" -key "$tmp/srv.key" \
    -CAfile "$tmp/ca.pem" -Verify 1 -tls1_3 -www -quiet -naccept 100000000
ss_pid=${pids[-1]}
cat >"$tmp/nginx-tls.conf" <<EOF
${ngx_common//PIDFILE/$tmp/nginx-tls.pid}
http { access_log off;
  server { listen 127.0.0.1:$ng_port ssl; root $tmp/www;
    ssl_certificate $tmp/srv.pem; ssl_certificate_key $tmp/srv.key; ssl_protocols TLSv1.3;
    ssl_verify_client on; ssl_client_certificate $tmp/ca.pem; } }
EOF
bg nginx -c "$tmp/nginx-tls.conf" -p "$tmp"
client=(--cert "$tmp/cli.pem" --key "$tmp/cli.key" --ca "$tmp/ca.pem")
for p in "$ss_port" "$ng_port" "$s_in"; do
    until_ok 10 "$hs" run -p "$p" -n 1 "${client[@]}"
done
# a client without a certificate is refused by all three (nginx finishes the handshake and
# answers 400 to the request)
for p in "$ss_port" "$s_in"; do
    if "$hs" run -p "$p" -n 1 --ca "$tmp/ca.pem" >/dev/null 2>&1; then
        echo "bench: port $p accepted a client without a certificate" >&2
        exit 1
    fi
done
if curl -fsk -m 3 "https://127.0.0.1:$ng_port/1k" >/dev/null 2>&1; then
    echo "bench: nginx served a client without a certificate" >&2
    exit 1
fi
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
fixed() { # round name url pids...
    local r=$1 name=$2 url=$3
    shift 3
    local c0 c1 out
    wrk -t 2 -c 16 -d 1s "$url" >/dev/null # warm-up
    c0=$(cpu_ticks "$@")
    out=$(wrk -t 2 -c 16 -d "${dur}s" --latency -s bench/dp_pace.lua "$url" -- 1000 2)
    c1=$(cpu_ticks "$@")
    echo "$out" >"$tmp/$name.$r.fixed.txt"
    echo "$r $name fixed $(echo "$out" | awk '/^ +50%/{p50=$2} /^ +90%/{p90=$2} /^ +99%/{p99=$2}
        /^Requests\/sec/{r=$2} /requests in/{n=$1} /Non-2xx|Socket errors/{e=e" "$0}
        END{print p50, p90, p99, r, n, (e==""?"-":"err")}') $((c1 - c0))" >>"$res"
}
handshakes() { # round name port pids...
    local r=$1 name=$2 p=$3
    shift 3
    local c0 c1 out
    "$hs" run -p "$p" -n 200 --cert "$tmp/cli.pem" --key "$tmp/cli.key" --ca "$tmp/ca.pem" \
        >/dev/null # warm-up
    c0=$(cpu_ticks "$@")
    out=$("$hs" run -p "$p" -n "$nhs" --cert "$tmp/cli.pem" --key "$tmp/cli.key" \
        --ca "$tmp/ca.pem" 2>&1 || true)
    c1=$(cpu_ticks "$@")
    echo "$out" >"$tmp/$name.$r.hs.txt"
    echo "$r $name hs $(echo "$out" | tr ' ' '\n' | awk -F= '/^handshakes=/{h=$2}
        /^failed=/{f=$2} /^hs_per_s=/{s=$2} /^client_cpu_us_per_hs=/{c=$2}
        END{print h+0, f+0, s+0, c+0}') $((c1 - c0))" >>"$res"
}

echo "bench: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), ${dur}s per run," \
    "$rounds rounds, $nhs handshakes per server" >&2
for r in $(seq "$rounds"); do
    echo "bench: round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    echo "$r load $(cut -d' ' -f1 /proc/loadavg)" >>"$res"
    fixed "$r" direct "http://127.0.0.1:$origin/1k"
    fixed "$r" kuma "http://127.0.0.1:$k_out/1k" "$kw_pid" "$kb_pid"
    fixed "$r" kuma-mtls "http://127.0.0.1:$s_out/1k" "$sw_pid" "$sb_pid"
    fixed "$r" haproxy "http://127.0.0.1:$h_a/1k" "$ha_pid" "$hb_pid"
    fixed "$r" haproxy-tls "http://127.0.0.1:$t_a/1k" "$ta_pid" "$tb_pid"
    # shellcheck disable=SC2046
    handshakes "$r" kuma-dp "$s_in" "$sb_pid"
    handshakes "$r" s_server "$ss_port" "$ss_pid"
    # shellcheck disable=SC2046
    handshakes "$r" nginx "$ng_port" $(nginx_pids nginx-tls)
    "$tools/ca-bench" -n 20000 -r 0 >"$tmp/ca.$r.txt"
    echo "$r ca $(awk '/loaded CA/{for(i=1;i<=NF;i++) if($(i+1)=="certs/s/core") print $i}' \
        "$tmp/ca.$r.txt")" >>"$res"
done
sb_hs=$(ssl_hs "$sb_admin")
echo "bench: kuma-mtls backend sidecar: $sb_hs TLS handshakes in total" >&2
cp "$res" "${BENCH_RESULTS:-/dev/null}" 2>/dev/null || true

/usr/bin/python3 - "$res" <<'PY'
import os
import sys
hz = os.sysconf("SC_CLK_TCK")
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[1] in ("load", "ca"):
        rows.setdefault(f[0], {})[f[1]] = {"": f[2:]}
    else:
        rows.setdefault(f[0], {}).setdefault(f[1], {})[f[2]] = f[3:]
def us(v):  # wrk latency "123.00us" / "1.23ms" / "1.00s" -> microseconds
    for suf, m in (("us", 1), ("ms", 1000), ("s", 1000000)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * m
    return float("nan")
names = ["direct", "kuma", "kuma-mtls", "haproxy", "haproxy-tls"]
for r in sorted(rows, key=int):
    rr = rows[r]
    print("Round %s (load average %s)" % (r, rr["load"][""][0] if "load" in rr else "?"))
    print()
    print("| target | p50 µs | p90 µs | p99 µs | added p99 µs | rps | CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    lat = {n: [us(x) for x in rr[n]["fixed"][:3]] for n in names}
    for n in names:
        fx = rr[n]["fixed"]
        p50, p90, p99 = lat[n]
        cpu = int(fx[6]) / hz * 1e6 / max(1, int(fx[4]))
        print("| %s | %.0f | %.0f | %.0f | %s | %.0f | %s | %s |" % (
            n, p50, p90, p99, "-" if n == "direct" else "%+.0f" % (p99 - lat["direct"][2]),
            float(fx[3]), "-" if n == "direct" else "%.0f" % cpu,
            "none" if fx[5] == "-" else "yes"))
    d = lat["direct"][2]
    ka, km = lat["kuma"][2] - d, lat["kuma-mtls"][2] - d
    print()
    print("kuma-mtls / kuma: p99 %.2fx, added p99 %s" % (
        lat["kuma-mtls"][2] / lat["kuma"][2], "%.2fx" % (km / ka) if ka > 0 else "n/a"))
    print()
    print("| server | handshakes | failed | handshakes/s (wall, 1 client thread) | "
          "server CPU µs/handshake | handshakes/s/core | client CPU µs/handshake |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in ("kuma-dp", "s_server", "nginx"):
        h, f, s, c, t = rr[n]["hs"]
        cpu = int(t) / hz * 1e6 / max(1, int(h))
        print("| %s | %s | %s | %.0f | %.0f | %s | %.0f |" % (
            n, h, f, float(s), cpu, "%.0f" % (1e6 / cpu) if cpu > 0 else "-", float(c)))
    print()
    print("CA (ca-bench -n 20000 -r 0, ECDSA P-256 leaf, loaded CA): %s certs/s/core" %
          (rr["ca"][""][0] if rr.get("ca", {}).get("") else "?"))
    print()

# medians over the rounds (p99 on a shared machine is noisy: compare medians)
import statistics
rs = sorted(rows, key=int)
med = statistics.median
print("Median of %d rounds" % len(rs))
print()
print("| target | p50 µs | p90 µs | p99 µs | added p99 µs | CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|")
m = {}
for n in names:
    m[n] = [med(us(rows[r][n]["fixed"][i]) for r in rs) for i in range(3)]
    cpu = med(int(rows[r][n]["fixed"][6]) / hz * 1e6 / max(1, int(rows[r][n]["fixed"][4]))
              for r in rs)
    print("| %s | %.0f | %.0f | %.0f | %s | %s |" % (
        n, m[n][0], m[n][1], m[n][2],
        "-" if n == "direct" else "%+.0f" % (m[n][2] - m["direct"][2]),
        "-" if n == "direct" else "%.0f" % cpu))
ka, km = m["kuma"][2] - m["direct"][2], m["kuma-mtls"][2] - m["direct"][2]
print()
print("goal, mTLS pair added p99 <= 1.3x the plaintext pair's: p99 %.2fx, added p99 %s" % (
    m["kuma-mtls"][2] / m["kuma"][2], "%.2fx" % (km / ka) if ka > 0 else "n/a"))
print()
print("| server | handshakes/s (wall) | server CPU µs/handshake | handshakes/s/core |")
print("|---|---:|---:|---:|")
for n in ("kuma-dp", "s_server", "nginx"):
    s = med(float(rows[r][n]["hs"][2]) for r in rs)
    c = med(int(rows[r][n]["hs"][4]) / hz * 1e6 / max(1, int(rows[r][n]["hs"][0])) for r in rs)
    print("| %s | %.0f | %.0f | %s |" % (n, s, c, "%.0f" % (1e6 / c) if c > 0 else "-"))
print()
ca = [float(rows[r]["ca"][""][0]) for r in rs if rows[r].get("ca", {}).get("")]
print("CA: %s certs/s/core (median; goal >= 5,000)" % ("%.0f" % med(ca) if ca else "?"))
PY
