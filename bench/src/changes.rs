//! Postgres Changes under RLS. `subscribers` WebSocket clients, client i with its own user JWT
//! (role `authenticated`, `sub` = `user-<i>`), each join one channel whose `postgres_changes`
//! bindings cover twin tables of one shape, so that subjects differ only in the table written:
//!
//! * unfiltered: `rls` (a membership policy evaluated per user, every user a member) vs `open`
//!   (RLS disabled): every insert goes to every subscriber;
//! * selective: `rls_owned` (owner-only policy) vs `open_owned` (RLS disabled), each client
//!   filtered with `owner=eq.<its user>`, inserts with random owners: every insert goes to one
//!   subscriber; and `rls_owned_small`, the same with only `small` of the users subscribed (if a
//!   change cost work per subscription, 10x the subscribers would cut the rate 10x).
//!
//! Producers insert rows carrying the producer's clock (`ts_us`), a sequence number and the step
//! id; latency runs from that clock, taken just before the INSERT (autocommit), to the client
//! parsing the `postgres_changes` frame, so it includes the routing the writer's statement does.
//! Per group, the subjects' throughput searches run interleaved step by step (as the fan-out
//! search), then each subject runs one fixed-rate step at the group's lowest maximum (a subject
//! without one counts with the lowest rate it tried), where the writer's statement time and the
//! CPU per delivery compare at equal load. Every client also
//! checks that each record it gets is its own (`owner`) where rows have an owner, and one
//! outsider (no membership) subscribed to `rls` must get nothing.
use crate::frame::parse_change;
use crate::jwt;
use crate::loadgen::{
    connect_db, connect_ws, postmaster_pid, run_until_stopped, Bench, ClientCounters, ClientState,
    Clients, Producer, Receivers, Search, SearchLimits, Session, StepResult, StepSpec,
};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout_at};
use tokio_tungstenite::tungstenite::Message;

pub struct ChangesOpts {
    /// `ws://127.0.0.1:P/realtime/v1/websocket`, without parameters.
    pub url: String,
    pub dsn: String,
    pub jwt_secret: String,
    pub subscribers: usize,
    /// Subscribers of the `rls_owned_small` table (users 0 .. small).
    pub small: usize,
    pub producers: usize,
    /// Rows in each table before the run.
    pub prefill: usize,
    /// Client source addresses, used round robin.
    pub sources: Vec<IpAddr>,
    pub step_secs: f64,
    pub fixed_secs: f64,
    pub p99_limit_us: u64,
    /// Per subject.
    pub max_steps: usize,
    /// Per group (all its subjects, interleaved).
    pub search_budget: Duration,
    /// Inserts/s where the unfiltered searches start, and their bound.
    pub all_start_rate: f64,
    pub all_max_rate: f64,
    /// The same for the selective searches.
    pub owned_start_rate: f64,
    pub owned_max_rate: f64,
    pub sidecar_pid: Option<u32>,
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    None,
    /// The subscriber is in `bench_ch_members` (every user is).
    Members,
    /// The row's `owner` is the subscriber.
    Owner,
}

struct Table {
    subject: &'static str,
    group: &'static str,
    table: &'static str,
    policy: Policy,
    /// Subscribed with `owner=eq.<user>`; rows get random owners.
    owned: bool,
    /// Only users 0 .. `small` subscribe.
    small: bool,
}

const TABLES: &[Table] = &[
    Table {
        subject: "rls",
        group: "unfiltered",
        table: "bench_ch_rls",
        policy: Policy::Members,
        owned: false,
        small: false,
    },
    Table {
        subject: "open",
        group: "unfiltered",
        table: "bench_ch_open",
        policy: Policy::None,
        owned: false,
        small: false,
    },
    Table {
        subject: "rls_owned",
        group: "selective",
        table: "bench_ch_rls_owned",
        policy: Policy::Owner,
        owned: true,
        small: false,
    },
    Table {
        subject: "open_owned",
        group: "selective",
        table: "bench_ch_open_owned",
        policy: Policy::None,
        owned: true,
        small: false,
    },
    Table {
        subject: "rls_owned_small",
        group: "selective",
        table: "bench_ch_rls_small",
        policy: Policy::Owner,
        owned: true,
        small: true,
    },
];

const SUB: &str = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'";

fn policy_sql(p: Policy) -> Option<String> {
    match p {
        Policy::None => None,
        Policy::Members => Some(format!(
            "exists (select 1 from bench_ch_members m where m.user_id = {SUB})"
        )),
        Policy::Owner => Some(format!("owner = {SUB}")),
    }
}

fn teardown_sql() -> String {
    let tables: Vec<&str> = TABLES.iter().map(|t| t.table).collect();
    format!(
        "drop table if exists {}, bench_ch_members;",
        tables.join(", ")
    )
}

/// Every table starts with `prefill` analyzed rows (nobody subscribed yet, so nothing is
/// delivered): the visibility check's plan is made, and kept, for a table of that size. A table
/// planned while nearly empty gets a hash join over all its rows, kept as it grows, so the check
/// would cost more with every step.
fn setup_sql(users: usize, prefill: usize) -> String {
    let mut sql = format!(
        "{}
         create table bench_ch_members(user_id text primary key);
         insert into bench_ch_members select 'user-' || i from generate_series(0, {users} - 1) i;
         analyze bench_ch_members;
         grant select on bench_ch_members to authenticated;",
        teardown_sql()
    );
    for t in TABLES {
        let name = t.table;
        sql.push_str(&format!(
            "create unlogged table {name}(id bigserial primary key, ts_us int8 not null,
               seq_no int8 not null, step_no int8 not null, owner text);
             grant select on {name} to authenticated;
             select realtime.enable('{name}');
             insert into {name}(ts_us, seq_no, step_no, owner)
               select 0, -1, -1, 'user-' || i % {users} from generate_series(1, {prefill}) i;
             analyze {name};"
        ));
        if let Some(using) = policy_sql(t.policy) {
            sql.push_str(&format!(
                "alter table {name} enable row level security;
                 create policy bench_read on {name} for select to authenticated using ({using});"
            ));
        }
    }
    sql
}

/// The producing statement ($1 clock, $2 sequence number, $3 step); `owners` users to draw from.
fn insert_sql(t: &Table, owners: usize) -> String {
    if t.owned {
        format!(
            "insert into {}(ts_us, seq_no, step_no, owner)
             values ($1, $2, $3, 'user-' || floor(random() * {owners})::int)",
            t.table
        )
    } else {
        format!(
            "insert into {}(ts_us, seq_no, step_no) values ($1, $2, $3)",
            t.table
        )
    }
}

/// The v2 `phx_join` of client `user`'s channel (`realtime:db`), bindings on every table it
/// subscribes to.
fn join_message(user: &str, index: Option<usize>, small: usize, token: &str) -> String {
    let bindings: Vec<serde_json::Value> = TABLES
        .iter()
        .filter(|t| match index {
            // The outsider: the unfiltered RLS table only.
            None => t.subject == "rls",
            Some(i) => !t.small || i < small,
        })
        .map(|t| {
            let mut b = serde_json::json!({"event": "*", "schema": "public", "table": t.table});
            if t.owned {
                b["filter"] = format!("owner=eq.{user}").into();
            }
            b
        })
        .collect();
    serde_json::json!(["1", "1", "realtime:db", "phx_join", {
        "config": {
            "broadcast": {"self": false, "ack": false},
            "presence": {"enabled": false},
            "postgres_changes": bindings,
            "private": false
        },
        "access_token": token
    }])
    .to_string()
}

/// Deliveries a client should never have had.
#[derive(Default)]
struct Leaks {
    /// A record with another user's `owner`.
    foreign: AtomicU64,
    /// Anything the outsider (no membership) got.
    outsider: AtomicU64,
    last: std::sync::Mutex<Option<String>>,
}

impl Leaks {
    fn note(&self, counter: &AtomicU64, frame: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap() = Some(frame.chars().take(400).collect());
    }
}

/// Who a client is: its user id, and whether it is the outsider.
struct Me {
    user: String,
    outsider: bool,
}

fn on_frame(text: &str, st: &ClientState, me: &Me, leaks: &Leaks) {
    match parse_change(text.as_bytes()) {
        Some((stamp, owner)) => {
            if me.outsider {
                leaks.note(&leaks.outsider, text);
            } else if owner.is_some_and(|o| o != me.user.as_bytes()) {
                leaks.note(&leaks.foreign, text);
            }
            st.record(stamp);
        }
        None => st.on_text(text),
    }
}

