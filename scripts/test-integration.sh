#!/usr/bin/env bash
# Integration tests: real PostgreSQL clusters (scripts/pg.sh) + the release sidecar + the
# unmodified @supabase/realtime-js client (and the Python `realtime` client, tests/python), with
# node's built-in test runner (Node 22).
#   scripts/test-integration.sh                     all tests/*.test.mjs and tests/security/*.test.mjs
#   scripts/test-integration.sh tests/x.test.mjs    selected files (extra node --test flags ok,
#                                                   e.g. --test-name-pattern='heartbeat')
# Env: SIDECAR_BIN (default target/release/pg-realtime-sidecar), IT_TIMEOUT (whole run, s,
# default 1800), IT_RUST_LOG (sidecar RUST_LOG, default info), IT_KEEP=1 (keep cluster dirs).
# Sidecar and Postgres logs of every stack are copied to tests/.logs/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NODE=$(bash scripts/install-node.sh)
IT_PYTHON=$(bash scripts/install-python.sh)
export IT_PYTHON

export SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/target/release/pg-realtime-sidecar}
if [ ! -x "$SIDECAR_BIN" ]; then
  echo "test-integration: sidecar binary missing: $SIDECAR_BIN" >&2
  echo "  build it with: cargo build -p pg-realtime-sidecar --release" >&2
  exit 1
fi
if [ ! -f /usr/share/postgresql/15/extension/pg_realtime.control ]; then
  echo "test-integration: extension pg_realtime is not installed" >&2
  echo "  install it with: make install" >&2
  exit 1
fi
[ "$(id -u)" = 0 ] || { echo "test-integration: run as root (scripts/pg.sh uses runuser)" >&2; exit 1; }

export IT_RUN_DIR=$(mktemp -d /tmp/pg-realtime-it-run-XXXXXX)
# Per-run log dir (concurrent runs do not clobber each other); the newest 5 runs are kept.
mkdir -p tests/.logs
export IT_LOG_DIR=$ROOT/tests/.logs/$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$IT_LOG_DIR"
ls -1dt tests/.logs/*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf

# Last-resort cleanup of whatever the test processes registered and did not tear down:
# sidecar pids (killed by id) and cluster data dirs (stopped with pg.sh).
cleanup() {
  local f pid dir
  for f in "$IT_RUN_DIR"/pid-*; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in "$(readlink -f "$SIDECAR_BIN")"*)
      kill -KILL "$pid" 2>/dev/null || true ;;
    esac
  done
  for f in "$IT_RUN_DIR"/pgdir-*; do
    [ -e "$f" ] || continue
    dir=$(cat "$f")
    bash scripts/pg.sh stop "$dir" >/dev/null 2>&1 || true
    [ -n "${IT_KEEP:-}" ] || rm -rf "$dir"
  done
  rm -rf "$IT_RUN_DIR"
}
trap cleanup EXIT

files=()
flags=()
for a in "$@"; do
  case "$a" in -*) flags+=("$a") ;; *) files+=("$a") ;; esac
done
if [ ${#files[@]} -eq 0 ]; then
  shopt -s nullglob
  files=(tests/*.test.mjs tests/security/*.test.mjs)
  shopt -u nullglob
  [ ${#files[@]} -gt 0 ] || { echo "test-integration: no tests/*.test.mjs found" >&2; exit 1; }
fi

# `timeout` runs node in its own process group, so forward INT/TERM to it explicitly.
timeout --kill-after=30 "${IT_TIMEOUT:-1800}" "$NODE" --test --test-concurrency=1 \
  --test-force-exit --test-timeout=180000 --test-reporter=spec "${flags[@]}" "${files[@]}" &
runner=$!
trap 'kill -TERM "$runner" 2>/dev/null || true' INT TERM
set +e
wait "$runner"; rc=$?
while kill -0 "$runner" 2>/dev/null; do wait "$runner"; rc=$?; done
set -e
[ $rc -eq 124 ] && echo "test-integration: the whole run timed out after ${IT_TIMEOUT:-1800}s" >&2
echo "test-integration: sidecar/postgres logs in ${IT_LOG_DIR#$ROOT/}" >&2
exit $rc
