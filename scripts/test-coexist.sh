#!/usr/bin/env bash
# Building, testing and installing the extension never disturb a running cluster (issue 10,
# finding 12: the #[pg_test] tier used to install over the library a `make run` cluster had
# mapped, and the cluster crashed). Starts a cluster the way `make run` does (scripts/pg.sh, the
# installed extension preloaded), keeps a session calling into the library every 0.2 s, runs the
# #[pg_test] tier and `make install` (or the command given), then asserts that
#   - the postmaster is the same process, still running, and logged no crashed process;
#   - the session and its backend are still there;
#   - no file the postmaster has mapped was rewritten in place (same inode, other size or mtime);
#   - a new connection runs realtime.broadcast;
# and then that the cluster, killed, comes back with `scripts/pg.sh start` as `make run` starts it.
# Usage: scripts/test-coexist.sh [COMMAND ARGS...]
#   default: bash scripts/test-pg.sh, then make install
# Env: PGBIN (the installation the cluster runs from; default Debian's, as `make run`).
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN

free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

WORK=$(mktemp -d /tmp/pg_realtime-coexist.XXXXXX)
chmod 755 "$WORK"
DATA=$WORK/pg
PORT=$(free_port 55600)
SESSION=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$SESSION" ]; then kill "$SESSION" 2>/dev/null; wait "$SESSION" 2>/dev/null; fi
  bash scripts/pg.sh stop "$DATA" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

fail() { echo "test-coexist: FAILED: $*" >&2; exit 1; }
sql() { "$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
# "path inode size mtime" of every file the process maps (not shared memory, not deleted files).
mapped() {
  local f
  awk 'NF == 6 && $6 ~ /^\// {print $6}' "/proc/$1/maps" | sort -u | while read -r f; do
    if [ -f "$f" ]; then stat -c '%n %i %s %y' "$f"; fi
  done
}

echo "test-coexist: cluster on 127.0.0.1:$PORT ($DATA)" >&2
bash scripts/pg.sh start "$DATA" "$PORT"
pm=$(head -n 1 "$DATA/db/postmaster.pid")
before=$(mapped "$pm")
grep -q '/pg_realtime\.so ' <<<"$before" || fail "the postmaster has not loaded pg_realtime.so"

# A session that calls into the library five times a second for as long as the command runs
# (psql itself in the background, not a subshell, so that $! is psql's pid).
"$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$PORT" -U postgres -d postgres >"$WORK/session.out" 2>&1 <<'SQL' &
select pg_backend_pid();
select realtime._pending() \watch 0.2
SQL
SESSION=$!
for _ in $(seq 100); do [ -s "$WORK/session.out" ] && break; sleep 0.1; done
backend=$(head -n 1 "$WORK/session.out")
[[ $backend =~ ^[0-9]+$ ]] || fail "session did not start: $(cat "$WORK/session.out")"

set +e
if [ $# -gt 0 ]; then
  "$@"
  rc=$?
else
  bash scripts/test-pg.sh && make --no-print-directory install
  rc=$?
fi
set -e

problems=()
kill -0 "$pm" 2>/dev/null && [ "$(head -n 1 "$DATA/db/postmaster.pid" 2>/dev/null)" = "$pm" ] ||
  problems+=("the postmaster ($pm) is gone")
crashes=$(grep -E 'terminated by signal|terminating any other active server processes' "$DATA/postgres.log" || true)
[ -z "$crashes" ] || problems+=("server processes crashed: $crashes")
kill -0 "$SESSION" 2>/dev/null || problems+=("the session ended: $(grep -v '^[0-9]*$' "$WORK/session.out" | grep -v '^\s*$' | tail -n 3)")
if [ -d "/proc/$pm" ]; then
  while read -r path inode size mtime; do
    now=$(stat -c '%i %s %y' "$path" 2>/dev/null) || continue
    [ "${now%% *}" != "$inode" ] || [ "$now" = "$inode $size $mtime" ] ||
      problems+=("$path, mapped by the postmaster, was rewritten in place")
  done <<<"$before"
fi
if [ ${#problems[@]} -eq 0 ]; then
  [ "$(sql -c "select count(*) from pg_stat_activity where pid = $backend")" = 1 ] ||
    problems+=("the session's backend $backend is gone")
  sql -c "select realtime.broadcast('t', 'e', '{}')" >/dev/null ||
    problems+=("a new connection cannot run realtime.broadcast")
fi

[ $rc -eq 0 ] || problems+=("the command failed (exit $rc)")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'test-coexist: FAILED: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "test-coexist: the running cluster came through untouched" >&2

# A cluster that died comes back with what `make run` runs, at once (its postmaster may not even
# have been reaped yet).
kill "$SESSION" 2>/dev/null || true; wait "$SESSION" 2>/dev/null || true; SESSION=
kill -KILL "$pm"
bash scripts/pg.sh start "$DATA" "$PORT" || fail "scripts/pg.sh start did not bring a killed cluster back"
[ "$(head -n 1 "$DATA/db/postmaster.pid")" != "$pm" ] || fail "the killed postmaster is still recorded as running"
sql -c "select realtime.broadcast('t', 'e', '{}')" >/dev/null || fail "the restarted cluster cannot run realtime.broadcast"
echo "test-coexist: a killed cluster came back with scripts/pg.sh start" >&2
