#!/usr/bin/env bash
# The #[pg_test] tier: `cargo pgrx test` builds the extension with pg_test, installs it and runs
# the tests in a cluster of its own as the postgres user. pgrx installs by writing over the
# installed files in place, so it runs against the private PostgreSQL installation of
# scripts/pg-private.sh, never Debian's, where running clusters have the library mapped.
# Runs of one checkout take turns (they share the private installation). Env: PGTEST_DATA (the
# test cluster's data dir, default beside the private installation).
set -euo pipefail
cd "$(dirname "$0")/.."
PGRX_HOME=$(bash scripts/pg-private.sh)
export PGRX_HOME
PRIV=$(dirname "$PGRX_HOME")
LIB=$PRIV/usr/lib/postgresql/15/lib/pg_realtime.so
DATA=${PGTEST_DATA:-$PRIV/pgtest}

exec 8>"$PRIV/test-pg.lock"
flock -n 8 || { echo "test-pg: waiting for another test-pg run of this checkout" >&2; flock 8; }
# A test cluster left behind by an interrupted run still maps the private library: stop it.
if [ -f "$DATA/postmaster.pid" ]; then
  runuser -u postgres -- "$PRIV/usr/lib/postgresql/15/bin/pg_ctl" -D "$DATA" -m immediate -w stop \
    >/dev/null 2>&1 || true
fi
users=$(grep -lsF "$LIB" /proc/[0-9]*/maps | cut -d/ -f3 | tr '\n' ' ' || true)
if [ -n "$users" ]; then
  echo "test-pg: processes $users have $LIB mapped; not overwriting it" >&2
  exit 1
fi

install -d -o postgres -g postgres "$DATA"
cd extension
exec cargo pgrx test pg15 --runas postgres --pgdata "$DATA"
