#!/usr/bin/env bash
# A private copy of Debian's PostgreSQL 15 installation, registered with pgrx under a private
# PGRX_HOME, for the tools that install the extension the way pgrx does: by writing over the
# installed files in place (`cargo pgrx test` runs `cargo pgrx install`, which uses fs::copy).
# Pointed at Debian's directories, that rewrites the library every running cluster has mapped,
# and those clusters crash. Pointed at this copy, it can only touch the private tree, which no
# long-lived server uses (pgrx's own test cluster is stopped again when its tests end).
#
# PostgreSQL is relocatable: pg_config and the server find their lib and share directories
# relative to their own location, so copying /usr/lib/postgresql/15 and /usr/share/postgresql/15
# under one prefix, keeping the relative layout, gives an installation whose pg_config reports
# the private directories. Headers are linked, not copied.
#
# Prints the private PGRX_HOME on stdout. The copy is refreshed when Debian's server changes
# (its `postgres --version`). Env: PG_PRIVATE (default target/pg15-private, or a directory under
# /var/tmp when the postgres user, which runs the private server, cannot reach target/).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022 # the postgres user runs the private binaries and reads the installed extension
SYS=/usr/lib/postgresql/15
PRIV=${PG_PRIVATE:-}
if [ -z "$PRIV" ]; then
  mkdir -p target
  PRIV=$PWD/target/pg15-private
  runuser -u postgres -- test -x "$PWD/target" ||
    PRIV=/var/tmp/pg_realtime-$(printf %s "$PWD" | md5sum | cut -c1-12)/pg15-private
fi
PGRX_DIR=$PRIV/pgrx
PG_CONFIG=$PRIV/usr/lib/postgresql/15/bin/pg_config
want=$("$SYS/bin/postgres" --version)

mkdir -p "$(dirname "$PRIV")"
exec 9>"$PRIV.lock"
flock 9

if [ "$(cat "$PRIV/stamp" 2>/dev/null)" != "$want" ]; then
  echo "pg-private: copying PostgreSQL 15 to $PRIV" >&2
  new=$PRIV.new.$$
  rm -rf "$new"
  mkdir -p "$new/usr/lib/postgresql" "$new/usr/share/postgresql" "$new/usr/include"
  cp -a "$SYS" "$new/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$new/usr/share/postgresql/"
  ln -s /usr/include/postgresql "$new/usr/include/postgresql"
  # Whatever `make install` put into Debian's tree is not the build under test.
  rm -f "$new"/usr/lib/postgresql/15/lib/pg_realtime.so "$new"/usr/share/postgresql/15/extension/pg_realtime[.-]*
  got=$("$new/usr/lib/postgresql/15/bin/pg_config" --pkglibdir)
  [ "$got" = "$new/usr/lib/postgresql/15/lib" ] ||
    { echo "pg-private: the copied pg_config reports $got: not relocatable" >&2; exit 1; }
  echo "$want" >"$new/stamp"
  rm -rf "$PRIV"
  mv "$new" "$PRIV"
fi

for dir in pkglibdir sharedir; do
  case "$("$PG_CONFIG" --$dir)" in "$PRIV"/*) ;; *)
    echo "pg-private: $PG_CONFIG --$dir is outside $PRIV" >&2; exit 1 ;;
  esac
done

if ! grep -qsF "pg15 = \"$PG_CONFIG\"" "$PGRX_DIR/config.toml"; then
  mkdir -p "$PGRX_DIR"
  PGRX_HOME=$PGRX_DIR cargo pgrx init --pg15 "$PG_CONFIG" >&2
fi
echo "$PGRX_DIR"
