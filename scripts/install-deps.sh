#!/usr/bin/env bash
# Installs what building and testing need, skipping whatever is already there:
# Debian packages, rustfmt and clippy, cargo-pgrx (pinned to the workspace's pgrx), `cargo pgrx
# init` for Debian's PG 15 (for `make install`; the #[pg_test] tier and the extension's lint use
# a private copy with its own PGRX_HOME: scripts/pg-private.sh).
# Node 22 and the client packages for the integration tests: scripts/install-node.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)

# g++: libfuzzer-sys (the fuzz crate, linted and fuzzed by make test) builds libFuzzer.
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang g++ pkg-config sudo openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
  echo "install-deps: cargo install cargo-pgrx $PGRX_VERSION (a few minutes)" >&2
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -qs "^pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi
