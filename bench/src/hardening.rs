//! Writer-side cost of the hardening checks (capture reads rows and evaluates filters as the
//! table's owner, security-restricted; a private send from SQL runs an INSERT-policy probe on
//! realtime.messages for callers subject to RLS), measured against the extension as it was
//! before them, in the same run.
//!
//! Invariants of a fair comparison:
//! * two clusters from byte-identical PostgreSQL binaries and the same settings, `new` with the
//!   installed extension and `old` with the pre-hardening build (scripts/bench.sh builds it and
//!   installs it into a private copy of PostgreSQL); neither has a sidecar, and only one is
//!   under load at a time;
//! * both get the same setup and the same runs in the same sequence, so a table has the same
//!   size in both when a variant runs; within a round the two alternate, the order flipping
//!   every round;
//! * `realtime.queue` is emptied before every run (nobody drains it here), so no run inherits
//!   another's backlog;
//! * each build is probed before the runs: the expected number of messages per statement, and
//!   whether a private send to a topic the policy forbids is refused (new) or not (old, the bug
//!   the check fixed), so a figure never silently measures a path that does nothing.
use crate::loadgen::{postmaster_pid, proc_tree_cpu_secs};
use crate::writers::{connect, settled_run, PgbenchRun, WritersOpts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Users with a subscription in the 1,000-subscriber variants (whard_own.sql draws from as many).
const USERS: usize = 1000;

/// The login role of the non-bypass sender: a member of `authenticated`, whose INSERT policy
/// on realtime.messages admits it to topic `room`.
const SENDER: &str = "bench_sender";

/// One measured variant: what it writes, the pgbench script, whether it runs as the sender
/// (otherwise as the superuser `postgres`), and whether one transaction queues messages (0: none,
/// 1: some) in both builds.
pub struct Variant {
    pub id: &'static str,
    pub group: &'static str,
    pub title: &'static str,
    pub script: &'static str,
    pub sender: bool,
    /// The statement of the script (with a fixed owner), checked in a rolled-back transaction.
    pub probe: &'static str,
    pub messages: i64,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        id: "capture_0",
        group: "capture",
        title: "INSERT, captured table, 0 subscribers",
        script: "whard_cap0.sql",
        sender: false,
        probe: "INSERT INTO bench_hard_0(v, owner) VALUES (0, 'user-0')",
        messages: 0,
    },
    Variant {
        id: "capture_1",
        group: "capture",
        title: "INSERT, captured table, 1 subscriber, no filter",
        script: "whard_cap1.sql",
        sender: false,
        probe: "INSERT INTO bench_hard_1(v, owner) VALUES (0, 'user-0')",
        messages: 1,
    },
    Variant {
        id: "capture_1_rls",
        group: "capture",
        title: "INSERT, captured table with an owner policy (RLS), 1 subscriber, no filter",
        script: "whard_cap1_rls.sql",
        sender: false,
        probe: "INSERT INTO bench_hard_1_rls(v, owner) VALUES (0, 'user-0')",
        messages: 1,
    },
    Variant {
        id: "capture_1000_eq_rls",
        group: "capture",
        title: "INSERT of a random user's row, owner policy (RLS), 1,000 subscribers each filtered owner=eq.<own id>",
        script: "whard_own.sql",
        sender: false,
        probe: "INSERT INTO bench_hard_own(v, owner) VALUES (0, 'user-5')",
        messages: 1,
    },
    Variant {
        id: "capture_1000_neq",
        group: "capture",
        title: "INSERT (v = 0), no RLS, 1,000 subscribers each filtered v=neq.<i> (999 match)",
        script: "whard_neq.sql",
        sender: false,
        probe: "INSERT INTO bench_hard_neq(v, owner) VALUES (0, 'user-0')",
        messages: 1,
    },
    Variant {
        id: "broadcast_public",
        group: "send",
        title: "SELECT realtime.broadcast('room', 'e', '{\"a\":1}') (public), as postgres",
        script: "whard_broadcast.sql",
        sender: false,
        probe: "SELECT realtime.broadcast('room', 'e', '{\"a\":1}')",
        messages: 1,
    },
    Variant {
        id: "send_public",
        group: "send",
        title: "SELECT realtime.send('{\"a\":1}', 'e', 'room', false) (public), as postgres",
        script: "whard_send_public.sql",
        sender: false,
        probe: "SELECT realtime.send('{\"a\":1}', 'e', 'room', false)",
        messages: 1,
    },
    Variant {
        id: "send_private_superuser",
        group: "send",
        title: "SELECT realtime.send('{\"a\":1}', 'e', 'room', true) (private), as postgres (bypasses RLS: no probe)",
        script: "whard_send_private.sql",
        sender: false,
        probe: "SELECT realtime.send('{\"a\":1}', 'e', 'room', true)",
        messages: 1,
    },
    Variant {
        id: "send_private_rls",
        group: "send",
        title: "SELECT realtime.send('{\"a\":1}', 'e', 'room', true) (private), as a member of authenticated (INSERT-policy probe)",
        script: "whard_send_private.sql",
        sender: true,
        probe: "SELECT realtime.send('{\"a\":1}', 'e', 'room', true)",
        messages: 1,
    },
    Variant {
        id: "broadcast_private_rls",
        group: "send",
        title: "SELECT realtime.broadcast('room', 'e', '{\"a\":1}', true) (private), as a member of authenticated (INSERT-policy probe)",
        script: "whard_broadcast_private.sql",
        sender: true,
        probe: "SELECT realtime.broadcast('room', 'e', '{\"a\":1}', true)",
        messages: 1,
    },
    Variant {
        id: "insert_send_private_rls",
        group: "send",
        title: "INSERT into a logged table + realtime.send(..., true) (private) in one statement, as a member of authenticated (INSERT-policy probe; the transaction writes WAL anyway)",
        script: "whard_insert_send_private.sql",
        sender: true,
        probe: "WITH i AS (INSERT INTO bench_hard_logged(v, owner) VALUES (0, 'user-0') RETURNING 1) SELECT realtime.send('{\"a\":1}', 'e', 'room', true) FROM i",
        messages: 1,
    },
];

