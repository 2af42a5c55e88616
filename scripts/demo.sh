#!/usr/bin/env bash
# The quick start (`make demo`): kuma-cp on the memory store, the default mesh with mTLS on
# (builtin CA, STRICT) and a MeshTrafficPermission allowing web -> backend, two sample services
# (web and backend, small python HTTP servers) each with a kuma-dp sidecar, then prints the
# curl that goes through both sidecars over mutual TLS (web's outbound -> backend's inbound ->
# backend app) and the kumactl command that shows both data planes online. Runs until Ctrl-C,
# then stops everything.
#
# Ports (all on 127.0.0.1; override from the environment):
#   KUMA_API_SERVER_HTTP_PORT 5681, KUMA_DIAGNOSTICS_SERVER_PORT 5680, KUMA_DP_SERVER_PORT 5678,
#   KUMA_DP_SERVER_PLAINTEXT_PORT 5679 (the sidecars' ADS, h2c), DEMO_OUTBOUND_PORT 10001 (web's
#   outbound to backend), DEMO_WEB_PORT 20001 / DEMO_BACKEND_PORT 20002 (sidecar inbounds),
#   DEMO_WEB_APP_PORT 18001 / DEMO_BACKEND_APP_PORT 18002 (the apps), DEMO_WEB_ADMIN 9901 /
#   DEMO_BACKEND_ADMIN 9902 (kuma-dp admin).
# DEMO_SKIP_BUILD=1 uses the binaries in DEMO_BIN_DIR (default build/release) as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=${DEMO_BIN_DIR:-build/release}

if [ -z "${DEMO_SKIP_BUILD:-}" ]; then
    scripts/deps.sh build
    if ! [ -x /usr/bin/python3 ]; then
        echo "demo: installing python3" >&2
        if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 >/dev/null
    fi
    command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
    make -s VARIANT=release build/release/kuma-cp build/release/kuma-dp build/release/kumactl
fi
for b in kuma-cp kuma-dp kumactl; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b is missing (make VARIANT=release all)" >&2; exit 1; }
done

export KUMA_API_SERVER_HTTP_PORT=${KUMA_API_SERVER_HTTP_PORT:-5681}
export KUMA_DIAGNOSTICS_SERVER_PORT=${KUMA_DIAGNOSTICS_SERVER_PORT:-5680}
export KUMA_DP_SERVER_PORT=${KUMA_DP_SERVER_PORT:-5678}
export KUMA_DP_SERVER_PLAINTEXT_PORT=${KUMA_DP_SERVER_PLAINTEXT_PORT:-5679}
export KUMA_API_SERVER_HTTP_INTERFACE=${KUMA_API_SERVER_HTTP_INTERFACE:-127.0.0.1}
out_port=${DEMO_OUTBOUND_PORT:-10001}
web_port=${DEMO_WEB_PORT:-20001}
be_port=${DEMO_BACKEND_PORT:-20002}
web_app=${DEMO_WEB_APP_PORT:-18001}
be_app=${DEMO_BACKEND_APP_PORT:-18002}
web_admin=${DEMO_WEB_ADMIN:-9901}
be_admin=${DEMO_BACKEND_ADMIN:-9902}
api=$KUMA_API_SERVER_HTTP_PORT
diag=$KUMA_DIAGNOSTICS_SERVER_PORT
plain=$KUMA_DP_SERVER_PLAINTEXT_PORT

# Every port must be free: name the setting of the one that is not.
for v in KUMA_API_SERVER_HTTP_PORT:$api KUMA_DIAGNOSTICS_SERVER_PORT:$diag \
         KUMA_DP_SERVER_PORT:$KUMA_DP_SERVER_PORT KUMA_DP_SERVER_PLAINTEXT_PORT:$plain \
         DEMO_OUTBOUND_PORT:$out_port DEMO_WEB_PORT:$web_port DEMO_BACKEND_PORT:$be_port \
         DEMO_WEB_APP_PORT:$web_app DEMO_BACKEND_APP_PORT:$be_app DEMO_WEB_ADMIN:$web_admin \
         DEMO_BACKEND_ADMIN:$be_admin; do
    if (exec 3<>"/dev/tcp/127.0.0.1/${v#*:}") 2>/dev/null; then
        echo "demo: port ${v#*:} is in use: set ${v%%:*} to a free port" >&2
        exit 1
    fi
done

work=$(mktemp -d /tmp/kuma-demo.XXXXXX)
export KUMA_GENERAL_WORK_DIR=$work/cp
pids=()
names=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "demo: stopping"
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    for i in "${!pids[@]}"; do
        for _ in $(seq 50); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[$i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ -n "${DEMO_KEEP:-}" ]; then echo "demo: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name logfile argv...
    local name=$1 log=$2
    shift 2
    "$@" </dev/null >"$log" 2>&1 &
    pids+=($!)
    names+=("$name")
}
wait_until() { # what seconds command...
    local what=$1 secs=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        for i in "${!pids[@]}"; do
            if ! kill -0 "${pids[$i]}" 2>/dev/null; then
                echo "demo: ${names[$i]} exited; its log:" >&2
                tail -20 "$work/${names[$i]}.log" >&2
                exit 1
            fi
        done
        sleep 0.1
    done
    echo "demo: $what not ready after ${secs}s (logs in $work)" >&2
    DEMO_KEEP=1
    exit 1
}

