#!/usr/bin/env bash
# `make run`: a local PostgreSQL with pg_realtime, and the sidecar in the foreground.
# Stops the database again when the sidecar exits (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-$PWD/.data}
PG_PORT=${PG_PORT:-54322}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-4000}
JWT_SECRET=${JWT_SECRET:-super-secret-jwt-token-with-at-least-32-characters-long}

bash scripts/pg.sh start "$DATA" "$PG_PORT"
trap 'bash scripts/pg.sh stop "$DATA"' EXIT

anon=$(bash scripts/jwt.sh "$JWT_SECRET" anon)
service=$(bash scripts/jwt.sh "$JWT_SECRET" service_role)
cat <<MSG

pg_realtime is up (development keys: do not use this secret in production)

  Realtime URL   ws://$HOST:$PORT/realtime/v1      (realtime-js: new RealtimeClient(url, { params: { apikey } }))
  Database       postgres://postgres@127.0.0.1:$PG_PORT/postgres
  Sidecar role   sidecar (member of realtime_sidecar: no superuser rights)
  JWT secret     $JWT_SECRET
  anon key       $anon
  service_role   $service

  Try it:  psql postgres://postgres@127.0.0.1:$PG_PORT/postgres -c "select realtime.broadcast('room1', 'hello', '{\"text\": \"hi\"}')"

MSG
DATABASE_URL="postgres://sidecar@127.0.0.1:$PG_PORT/postgres" HOST=$HOST PORT=$PORT JWT_SECRET=$JWT_SECRET \
  RUST_LOG=${RUST_LOG:-info} target/release/pg-realtime-sidecar