/// The time one channel may take to be subscribed: 1,000 joins queue for the sidecar's small
/// database pool.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Joins and waits for the reply and then the `postgres_changes` system status; changes that
/// arrive first are recorded.
async fn subscribe(
    ws: &mut crate::loadgen::Ws,
    join: &str,
    st: &ClientState,
    me: &Me,
    leaks: &Leaks,
) -> Result<(), String> {
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("not subscribed within {SUBSCRIBE_TIMEOUT:?}"))?;
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => return Err(format!("closed during join: {c:?}")),
            None => return Err("closed during join".into()),
            Some(Err(e)) => return Err(format!("join: {e}")),
            Some(Ok(_)) => continue,
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
        match v[3].as_str() {
            Some("phx_reply") if v[1] == "1" && v[4]["status"] != "ok" => {
                return Err(format!("join refused: {t}"))
            }
            Some("system") if v[4]["extension"] == "postgres_changes" => {
                return if v[4]["status"] == "ok" {
                    st.set_joined();
                    Ok(())
                } else {
                    Err(format!("subscription failed: {t}"))
                };
            }
            Some("phx_reply") => {}
            _ => on_frame(t.as_str(), st, me, leaks),
        }
    }
}

fn session(
    url: String,
    tokens: Arc<Vec<String>>,
    small: usize,
    sources: Vec<IpAddr>,
    leaks: Arc<Leaks>,
) -> Session {
    Arc::new(move |i, st, mut stop, permits: Arc<Semaphore>| {
        // The last client is the outsider.
        let outsider = i + 1 == tokens.len();
        let me = Me {
            user: if outsider {
                "user-outsider".into()
            } else {
                format!("user-{i}")
            },
            outsider,
        };
        let token = tokens[i].clone();
        let url = format!("{url}?apikey={token}&vsn=2.0.0");
        let join = join_message(&me.user, (!outsider).then_some(i), small, &token);
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let leaks = leaks.clone();
        Box::pin(async move {
            let mut ws = {
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                let mut ws = connect_ws(&url, source).await?;
                subscribe(&mut ws, &join, &st, &me, &leaks).await?;
                ws
            };
            run_until_stopped(&mut ws, &mut stop, |m| {
                if let Message::Text(t) = m {
                    on_frame(t.as_str(), &st, &me, &leaks);
                }
            })
            .await
        })
    })
}

/// One table's measurements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubjectResult {
    pub subject: String,
    pub group: String,
    pub table: String,
    /// The SELECT policy (`using` clause); None: RLS disabled.
    pub policy: Option<String>,
    /// The client filter, `<user>` standing for each client's own id.
    pub filter: Option<String>,
    pub subscribers: usize,
    /// Deliveries each insert makes.
    pub deliveries_per_change: u64,
    pub steps: Vec<StepResult>,
    pub best: Option<StepResult>,
    pub search_note: String,
    /// The group's fixed-rate step.
    pub fixed: Option<StepResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChangesResult {
    pub params: serde_json::Value,
    pub subjects: Vec<SubjectResult>,
    /// From the first connect to the last client's `Subscribed to PostgreSQL`.
    pub subscribe_s: f64,
    pub client_counters: ClientCounters,
    pub foreign_deliveries: u64,
    pub outsider_deliveries: u64,
    pub last_leak: Option<String>,
    pub error: Option<String>,
}

impl ChangesResult {
    pub fn subject(&self, name: &str) -> Option<&SubjectResult> {
        self.subjects.iter().find(|s| s.subject == name)
    }
}

struct Subject {
    table: &'static Table,
    producer: Producer,
    search: Search,
    res: SubjectResult,
}

pub async fn run(o: &ChangesOpts) -> ChangesResult {
    let mut res = ChangesResult {
        params: serde_json::json!({
            "subscribers": o.subscribers,
            "small_subscribers": o.small,
            "producer_connections": o.producers,
            "step_seconds": o.step_secs,
            "fixed_step_seconds": o.fixed_secs,
            "p99_limit_ms": o.p99_limit_us / 1000,
            "tables": "UNLOGGED (id bigserial primary key, ts_us int8, seq_no int8, step_no int8, owner text), realtime.enable, select granted to authenticated",
            "prefill_rows_per_table": o.prefill,
            "clients": "one WebSocket per user (JWT role authenticated, sub user-<i>), one channel realtime:db with a postgres_changes binding (event *) per table; plus one outsider (sub user-outsider, no membership) bound to the unfiltered RLS table only",
            "insert": "one row per statement, autocommit, over the producer connections round robin; owned tables: owner = 'user-' || floor(random() * subscribers)",
            "latency": "from the producer's wall clock just before the INSERT to the client parsing the postgres_changes frame (same machine, same clock): includes the routing the writer's statement does before it commits",
            "statement": "the INSERT as the producer sees it (send to completion, commit included)",
            "search": "per group, the subjects' searches interleaved step by step: double the insert rate until a step fails (a step that missed only the p99 limit, by at most 50%, is re-run once), then bisect to within 10%",
            "step_pass": "all inserts sent at >= 97% of the target rate, every delivery within 1 s of the last insert, p99 <= limit, no loss, no disconnect",
            "fixed_step": "after a group's searches, each of its subjects for fixed_step_seconds at one rate: the lowest of their maximum rates (for a subject whose search found none, the lowest rate it tried)",
            "policies": TABLES.iter().map(|t| (t.subject, policy_sql(t.policy))).collect::<std::collections::BTreeMap<_, _>>(),
        }),
        ..Default::default()
    };
    let db = match connect_db(&o.dsn).await {
        Ok(db) => db,
        Err(e) => {
            res.error = Some(e);
            return res;
        }
    };
    if let Err(e) = measure(o, &db, &mut res).await {
        eprintln!("changes: {e}");
        res.error = Some(e);
    }
    // The clients are gone: give the sidecar a moment to drop their subscriptions.
    sleep(Duration::from_secs(1)).await;
    if let Err(e) = db.batch_execute(&teardown_sql()).await {
        res.error.get_or_insert(format!("teardown: {e}"));
    }
    res
}

