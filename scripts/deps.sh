#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, only when something is missing.
# Usage: scripts/deps.sh [build|test]   (test also brings PostgreSQL, pytest and load tools)
set -euo pipefail
want=(make gcc clang pkg-config libjansson-dev libyaml-dev libpq-dev libcurl4-openssl-dev
      libmicrohttpd-dev libssl-dev libnghttp2-dev libxxhash-dev
      protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libprotobuf-dev)
if [ "${1:-build}" = test ]; then
    want+=(postgresql python3-pytest python3-yaml curl openssl python3-grpcio nghttp2-server)
    # node may come from elsewhere (nodesource bundles npm): only install Debian's when absent
    if ! command -v node >/dev/null; then
        want+=(nodejs npm)
    elif ! command -v npm >/dev/null; then
        want+=(npm)
    fi
fi
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
