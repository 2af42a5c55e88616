#!/usr/bin/env bash
# Installs the pinned npm packages of tests/xds (package-lock.json) into tests/xds/node_modules,
# only when they are missing or the lock file changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "tests/xds/setup.sh: npm is not installed (Debian: nodejs)" >&2; exit 1; }
stamp=node_modules/.kuma-c-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
    exit 0
fi
echo "tests/xds: installing npm packages (npm ci)" >&2
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