async fn measure(
    o: &ChangesOpts,
    db: &tokio_postgres::Client,
    res: &mut ChangesResult,
) -> Result<(), String> {
    if o.small == 0 || o.small > o.subscribers {
        return Err("--small must be within 1 ..= --subscribers".into());
    }
    db.batch_execute(&setup_sql(o.subscribers, o.prefill))
        .await
        .map_err(|e| format!("setup: {e}"))?;
    let postmaster = postmaster_pid(&o.dsn).await;

    let mut subjects: Vec<Subject> = vec![];
    for t in TABLES {
        let owners = if t.small { o.small } else { o.subscribers };
        let dsn = format!("{} application_name={PRODUCER_APP}", o.dsn);
        let mut producer = Producer::sql(&dsn, o.producers, &insert_sql(t, owners)).await?;
        // All subjects deliver to the same clients, whose duplicate check keys on `n`.
        if let Some(first) = subjects.first() {
            producer.share_numbering(&first.producer);
        }
        let (start, max) = if t.owned {
            (o.owned_start_rate, o.owned_max_rate)
        } else {
            (o.all_start_rate, o.all_max_rate)
        };
        let subscribers = if t.small { o.small } else { o.subscribers };
        subjects.push(Subject {
            table: t,
            producer,
            search: Search::new(
                start,
                SearchLimits {
                    max_rate: max,
                    p99_limit_us: o.p99_limit_us,
                    max_steps: o.max_steps,
                },
            ),
            res: SubjectResult {
                subject: t.subject.into(),
                group: t.group.into(),
                table: t.table.into(),
                policy: policy_sql(t.policy),
                filter: t.owned.then(|| "owner=eq.<user>".into()),
                subscribers,
                deliveries_per_change: if t.owned { 1 } else { subscribers as u64 },
                ..Default::default()
            },
        });
    }

    // Members user-0 .. user-(n-1), then the outsider.
    let tokens: Vec<String> = (0..o.subscribers)
        .map(|i| format!("user-{i}"))
        .chain(["user-outsider".to_string()])
        .map(|sub| jwt::hs256(&o.jwt_secret, "authenticated", 7200, &[("sub", &sub)]))
        .collect();
    let leaks = Arc::new(Leaks::default());
    eprintln!(
        "changes: connecting {} subscribers (+1 outsider), {} bindings each",
        o.subscribers,
        TABLES.len()
    );
    let t0 = Instant::now();
    let clients = Clients::spawn(
        tokens.len(),
        session(
            o.url.clone(),
            Arc::new(tokens),
            o.small,
            o.sources.clone(),
            leaks.clone(),
        ),
        Duration::from_secs(180),
    )
    .await?;
    res.subscribe_s = t0.elapsed().as_secs_f64();
    eprintln!("changes: all subscribed in {:.1} s", res.subscribe_s);
    sleep(Duration::from_secs(1)).await;

    let mut step_id: i64 = 0;
    for group in ["unfiltered", "selective"] {
        let mut members: Vec<&mut Subject> = subjects
            .iter_mut()
            .filter(|s| s.table.group == group)
            .collect();
        search(&mut members, &clients, db, o, postmaster, &mut step_id).await?;
        // A subject that never passed counts with the lowest rate it tried.
        let fixed_rate = members
            .iter()
            .filter_map(|s| match &s.res.best {
                Some(b) => Some(b.target_rate),
                None => s.res.steps.iter().map(|r| r.target_rate).reduce(f64::min),
            })
            .reduce(f64::min)
            .unwrap_or(1.0);
        for s in members.iter_mut() {
            step_id += 1;
            let _ = clients.wait_joined(Duration::from_secs(15)).await;
            eprint!("{}:", s.table.subject);
            let spec = step_spec(
                format!("fixed@{fixed_rate:.0}"),
                fixed_rate,
                o.fixed_secs,
                o,
                None,
            );
            let (r, _) = bench(s, &clients, postmaster, o).step(step_id, &spec).await;
            s.res.fixed = Some(r);
            settle(db).await?;
        }
    }

    // Frames still in flight to the outsider would be missed by an immediate count.
    sleep(Duration::from_secs(1)).await;
    res.client_counters = clients.receivers().counters();
    res.foreign_deliveries = leaks.foreign.load(Ordering::Relaxed);
    res.outsider_deliveries = leaks.outsider.load(Ordering::Relaxed);
    res.last_leak = leaks.last.lock().unwrap().clone();
    clients.shutdown().await;
    for mut s in subjects {
        s.producer.close().await;
        res.subjects.push(s.res);
    }
    Ok(())
}

