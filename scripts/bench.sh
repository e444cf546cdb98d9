#!/usr/bin/env bash
# Benchmark suite (`make bench`): builds the load generator and the sidecar, starts a throwaway
# PostgreSQL cluster plus the pg_realtime sidecar and a minimal relay (baseline: LISTEN/NOTIFY and
# in-process room fan-out of client broadcasts, tokio-tungstenite) on loopback, runs
#   0. memory: server RSS per idle joined connection at 10,000 connections, sidecar vs relay (first,
#      while both processes are fresh);
#   1. SQL broadcast fan-out to 1 topic x 1,000 subscribers: max throughput (p99 <= 100 ms, no
#      loss) and latency at 10k deliveries/s, sidecar vs relay;
#   3. idle wake-up latency (single broadcasts 50 ms apart), sidecar vs relay;
#   5. client broadcast round trip: 1,000 clients in rooms of 10, 2 msgs/s each, sidecar vs relay;
#   6. client broadcast fan-out to 1 room x 1,000 subscribers: max throughput, sidecar vs relay;
#   2. writer throughput with pgbench (INSERT vs INSERT + realtime.broadcast vs INSERT + pg_notify),
#   7. writer throughput with pgbench into a table captured for Postgres Changes (no subscribers) vs
#      the same table without capture,
#   9. hardening: the writer-side cost of issue 10's checks, the current extension vs the
#      pre-hardening build BENCH_OLD_REV measured in the same run (pgbench, alternating): captured
#      tables with 0, 1 and 1,000 subscribers, private SQL sends (superuser, and a role subject to
#      an INSERT policy on realtime.messages) vs public ones. The old build is made once into
#      target/bench-old/<rev> and installed into a private copy of PostgreSQL
#      (target/bench-old/pg15, scripts/pg-private.sh); each build gets its own cluster, no sidecar;
#   4. private-channel joins/s with an RLS membership policy evaluated on each join, vs public joins,
#   8. Postgres Changes to 1,000 subscribers, one user each: max deliveries/s RLS-checked vs RLS
#      disabled (no filter), and max changes/s with an owner filter (1,000 vs 100 subscribers),
# writes bench/report/report.json and bench/report/report.md, and tears everything down.
# Exit status: 0 when the run completed (whether or not the targets were met: misses are reported),
# non-zero when the run itself failed (build, start-up, a crashed component, a benchmark error).
#
# Knobs (environment): BENCH_PG_PORT, BENCH_SIDECAR_PORT, BENCH_RELAY_PORT (first port tried),
# BENCH_SUBSCRIBERS (1000), BENCH_QUICK=1 (a short smoke run: 200 subscribers, 2,000 idle
# connections, short steps, Postgres Changes with 200 and 20 subscribers), BENCH_ONLY="changes
# joins" (run and report only these stages of: memory fanout roundtrip push writers capture
# hardening joins changes), BENCH_OLD_REV (e5977aa: the commit before the hardening),
# BENCH_HARDENING_VARIANTS="send_private_rls capture_0" (only these variants of the hardening stage).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SUBS=${BENCH_SUBSCRIBERS:-1000}
QUICK=${BENCH_QUICK:-0}
# The load generator holds this many client sockets at once (the servers as many each).
MEM_CONNS=10000
[ "$QUICK" = 1 ] && MEM_CONNS=2000
REPORT="$ROOT/bench/report"
RAW="$REPORT/raw"
BIN="$ROOT/target/release"
T0=$(date +%s)

