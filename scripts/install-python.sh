#!/usr/bin/env bash
# Installs the official Python Realtime client (tests/python/requirements.txt) into tests/.venv.
# Idempotent; a no-op when up to date. Prints the path of the venv's python on stdout.
set -euo pipefail
cd "$(dirname "$0")/../tests"
PY="$PWD/.venv/bin/python"
STAMP=.venv/.it-install-stamp

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$STAMP" -nt python/requirements.txt ]; then
  echo "$PY"
  exit 0
fi
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "install-python.sh: apt-get install python3 python3-venv" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
rm -rf .venv
python3 -m venv .venv >&2
"$PY" -m pip install --quiet --disable-pip-version-check -r python/requirements.txt >&2
touch "$STAMP"
echo "$PY"