fn step_spec(label: String, rate: f64, secs: f64, o: &ChangesOpts, p99: Option<u64>) -> StepSpec {
    StepSpec {
        label,
        rate,
        count: (rate * secs).round().max(1.0) as u64,
        use_conns: o.producers,
        grace: Duration::from_secs(1),
        backlog_wait: Duration::from_secs(20),
        p99_limit_us: p99,
    }
}

/// The measurement handle of one subject: its subscribers are the first clients (the outsider,
/// last, is nobody's).
fn bench<'a>(
    s: &'a Subject,
    clients: &'a Clients,
    postmaster: Option<u32>,
    o: &ChangesOpts,
) -> Bench<'a> {
    Bench {
        receivers: Receivers(&clients.states[..s.res.subscribers]),
        deliveries_per_msg: s.res.deliveries_per_change,
        producer: &s.producer,
        server_pid: o.sidecar_pid,
        postmaster_pid: postmaster,
    }
}

/// The producers' `application_name`, to find their statements in `pg_stat_activity`.
const PRODUCER_APP: &str = "pg-realtime-bench-changes";

/// Ends what a step left running (INSERTs the producer gave up on after its 10 s send timeout:
/// counted as errors, their rows rolled back), so that the next step, of another subject
/// perhaps, starts on an idle database.
async fn settle(db: &tokio_postgres::Client) -> Result<(), String> {
    let active = format!(
        "select pid from pg_stat_activity where application_name = '{PRODUCER_APP}' and state = 'active'"
    );
    for _ in 0..300 {
        let rows = db
            .query(
                &format!("select pg_cancel_backend(pid) from ({active}) a"),
                &[],
            )
            .await
            .map_err(|e| format!("cancel: {e}"))?;
        if rows.is_empty() {
            sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err("producer statements still running 30 s after cancelling them".into())
}

/// The group's throughput searches, interleaved step by step within the time budget.
async fn search(
    group: &mut [&mut Subject],
    clients: &Clients,
    db: &tokio_postgres::Client,
    o: &ChangesOpts,
    postmaster: Option<u32>,
    step_id: &mut i64,
) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let mut any = false;
        for s in group.iter_mut() {
            let Some(rate) = s.search.next_within(t0, o.search_budget) else {
                continue;
            };
            any = true;
            *step_id += 1;
            // Clients closed by an overloaded server reconnect (and re-subscribe) by themselves.
            let _ = clients.wait_joined(Duration::from_secs(15)).await;
            let label = format!("tp@{rate:.0}{}", if s.search.retry { "-retry" } else { "" });
            let spec = step_spec(label, rate, o.step_secs, o, Some(o.p99_limit_us));
            eprint!("{}:", s.table.subject);
            let (r, _) = bench(s, clients, postmaster, o).step(*step_id, &spec).await;
            s.search.record(&r);
            if r.pass
                && s.res
                    .best
                    .as_ref()
                    .is_none_or(|b| r.deliveries_per_s > b.deliveries_per_s)
            {
                s.res.best = Some(r.clone());
            }
            s.res.steps.push(r);
            settle(db).await?;
        }
        if !any {
            break;
        }
    }
    for s in group.iter_mut() {
        s.res.search_note = s.search.note.clone();
    }
    Ok(())
}
