#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster run as the `postgres` user (initdb refuses root).
#   scripts/pg.sh start DATA_DIR PORT   initdb if needed, start, create Supabase roles + extension
#                                       and the sidecar's login role `sidecar` (in role realtime_sidecar)
#   scripts/pg.sh stop  DATA_DIR        fast shutdown (no-op when not running)
#   scripts/pg.sh restart DATA_DIR PORT
# The Unix socket lives in DATA_DIR/sock; TCP listens on 127.0.0.1:PORT.
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start|stop|restart}; data=${2:?data dir}; port=${3:-54322}
as_pg() { runuser -u postgres -- "$@"; }

stop() {
  [ -f "$data/db/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$data/db" -m fast -w stop >/dev/null || true
}

start() {
  mkdir -p "$data"
  chown postgres:postgres "$data"
  if [ ! -f "$data/db/PG_VERSION" ]; then
    as_pg "$PGBIN/initdb" -D "$data/db" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$data/db/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_realtime'
pg_realtime.database = 'postgres'
max_connections = 200
CONF
  fi
  as_pg mkdir -p "$data/sock"
  # A postmaster killed a moment ago may still be a zombie that pg_ctl status takes for running.
  local pid
  pid=$(head -n 1 "$data/db/postmaster.pid" 2>/dev/null || true)
  for _ in $(seq 100); do
    case "$(ps -o stat= -p "${pid:-0}" 2>/dev/null)" in Z*) sleep 0.1 ;; *) break ;; esac
  done
  if ! as_pg "$PGBIN/pg_ctl" -D "$data/db" status >/dev/null 2>&1; then
    as_pg "$PGBIN/pg_ctl" -D "$data/db" -w -l "$data/postgres.log" \
      -o "-p $port -k $data/sock -c listen_addresses=127.0.0.1" start >/dev/null
  fi
  PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 <<'SQL'
do $$ begin
  if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
  if not exists (select from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
end $$;
grant usage on schema public to anon, authenticated, service_role;
-- A cluster made before the extension had its sidecar role (unreleased versions) gets it anew.
do $$ begin
  if exists (select from pg_extension where extname = 'pg_realtime')
     and not exists (select from pg_roles where rolname = 'realtime_sidecar') then
    raise notice 'pg.sh: re-creating pg_realtime (this cluster predates its realtime_sidecar role)';
    drop extension pg_realtime cascade;
  end if;
end $$;
create extension if not exists pg_realtime;
alter extension pg_realtime update;
-- The sidecar logs in as `sidecar`, a member of the extension's least-privileged role.
grant anon, authenticated, service_role to realtime_sidecar;
do $$ begin
  if not exists (select from pg_roles where rolname = 'sidecar') then
    create role sidecar login in role realtime_sidecar;
  end if;
end $$;
SQL
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|restart DATA_DIR [PORT]" >&2; exit 2 ;;
esac
