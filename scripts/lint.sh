#!/usr/bin/env bash
# `make lint`, the first step of `make test`: rustfmt and clippy (warnings are errors) for every
# crate of the workspace. The extension is checked with its pgrx feature flags (pg15, and
# pg_test so its #[pg_test] code is linted too) against the private PostgreSQL installation of
# scripts/pg-private.sh, the one the #[pg_test] tier builds with, so the two share pgrx's
# generated bindings; every `unsafe` block in it must say why it is sound (// SAFETY:).
# Runs every check, then fails if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
check() { # name command...
  echo "lint: $1" >&2
  "${@:2}" || failed+=("$1")
}

check "rustfmt (workspace)" cargo fmt --all --check
check "clippy (workspace except the extension)" \
  cargo clippy --workspace --exclude pg_realtime --all-targets --locked -- -D warnings
if PGRX_HOME=$(bash scripts/pg-private.sh); then
  check "clippy (extension)" env PGRX_HOME="$PGRX_HOME" \
    cargo clippy -p pg_realtime --all-targets --features "pg15 pg_test" --locked -- \
    -D warnings -D clippy::undocumented_unsafe_blocks
else
  failed+=("clippy (extension): no private PostgreSQL installation")
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf 'lint: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint: rustfmt and clippy clean" >&2
