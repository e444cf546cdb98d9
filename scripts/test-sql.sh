#!/usr/bin/env bash
# SQL tier: pg_regress and isolation specs against a throwaway cluster with the installed extension.
# Each run has its own data dir and a free port, so runs do not stop each other's clusters.
# Env: SQL_TEST_PORT (first port tried, default 55433), SQL_TEST_KEEP=1 (keep the data dir and
# the results, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PGXS=$(/usr/lib/postgresql/15/bin/pg_config --pgxs | xargs dirname)
DATA=$(mktemp -d /tmp/pg_realtime-sqltest.XXXXXX)
PORT=${SQL_TEST_PORT:-55433}
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
OUT=$DATA/results
cleanup() {
  bash scripts/pg.sh stop "$DATA"
  if [ -n "${SQL_TEST_KEEP:-}" ]; then echo "test-sql: kept $DATA" >&2; else rm -rf "$DATA"; fi
}
trap cleanup EXIT
chmod 755 "$DATA"
bash scripts/pg.sh start "$DATA" "$PORT"
mkdir -p "$OUT"
export PGTZ=UTC PGDATESTYLE=ISO
conn=(--host=127.0.0.1 --port="$PORT" --user=postgres --dbname=postgres --use-existing)
regress=$(ls extension/tests/pg_regress/sql | sed 's/\.sql$//')
set +e
"$PGXS/../test/regress/pg_regress" "${conn[@]}" --inputdir=extension/tests/pg_regress \
  --outputdir="$OUT/regress" $regress
rc=$?
specs=$(ls extension/tests/isolation/specs | sed 's/\.spec$//')
"$PGXS/../test/isolation/pg_isolation_regress" "${conn[@]}" --inputdir=extension/tests/isolation \
  --outputdir="$OUT/isolation" $specs
rc2=$?
set -e
# The diffs go away with the data dir: show them.
for d in "$OUT"/regress "$OUT"/isolation; do
  [ -s "$d/regression.diffs" ] && { echo "test-sql: $d/regression.diffs:" >&2; cat "$d/regression.diffs" >&2; }
done
[ $rc -eq 0 ] && [ $rc2 -eq 0 ]