/// The variants `only` names (comma-separated ids; empty: all).
pub fn selected(only: &str) -> Vec<&'static Variant> {
    let ids: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    VARIANTS
        .iter()
        .filter(|v| ids.is_empty() || ids.contains(&v.id))
        .collect()
}

/// Variants whose old figure is not a like-for-like baseline: the old build did not check the
/// caller's policy at all (the bug the check fixed).
pub fn unchecked_before(id: &str) -> bool {
    id.ends_with("_private_rls")
}

/// (table, row-level security, subscribers and their filter).
const TABLES: &[(&str, bool, Subscribers)] = &[
    ("bench_hard_0", false, Subscribers::None),
    ("bench_hard_1", false, Subscribers::One),
    ("bench_hard_1_rls", true, Subscribers::One),
    ("bench_hard_own", true, Subscribers::OwnerEq),
    ("bench_hard_neq", false, Subscribers::VNeq),
];

#[derive(Clone, Copy)]
enum Subscribers {
    None,
    /// user-0, no filter.
    One,
    /// user-i filtered owner=eq.user-i.
    OwnerEq,
    /// user-i filtered v=neq.i.
    VNeq,
}

const SUB: &str = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'";

/// The topic the sender's INSERT policy admits; the probe sends to another one too.
const SEND_POLICY: &str =
    "create policy bench_hard_send on realtime.messages for insert to authenticated with check (realtime.topic() = 'room')";

fn setup_sql(users: usize, prefill: usize) -> String {
    let tables: Vec<&str> = TABLES.iter().map(|t| t.0).collect();
    let mut sql = format!(
        "drop policy if exists bench_hard_send on realtime.messages;
         drop table if exists {};
         delete from realtime.subscription where sidecar = '{SIDECAR}';
         do $$ begin
           if not exists (select from pg_roles where rolname = '{SENDER}') then
             create role {SENDER} login in role authenticated;
           end if;
         end $$;
         {SEND_POLICY};
         drop table if exists bench_hard_logged;
         create table bench_hard_logged(id bigserial primary key, v int not null, owner text not null)
           with (autovacuum_enabled = false);
         grant insert on bench_hard_logged to authenticated;
         grant usage on sequence bench_hard_logged_id_seq to authenticated;",
        tables.join(", ")
    );
    for &(name, rls, _) in TABLES {
        sql.push_str(&format!(
            "create unlogged table {name}(id bigserial primary key, v int not null, owner text not null)
               with (autovacuum_enabled = false);
             grant select on {name} to authenticated;
             select realtime.enable('{name}');
             insert into {name}(v, owner) select i, 'user-' || i % {users} from generate_series(1, {prefill}) i;
             analyze {name};"
        ));
        if rls {
            sql.push_str(&format!(
                "alter table {name} enable row level security;
                 create policy bench_read on {name} for select to authenticated using (owner = {SUB});"
            ));
        }
    }
    sql
}

