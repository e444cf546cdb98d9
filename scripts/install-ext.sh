#!/usr/bin/env bash
# Installs the packaged extension (`cargo pgrx package` output) into PostgreSQL's directories.
# Each file is copied beside its destination, then renamed over it: a running server keeps the
# library it has mapped, where overwriting the file in place would crash it.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=target/release/pg_realtime-pg15
[ -d "$PKG" ] || { echo "install-ext: $PKG missing (run cargo pgrx package first)" >&2; exit 1; }
find "$PKG" -type f | while read -r file; do
  dest=/${file#"$PKG"/}
  install -d "$(dirname "$dest")"
  cp "$file" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
done