echo "demo: starting kuma-cp (memory store), logs in $work"
start kuma-cp "$work/kuma-cp.log" "$bin/kuma-cp" run
wait_until "kuma-cp" 30 curl -fs "http://127.0.0.1:$diag/ready"

# kumactl talks to this kuma-cp; it issues a dataplane token for each sidecar (kuma-cp's
# default dpServer.authn.dpProxy.type is dpToken, as in Kuma).
if [ "$api" = 5681 ]; then
    kctl="$bin/kumactl"
else
    : >"$work/kumactl.yaml"
    "$bin/kumactl" --config-file "$work/kumactl.yaml" config control-planes add --name demo \
        --address "http://127.0.0.1:$api" >/dev/null
    kctl="$bin/kumactl --config-file $work/kumactl.yaml"
fi
for dp in web-01 backend-01; do
    $kctl generate dataplane-token --mesh default --name "$dp" --valid-for 24h >"$work/$dp.token"
done

# Zero trust from the start: mTLS on the default mesh (kuma-cp generates the CA) and one
# permission, web -> backend; with mTLS on, anything not allowed is refused (403 for HTTP).
$kctl apply -f - <<EOF
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    mode: STRICT
EOF
$kctl apply -f - <<EOF
type: MeshTrafficPermission
mesh: default
name: allow-web-to-backend
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: MeshService
      name: web
    default:
      action: Allow
EOF

app=$repo/tests/e2e/dp/dp_backends.py
export KM_BACKEND_IGNORE_STDIN=1
start web-app "$work/web-app.log" /usr/bin/python3 "$app" http "$web_app" web
start backend-app "$work/backend-app.log" /usr/bin/python3 "$app" http "$be_app" backend

cat >"$work/web.yaml" <<EOF
type: Dataplane
mesh: default
name: web-01
networking:
  address: 127.0.0.1
  inbound:
  - port: $web_port
    servicePort: $web_app
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: $out_port
    tags:
      kuma.io/service: backend
EOF
cat >"$work/backend.yaml" <<EOF
type: Dataplane
mesh: default
name: backend-01
networking:
  address: 127.0.0.1
  inbound:
  - port: $be_port
    servicePort: $be_app
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
EOF
dp_args=(run --cp-address "http://127.0.0.1:$plain" --drain-time 1s --concurrency 1)
start web-sidecar "$work/web-sidecar.log" "$bin/kuma-dp" "${dp_args[@]}" \
    --dataplane-file "$work/web.yaml" --dataplane-token-file "$work/web-01.token" \
    --admin-port "$web_admin"
start backend-sidecar "$work/backend-sidecar.log" "$bin/kuma-dp" "${dp_args[@]}" \
    --dataplane-file "$work/backend.yaml" --dataplane-token-file "$work/backend-01.token" \
    --admin-port "$be_admin"

wait_until "web app" 15 curl -fs "http://127.0.0.1:$web_app/echo"
wait_until "backend app" 15 curl -fs "http://127.0.0.1:$be_app/echo"
wait_until "web sidecar" 30 curl -fs "http://127.0.0.1:$web_admin/ready"
wait_until "backend sidecar" 30 curl -fs "http://127.0.0.1:$be_admin/ready"
through() { curl -fs "http://127.0.0.1:$out_port/echo" | grep -q '"server": "backend"'; }
wait_until "the path through both sidecars" 30 through

online() { [ "$($kctl inspect dataplanes | grep -c ' Online ')" = 2 ]; }
wait_until "both data planes online" 30 online
mtls_on() { curl -fs "http://127.0.0.1:$web_admin/stats" | grep -Eq '^cluster\.backend\.ssl\.handshake: [1-9]'; }
wait_until "mTLS between the sidecars" 15 mtls_on

cat <<EOF

kuma-c demo is running:
  web      app 127.0.0.1:$web_app, sidecar inbound :$web_port, outbound to backend on 127.0.0.1:$out_port (admin :$web_admin)
  backend  app 127.0.0.1:$be_app, sidecar inbound :$be_port (admin :$be_admin)

mTLS is on (builtin CA, STRICT); web -> backend is allowed by the MeshTrafficPermission
allow-web-to-backend, anything else between services is refused:
$($kctl get meshes | sed 's/^/  /')

Through both sidecars over mutual TLS (web's outbound -> backend's inbound -> the backend app):
  curl -s http://127.0.0.1:$out_port/echo

Both data planes online:
  $kctl inspect dataplanes

Press Ctrl-C to stop.
EOF

while sleep 1; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "demo: ${names[$i]} exited unexpectedly; its log:" >&2
            tail -20 "$work/${names[$i]}.log" >&2
            DEMO_KEEP=1
            exit 1
        fi
    done
done