/// The (fictitious) sidecar the subscriptions belong to; nobody reads its messages.
const SIDECAR: &str = "00000000-0000-4000-8000-00000000bead";

/// `realtime._subscribe` calls as the sidecar makes them, one channel per user.
fn subscribe_calls(users: usize) -> Vec<(String, String)> {
    let mut calls = vec![];
    for &(table, _, subs) in TABLES {
        let (n, filter): (usize, fn(usize) -> Value) = match subs {
            Subscribers::None => continue,
            Subscribers::One => (1, |_| json!([])),
            Subscribers::OwnerEq => (
                users,
                |i| json!([{"column": "owner", "op": "eq", "negate": false, "value": format!("user-{i}")}]),
            ),
            Subscribers::VNeq => (
                users,
                |i| json!([{"column": "v", "op": "neq", "negate": false, "value": i.to_string()}]),
            ),
        };
        for i in 0..n {
            let claims = json!({"role": "authenticated", "sub": format!("user-{i}")});
            let bindings = json!([{"binding": 1, "event": "*", "schema": "public", "table": table,
                                   "filters": filter(i)}]);
            calls.push((claims.to_string(), bindings.to_string()));
        }
    }
    calls
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HardeningRun {
    pub build: String,
    #[serde(flatten)]
    pub run: PgbenchRun,
    /// Rows in realtime.queue after the run (emptied before it).
    pub queue_rows: Option<i64>,
    /// CPU of the whole cluster (postmaster and backends) per transaction, microseconds.
    pub postgres_us_per_tx: Option<f64>,
    /// Cores busy with other work on the machine during the run (its settle time included).
    pub other_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildInfo {
    pub port: u16,
    pub extversion: Option<String>,
    /// `c` once send moved to Rust, `plpgsql` before.
    pub send_language: Option<String>,
    pub has_sidecar_role: Option<bool>,
    pub subscriptions: Option<i64>,
    /// Messages one transaction of each variant queues (probed in a rolled-back transaction).
    pub messages_per_tx: BTreeMap<String, Option<i64>>,
    /// Messages queued by the sender's private send to a topic its policy does not admit.
    pub forbidden_private_send_queued: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HardeningResult {
    pub params: Value,
    pub builds: BTreeMap<String, BuildInfo>,
    pub runs: Vec<HardeningRun>,
    pub error: Option<String>,
}

pub struct HardeningOpts {
    /// The current extension's cluster (and the pgbench settings for both).
    pub new: WritersOpts,
    pub old_port: u16,
    pub old_rev: String,
    pub prefill: usize,
    /// Comma-separated variant ids to run (empty: all).
    pub only: String,
}

/// `o` pointed at another cluster or role.
fn at(o: &WritersOpts, port: u16, user: &str) -> WritersOpts {
    WritersOpts {
        port,
        user: user.to_string(),
        ..o.clone()
    }
}

struct Cluster {
    build: &'static str,
    port: u16,
    client: tokio_postgres::Client,
    postmaster: Option<u32>,
}

pub async fn run(o: &HardeningOpts) -> HardeningResult {
    let w = &o.new;
    let mut res = HardeningResult {
        params: json!({
            "tool": "pgbench",
            "clients": w.clients,
            "threads": w.threads,
            "seconds_per_run": w.seconds,
            "rounds": w.rounds,
            "protocol": "simple",
            "old": format!("pg_realtime built from git {} (before the hardening), in a private copy of the same PostgreSQL binaries", o.old_rev),
            "new": "pg_realtime as installed (make install)",
            "clusters": "one per build, same settings (scripts/pg.sh of each revision), no sidecar; only one under load at a time",
            "order": "per round and variant: old then new in even rounds, new then old in odd rounds",
            "tables": format!("UNLOGGED (id bigserial primary key, v int, owner text), realtime.enable, select granted to authenticated, {} analyzed rows before the runs (owners user-0..user-{}), autovacuum off (insert-only), not truncated between runs (same size in both builds at each run); owner policy: owner = request.jwt.claims->>'sub'; insert_send_private_rls writes a LOGGED table of the same shape, not captured", o.prefill, USERS - 1),
            "subscriptions": format!("created by calling realtime._subscribe(sidecar, claims, bindings) as postgres, one channel per user (claims role authenticated, sub user-<i>), event *, for a sidecar that never reads; 1 subscriber = user-0 unfiltered; {} subscribers = user-0..user-{} each filtered owner=eq.user-<i> or v=neq.<i>", USERS, USERS - 1),
            "before_each_run": "realtime.queue truncated (nobody drains it), CHECKPOINT, VACUUM realtime.messages (the dead rows of rolled-back policy probes), then 1.5 s idle",
            "sender": format!("login role {SENDER}, member of authenticated; INSERT policy on realtime.messages: {SEND_POLICY}"),
            "aggregation": "best tps of the rounds per (variant, build); spread = lowest and highest round",
        }),
        ..Default::default()
    };
    let mut clusters = vec![];
    for (build, port) in [("old", o.old_port), ("new", w.port)] {
        let opts = at(w, port, "postgres");
        match setup(&opts, o).await {
            Ok((client, info)) => {
                let dsn = format!("host={} port={port} user=postgres dbname={}", w.host, w.db);
                res.builds.insert(build.into(), info);
                clusters.push(Cluster {
                    build,
                    port,
                    client,
                    postmaster: postmaster_pid(&dsn).await,
                });
            }
            Err(e) => {
                res.error = Some(format!("{build} build (port {port}): {e}"));
                return res;
            }
        }
    }
    let variants = selected(&o.only);
    res.params["variants"] = json!(variants.iter().map(|v| v.id).collect::<Vec<_>>());
    for round in 0..w.rounds {
        for v in &variants {
            let mut order: Vec<&Cluster> = clusters.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for c in order {
                let opts = at(w, c.port, if v.sender { SENDER } else { "postgres" });
                // A quiet start: no checkpoint or vacuum left over from the previous run.
                if let Err(e) = c.client.batch_execute("checkpoint").await {
                    res.error = Some(format!("{} build: checkpoint: {e}", c.build));
                    return res;
                }
                if let Err(e) = c.client.batch_execute("vacuum realtime.messages").await {
                    res.error = Some(format!("{} build: vacuum: {e}", c.build));
                    return res;
                }
                let cpu0 = c.postmaster.and_then(proc_tree_cpu_secs);
                let (busy0, mine0, t0) = (
                    machine_busy_secs(),
                    proc_tree_cpu_secs(std::process::id()),
                    Instant::now(),
                );
                let label = (v.group, v.id, round);
                let run = match settled_run(
                    &opts,
                    &c.client,
                    "truncate realtime.queue",
                    v.script,
                    "simple",
                    label,
                )
                .await
                {
                    Ok(run) => run,
                    Err(e) => {
                        res.error = Some(format!("{} build: {e}", c.build));
                        return res;
                    }
                };
                gone(&c.client).await;
                let cpu = c
                    .postmaster
                    .and_then(proc_tree_cpu_secs)
                    .zip(cpu0)
                    .map(|(b, a)| b - a);
                // What the rest of the machine (other agents' work) used meanwhile: every busy
                // core-second that was neither this cluster's nor this process's and pgbench's.
                let other_cores = (|| {
                    let busy = machine_busy_secs()? - busy0?;
                    let mine = proc_tree_cpu_secs(std::process::id())? - mine0?;
                    Some(((busy - cpu? - mine) / t0.elapsed().as_secs_f64()).max(0.0))
                })();
                let queue_rows = c
                    .client
                    .query_one("select count(*) from realtime.queue", &[])
                    .await
                    .ok()
                    .map(|r| r.get::<_, i64>(0));
                let postgres_us_per_tx = cpu
                    .zip(run.transactions.filter(|&n| n > 0))
                    .map(|(cpu, n)| cpu * 1e6 / n as f64);
                eprintln!(
                    "    {} build: {} queue rows, {:.0} us Postgres CPU per transaction, other load {:.2} cores",
                    c.build,
                    queue_rows.unwrap_or(-1),
                    postgres_us_per_tx.unwrap_or(f64::NAN),
                    other_cores.unwrap_or(f64::NAN)
                );
                res.runs.push(HardeningRun {
                    build: c.build.into(),
                    run,
                    queue_rows,
                    postgres_us_per_tx,
                    other_cores,
                });
            }
        }
    }
    for c in &clusters {
        let tables: Vec<&str> = TABLES.iter().map(|t| t.0).collect();
        let teardown = format!(
            "delete from realtime.subscription where sidecar = '{SIDECAR}'; drop table if exists bench_hard_logged, {};
             drop policy if exists bench_hard_send on realtime.messages; truncate realtime.queue;",
            tables.join(", ")
        );
        if let Err(e) = c.client.batch_execute(&teardown).await {
            res.error = Some(format!("{} build teardown: {e}", c.build));
        }
    }
    res
}

/// Tables, policies, roles and subscriptions in one cluster, then the probes of what each
/// variant queues there.
async fn setup(
    opts: &WritersOpts,
    o: &HardeningOpts,
) -> Result<(tokio_postgres::Client, BuildInfo), String> {
    let client = connect(opts).await?;
    client
        .batch_execute(&setup_sql(USERS, o.prefill))
        .await
        .map_err(|e| format!("setup: {e}"))?;
    let subscribe = client
        .prepare("select count(*) from realtime._subscribe($1::text::uuid, $2::text::jsonb, $3::text::jsonb)")
        .await
        .map_err(|e| format!("prepare _subscribe: {e}"))?;
    for (claims, bindings) in subscribe_calls(USERS) {
        client
            .query_one(&subscribe, &[&SIDECAR, &claims, &bindings])
            .await
            .map_err(|e| format!("_subscribe {claims} {bindings}: {e}"))?;
    }
    let mut info = BuildInfo {
        port: opts.port,
        ..Default::default()
    };
    let row = client
        .query_one(
            "select (select extversion from pg_extension where extname = 'pg_realtime'),
                    (select l.lanname::text from pg_proc p join pg_language l on l.oid = p.prolang
                      where p.oid = 'realtime.send(jsonb, text, text, boolean)'::regprocedure),
                    exists (select from pg_roles where rolname = 'realtime_sidecar'),
                    (select count(*) from realtime.subscription where sidecar = $1::text::uuid)",
            &[&SIDECAR],
        )
        .await
        .map_err(|e| format!("build info: {e}"))?;
    info.extversion = row.get(0);
    info.send_language = row.get(1);
    info.has_sidecar_role = row.get(2);
    info.subscriptions = row.get(3);
    for v in VARIANTS {
        let role = if v.sender { SENDER } else { "postgres" };
        let got = pending_after(&client, role, v.probe).await?;
        if (got > 0) != (v.messages > 0) {
            return Err(format!(
                "{}: one transaction queued {got} messages, expected {} (the variant would not measure what it says)",
                v.id, v.messages
            ));
        }
        info.messages_per_tx.insert(v.id.into(), Some(got));
    }
    // The check the new build adds: the sender's policy admits topic `room` only.
    let forbidden = "SELECT realtime.send('{\"a\":1}', 'e', 'not-room', true)";
    info.forbidden_private_send_queued = Some(pending_after(&client, SENDER, forbidden).await?);
    Ok((client, info))
}

/// Busy CPU seconds of the whole machine so far (/proc/stat, every state but idle and iowait).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map_while(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user); USER_HZ = 100.
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(busy / 100.0)
}

/// Waits (up to 5 s) until pgbench's backends have exited and been reaped, so that their CPU
/// time is in the postmaster's account when it is read.
async fn gone(client: &tokio_postgres::Client) {
    for _ in 0..50 {
        let left = client
            .query_one(
                "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_or(0, |r| r.get::<_, i64>(0));
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

/// Messages `statement`, run as `role`, leaves pending in its transaction (rolled back).
async fn pending_after(
    client: &tokio_postgres::Client,
    role: &str,
    statement: &str,
) -> Result<i64, String> {
    client
        .batch_execute(&format!(
            "begin; set local role {role}; {statement}; reset role;"
        ))
        .await
        .map_err(|e| format!("probe {statement} as {role}: {e}"))?;
    let n = client
        .query_one("select realtime._pending()", &[])
        .await
        .map(|r| r.get::<_, i64>(0));
    client
        .batch_execute("rollback")
        .await
        .map_err(|e| format!("rollback: {e}"))?;
    n.map_err(|e| format!("realtime._pending() after {statement} as {role}: {e}"))
}
