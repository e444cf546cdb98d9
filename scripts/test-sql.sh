#!/usr/bin/env bash
# SQL tier: pg_regress and isolation specs against a throwaway cluster with the installed extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PGXS=$(/usr/lib/postgresql/15/bin/pg_config --pgxs | xargs dirname)
DATA=${SQL_TEST_DATA:-/tmp/pg_realtime-sqltest}
PORT=${SQL_TEST_PORT:-55433}
OUT=$DATA/results
trap 'bash scripts/pg.sh stop "$DATA"' EXIT
bash scripts/pg.sh stop "$DATA"; rm -rf "$DATA"
bash scripts/pg.sh start "$DATA" "$PORT"
mkdir -p "$OUT"
export PGTZ=UTC PGDATESTYLE=ISO
conn=(--host=127.0.0.1 --port="$PORT" --user=postgres --dbname=postgres --use-existing)
regress=$(ls extension/tests/pg_regress/sql | sed 's/\.sql$//')
"$PGXS/../test/regress/pg_regress" "${conn[@]}" --inputdir=extension/tests/pg_regress \
  --outputdir="$OUT/regress" $regress
specs=$(ls extension/tests/isolation/specs | sed 's/\.spec$//')
"$PGXS/../test/isolation/pg_isolation_regress" "${conn[@]}" --inputdir=extension/tests/isolation \
  --outputdir="$OUT/isolation" $specs