log() { echo "[bench $(($(date +%s) - T0))s] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# A loopback port nobody listens on, starting at $1.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

wait_port() { # port seconds pid
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$3" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
log "building (release): pg-realtime-bench, pg-realtime-sidecar"
cargo build --release -p pg-realtime-bench -p pg-realtime-sidecar >&2 || die "cargo build"
[ -f /usr/share/postgresql/15/extension/pg_realtime.control ] ||
  die "pg_realtime is not installed (cargo pgrx install --release --pg-config $PGBIN/pg_config)"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((SUBS + 200)) ] || die "ulimit -n $(ulimit -n) is too low for $SUBS subscribers"
[ "$(ulimit -n)" -ge $((MEM_CONNS + 200)) ] || die "ulimit -n $(ulimit -n) is too low for $MEM_CONNS connections"

WORK=$(mktemp -d /tmp/pg_realtime_bench.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach $WORK/pg
PIDS=()
cleanup() {
  local rc=$?
  local p i
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for p in pg pg-old pg-new; do bash "$ROOT/scripts/pg.sh" stop "$WORK/$p" >/dev/null 2>&1 || true; done
  mkdir -p "$RAW"
  for f in sidecar.log relay.log; do [ -f "$WORK/$f" ] && tail -n 200 "$WORK/$f" >"$RAW/$f" || true; done
  [ -f "$WORK/pg/postgres.log" ] && tail -n 200 "$WORK/pg/postgres.log" >"$RAW/postgres.log" || true
  for p in old new; do
    [ -f "$WORK/pg-$p/postgres.log" ] && tail -n 200 "$WORK/pg-$p/postgres.log" >"$RAW/postgres-$p.log" || true
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PG_PORT=$(free_port "${BENCH_PG_PORT:-55460}")
SIDECAR_PORT=$(free_port "${BENCH_SIDECAR_PORT:-$((PG_PORT + 10))}")
RELAY_PORT=$(free_port "${BENCH_RELAY_PORT:-$((SIDECAR_PORT + 10))}")
SECRET="bench-secret-$RANDOM$RANDOM$RANDOM"
DSN="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
URL_DSN="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

rm -rf "$RAW" "$REPORT/report.json" "$REPORT/report.md"
mkdir -p "$RAW"

log "starting PostgreSQL on 127.0.0.1:$PG_PORT ($WORK/pg)"
bash "$ROOT/scripts/pg.sh" start "$WORK/pg" "$PG_PORT" >&2 || die "cluster start"

log "starting the sidecar on 127.0.0.1:$SIDECAR_PORT"
DATABASE_URL="postgres://sidecar@127.0.0.1:$PG_PORT/postgres" HOST=127.0.0.1 PORT="$SIDECAR_PORT" JWT_SECRET="$SECRET" RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN/pg-realtime-sidecar" >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
PIDS+=("$SIDECAR_PID")
wait_port "$SIDECAR_PORT" 30 "$SIDECAR_PID" || { tail -n 30 "$WORK/sidecar.log" >&2; die "sidecar did not start"; }

log "starting the LISTEN relay (baseline) on 127.0.0.1:$RELAY_PORT"
"$BIN/pg-realtime-bench" relay --listen "127.0.0.1:$RELAY_PORT" --dsn "$DSN" --channel bench \
  --topic realtime:bench --event m --max-secs 3600 >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_port "$RELAY_PORT" 30 "$RELAY_PID" || { tail -n 30 "$WORK/relay.log" >&2; die "relay did not start"; }

cat >"$RAW/meta.json" <<JSON
{
  "started_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": "$(hostname)",
  "nproc": "$(nproc)",
  "loadavg_start": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "git_rev": "$(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')",
  "postgres": "$("$PGBIN/postgres" --version)",
  "quick": $([ "$QUICK" = 1 ] && echo true || echo false),
  "only": "${BENCH_ONLY:-}",
  "sidecar": "target/release/pg-realtime-sidecar with default settings",
  "relay": "pg-realtime-bench relay: one LISTEN connection, client broadcasts relayed in-process to the other room members, frame serialized once, tokio-tungstenite, 4 KiB buffers"
}
JSON

# The pre-hardening extension, for the hardening stage's baseline: built once per revision (the
# package is kept in target/bench-old/<rev>), installed into a private copy of PostgreSQL 15 by
# rename, never over Debian's tree. Sets OLD_PGBIN and OLD_PGSH (that revision's scripts/pg.sh,
# which sets a cluster up the way that extension expects).
OLD_REV=${BENCH_OLD_REV:-e5977aa}
old_extension() {
  local rev dir pkg priv f dest
  rev=$(git rev-parse --verify "$OLD_REV^{commit}") || return 1
  dir=$ROOT/target/bench-old/$rev
  pkg=$dir/cargo/release/pg_realtime-pg15
  if [ "$(cat "$dir/built" 2>/dev/null)" != "$rev" ] || [ ! -f "$pkg/usr/lib/postgresql/15/lib/pg_realtime.so" ]; then
    log "building pg_realtime $OLD_REV (the pre-hardening baseline) in $dir: minutes, once per revision"
    rm -rf "$dir/src" "$dir/built"
    mkdir -p "$dir/src"
    git archive "$rev" | tar -x -C "$dir/src" || return 1
    (cd "$dir/src/extension" &&
      CARGO_TARGET_DIR="$dir/cargo" cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config) >&2 || return 1
    echo "$rev" >"$dir/built"
  fi
  priv=$ROOT/target/bench-old/pg15
  PG_PRIVATE=$priv bash "$ROOT/scripts/pg-private.sh" >/dev/null || return 1
  while read -r f; do
    dest=$priv/${f#"$pkg"/}
    [ -d "$(dirname "$dest")" ] || return 1
    cp "$f" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest" || return 1
  done < <(find "$pkg" -type f)
  OLD_PGBIN=$priv/usr/lib/postgresql/15/bin
  OLD_PGSH=$dir/src/scripts/pg.sh
}

if [ "$QUICK" = 1 ]; then
  SUBS=${BENCH_SUBSCRIBERS:-200}
  FAN_ARGS=(--subscribers "$SUBS" --idle-count 20 --latency-secs 3 --step-secs 2 --max-steps 6 --search-budget-s 60)
  WRITER_ARGS=(--seconds 3 --rounds 1)
  HARD_ARGS=(--seconds 2 --rounds 2 --clients 16 --threads 2)
  JOIN_ARGS=(--step-secs 2 --rounds 2)
  MEM_ARGS=(--rooms 200 --idle-secs 2 --rounds 1)
  RT_ARGS=(--clients 200 --step-secs 2 --rounds 1 --warmup-secs 1)
  PUSH_ARGS=(--subscribers "$SUBS" --step-secs 2 --max-steps 6 --search-budget-s 60)
  CHANGES_ARGS=(--subscribers "$SUBS" --small $((SUBS / 10)) --step-secs 2 --fixed-secs 3 --max-steps 6
    --search-budget-s 60)
else
  FAN_ARGS=(--subscribers "$SUBS" --idle-count 100 --idle-interval-ms 50 --latency-rate 10 --latency-secs 10
    --step-secs 3 --start-rate 100 --p99-ms 100 --max-steps 14 --search-budget-s 200)
  WRITER_ARGS=(--seconds 6 --rounds 2 --clients 16 --threads 2)
  HARD_ARGS=(--seconds 3 --rounds 6 --clients 16 --threads 2)
  JOIN_ARGS=(--step-secs 5 --rounds 3)
  MEM_ARGS=(--rooms 1000 --idle-secs 5 --rounds 2)
  RT_ARGS=(--clients 1000 --room-size 10 --rate 2 --step-secs 5 --rounds 2 --warmup-secs 2)
  PUSH_ARGS=(--subscribers "$SUBS" --step-secs 3 --start-rate 100 --p99-ms 100 --max-steps 14 --search-budget-s 200)
  CHANGES_ARGS=(--subscribers "$SUBS" --small $((SUBS / 10)) --step-secs 3 --fixed-secs 5 --p99-ms 100 --max-steps 10
    --search-budget-s 200)
fi

FAILED=0
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }
alive() { kill -0 "$SIDECAR_PID" 2>/dev/null || { log "the sidecar died"; tail -n 30 "$WORK/sidecar.log" >&2; FAILED=1; }
          kill -0 "$RELAY_PID" 2>/dev/null || { log "the relay died"; FAILED=1; }; }

RELAY_WS="ws://127.0.0.1:$RELAY_PORT/realtime/v1/websocket"
SIDECAR_WS="ws://127.0.0.1:$SIDECAR_PORT/realtime/v1/websocket"
SUBJECTS=(--relay-ws "$RELAY_WS" --relay-pid "$RELAY_PID" --sidecar-ws "$SIDECAR_WS" --sidecar-pid "$SIDECAR_PID"
  --jwt-secret "$SECRET")

if want memory; then
  log "memory: $MEM_CONNS idle joined connections, relay (baseline) and sidecar, alternating"
  "$BIN/pg-realtime-bench" memory "${SUBJECTS[@]}" --connections "$MEM_CONNS" --sources 8 \
    --out "$RAW/memory.json" "${MEM_ARGS[@]}" || { log "memory run failed"; FAILED=1; }
  alive
fi

if want fanout; then
  log "fan-out: LISTEN relay (baseline) and pg_realtime sidecar, interleaved"
  "$BIN/pg-realtime-bench" fanout --dsn "$DSN" --jwt-secret "$SECRET" \
    --target relay --mode notify --server-pid "$RELAY_PID" --out "$RAW/fanout-relay.json" \
    --ws "$RELAY_WS" \
    --target2 sidecar --mode2 broadcast --server-pid2 "$SIDECAR_PID" --out2 "$RAW/fanout-sidecar.json" \
    --ws2 "$SIDECAR_WS" \
    "${FAN_ARGS[@]}" || { log "fan-out run failed"; FAILED=1; }
  alive
fi

if want roundtrip; then
  log "client broadcast round trip in rooms: relay (baseline) and sidecar, alternating"
  "$BIN/pg-realtime-bench" roundtrip "${SUBJECTS[@]}" --dsn "$DSN" --out "$RAW/roundtrip.json" "${RT_ARGS[@]}" ||
    { log "round-trip run failed"; FAILED=1; }
  alive
fi

if want push; then
  log "client broadcast fan-out: relay (baseline) and sidecar, interleaved"
  # One sender: with self:false it receives nothing, so an overloaded server never closes it as slow.
  "$BIN/pg-realtime-bench" fanout --dsn "$DSN" --jwt-secret "$SECRET" --sub-topic pushbench --producers 1 \
    --idle-count 0 --latency-secs 0 \
    --target relay --mode client --server-pid "$RELAY_PID" --out "$RAW/fanout-push-relay.json" --ws "$RELAY_WS" \
    --target2 sidecar --mode2 client --server-pid2 "$SIDECAR_PID" --out2 "$RAW/fanout-push-sidecar.json" \
    --ws2 "$SIDECAR_WS" "${PUSH_ARGS[@]}" || { log "client broadcast fan-out run failed"; FAILED=1; }
  alive
fi

if want writers; then
  log "writers: pgbench (sidecar connected and draining)"
  "$BIN/pg-realtime-bench" writers --host 127.0.0.1 --port "$PG_PORT" --pgbench "$PGBIN/pgbench" --sidecar-pid "$SIDECAR_PID" \
    --scripts "$ROOT/bench" --out "$RAW/writers.json" "${WRITER_ARGS[@]}" || { log "writer run failed"; FAILED=1; }
  alive
fi

if want capture; then
  log "capture: pgbench into a table with realtime.enable (no subscribers) vs without, alternating"
  "$BIN/pg-realtime-bench" capture --host 127.0.0.1 --port "$PG_PORT" --pgbench "$PGBIN/pgbench" --sidecar-pid "$SIDECAR_PID" \
    --scripts "$ROOT/bench" --out "$RAW/capture.json" "${WRITER_ARGS[@]}" || { log "capture writer run failed"; FAILED=1; }
  alive
fi

if want hardening; then
  if old_extension; then
    OLD_PG_PORT=$(free_port $((RELAY_PORT + 10)))
    log "hardening: PostgreSQL with pg_realtime $OLD_REV on 127.0.0.1:$OLD_PG_PORT ($WORK/pg-old)"
    PGBIN=$OLD_PGBIN bash "$OLD_PGSH" start "$WORK/pg-old" "$OLD_PG_PORT" >&2 || die "cluster start (old extension)"
    NEW_PG_PORT=$(free_port $((OLD_PG_PORT + 1)))
    log "hardening: PostgreSQL with the installed pg_realtime on 127.0.0.1:$NEW_PG_PORT ($WORK/pg-new)"
    bash "$ROOT/scripts/pg.sh" start "$WORK/pg-new" "$NEW_PG_PORT" >&2 || die "cluster start (new extension)"
    log "hardening: capture with 0/1/1,000 subscribers and private vs public SQL sends, old vs new build, alternating"
    "$BIN/pg-realtime-bench" hardening --host 127.0.0.1 --port "$NEW_PG_PORT" --old-port "$OLD_PG_PORT" \
      --old-rev "$OLD_REV" --pgbench "$PGBIN/pgbench" --scripts "$ROOT/bench" --sidecar-running false \
      --variants "$(echo ${BENCH_HARDENING_VARIANTS:-} | tr ' ' ,)" --out "$RAW/hardening.json" "${HARD_ARGS[@]}" || { log "hardening run failed"; FAILED=1; }
    for p in pg-old pg-new; do bash "$ROOT/scripts/pg.sh" stop "$WORK/$p" >&2 || true; done
  else
    log "hardening: could not build or install pg_realtime $OLD_REV"
    FAILED=1
  fi
  alive
fi

if want joins; then
  log "joins: private (RLS policy per join) vs public, alternating"
  "$BIN/pg-realtime-bench" joins --ws "$SIDECAR_WS" --dsn "$DSN" \
    --jwt-secret "$SECRET" --sidecar-pid "$SIDECAR_PID" --out "$RAW/joins.json" \
    --connections 50 --rooms 100 "${JOIN_ARGS[@]}" || { log "join run failed"; FAILED=1; }
  alive
fi

if want changes; then
  log "Postgres Changes: RLS-checked vs RLS disabled, unfiltered and owner-filtered, interleaved"
  "$BIN/pg-realtime-bench" changes --ws "$SIDECAR_WS" --dsn "$DSN" --jwt-secret "$SECRET" --sidecar-pid "$SIDECAR_PID" \
    --out "$RAW/changes.json" "${CHANGES_ARGS[@]}" || { log "Postgres Changes run failed"; FAILED=1; }
  alive
fi

log "report"
"$BIN/pg-realtime-bench" report --raw "$RAW" --out "$REPORT" || FAILED=1
cat "$REPORT/report.md" >&2 || true
log "done: $REPORT/report.md, $REPORT/report.json"
[ "$FAILED" = 0 ] || die "the run did not complete cleanly (see the report's problems)"
