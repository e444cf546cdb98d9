//! Private-channel joins per second. `connections` WebSocket clients, each with its own user JWT
//! (`sub` = `user-<i>`), join a room, wait for the reply, leave it and join the next room: a
//! closed loop with one join in flight per client. A private join makes the sidecar evaluate the
//! `realtime.messages` SELECT policy set up here (a membership lookup for that user and room) on
//! a pooled database connection; the baseline is the same loop on public channels, which do no
//! database work. Steps alternate public/private, the order flipping every round, so background
//! load on the shared machine hits both alike. Every wait is bounded.
use crate::jwt;
use crate::loadgen::{client_ws_config, connect_db, delta, join_message, proc_parent, Cpu};
use crate::stats::{summarize, Summary};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest wait for one join reply: the sidecar gives up on a policy evaluation after 15 s and
/// delays a refusal by CHANNEL_ERROR_BACKOFF_MS (5 s by default).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct JoinsOpts {
    /// `ws://127.0.0.1:P/realtime/v1/websocket`, without parameters.
    pub url: String,
    pub dsn: String,
    pub jwt_secret: String,
    pub connections: usize,
    pub rooms: usize,
    pub step_secs: f64,
    pub rounds: usize,
    pub warmup_secs: f64,
    pub sidecar_pid: Option<u32>,
}

/// A real per-user lookup: the joining user's membership of the room being joined.
const POLICY_SQL: &str = "create policy bench_members_read on realtime.messages
  for select to authenticated using (
    exists (select 1 from bench_members m
            where m.room = realtime.topic()
              and m.user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'))";

const TEARDOWN_SQL: &str =
    "drop policy if exists bench_members_read on realtime.messages; drop table if exists bench_members;";

/// Every bench user is a member of every bench room, so every join is allowed, yet the policy
/// still looks the (room, user) pair up for each one.
fn setup_sql(rooms: usize, users: usize) -> String {
    format!(
        "{TEARDOWN_SQL}
         create table bench_members(room text, user_id text, primary key (room, user_id));
         insert into bench_members
           select 'room-' || r, 'user-' || u
           from generate_series(0, {rooms} - 1) r, generate_series(0, {users} - 1) u;
         analyze bench_members;
         grant select on bench_members to authenticated;
         {POLICY_SQL};"
    )
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinStep {
    /// "public" or "private".
    pub subject: String,
    pub round: usize,
    pub elapsed_s: f64,
    /// Joins answered `ok`.
    pub joins: u64,
    /// Error replies, replies that did not come within the timeout, lost connections.
    pub failures: u64,
    pub last_failure: Option<String>,
    pub joins_per_s: f64,
    /// From sending `phx_join` to parsing its `ok` reply.
    pub latency: Summary,
    pub sidecar_cpu_s: Option<f64>,
    pub postgres_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
}

/// One subject over all its rounds: joins/s over the summed step time, latency over all samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinTotals {
    pub steps: usize,
    pub elapsed_s: f64,
    pub joins: u64,
    pub failures: u64,
    pub joins_per_s: f64,
    pub latency: Summary,
    /// CPU time per successful join, in microseconds.
    pub sidecar_us_per_join: Option<f64>,
    pub postgres_us_per_join: Option<f64>,
    pub loadgen_us_per_join: Option<f64>,
    /// Average cores busy during the steps.
    pub sidecar_cores: Option<f64>,
    pub postgres_cores: Option<f64>,
    pub loadgen_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinsResult {
    pub params: serde_json::Value,
    pub steps: Vec<JoinStep>,
    pub public: Option<JoinTotals>,
    pub private: Option<JoinTotals>,
    /// The reply to a private join by a user who is a member of no room: it must be refused,
    /// or the private steps measured no policy.
    pub non_member_reply: Option<String>,
    pub non_member_refused: bool,
    /// Sidecar database sessions by `application_name` after the run (the authorization pool
    /// opens its connections on demand, so this shows how many the private joins used).
    pub sidecar_db_sessions: serde_json::Value,
    pub error: Option<String>,
}

enum Outcome {
    Joined,
    /// An error reply (the frame).
    Refused(String),
    /// No reply in time; the connection is still usable.
    TimedOut,
    /// The connection is gone.
    Lost(String),
}

/// Waits for the `phx_reply` to message `r`, skipping everything else (replies to earlier
/// leaves, `phx_close`).
async fn reply_to(ws: &mut Ws, r: &str) -> Outcome {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let m = match timeout_at(deadline, ws.next()).await {
            Err(_) => return Outcome::TimedOut,
            Ok(None) => return Outcome::Lost("connection ended".into()),
            Ok(Some(Err(e))) => return Outcome::Lost(format!("read: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(t) = m else {
            if let Message::Close(c) = m {
                return Outcome::Lost(format!("server closed: {c:?}"));
            }
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
        if v[1] == r && v[3] == "phx_reply" {
            return if v[4]["status"] == "ok" {
                Outcome::Joined
            } else {
                Outcome::Refused(t.as_str().chars().take(300).collect())
            };
        }
    }
}

async fn connect(url: &str) -> Result<Ws, String> {
    let (ws, _) = timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async_with_config(url, Some(client_ws_config()), true),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

struct Client {
    index: usize,
    token: String,
    ws: Option<Ws>,
    last_ref: u64,
}

#[derive(Default)]
struct ClientStep {
    joins: u64,
    failures: u64,
    last_failure: Option<String>,
    lat_us: Vec<u32>,
}

impl Client {
    /// Joins and leaves rooms until `until` (a join in flight then is finished).
    async fn run(&mut self, private: bool, rooms: usize, until: Instant) -> ClientStep {
        let mut s = ClientStep::default();
        while Instant::now() < until {
            let Some(ws) = self.ws.as_mut() else {
                break;
            };
            self.last_ref += 2;
            let (r, leave_ref) = (self.last_ref.to_string(), (self.last_ref + 1).to_string());
            // Clients walk the rooms from different offsets, so concurrent joins hit different
            // rooms (and membership rows).
            let room = (self.index + self.last_ref as usize / 2) % rooms;
            let topic = format!("realtime:room-{room}");
            let t0 = Instant::now();
            let sent = ws
                .send(Message::text(join_message(
                    &r,
                    &topic,
                    private,
                    Some(&self.token),
                )))
                .await;
            let outcome = match sent {
                Ok(()) => reply_to(ws, &r).await,
                Err(e) => Outcome::Lost(format!("send join: {e}")),
            };
            let lat = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
            match outcome {
                Outcome::Joined => {
                    s.joins += 1;
                    s.lat_us.push(lat);
                }
                Outcome::Refused(e) => {
                    s.failures += 1;
                    s.last_failure = Some(e);
                }
                Outcome::TimedOut => {
                    s.failures += 1;
                    s.last_failure = Some(format!("no reply within {REPLY_TIMEOUT:?}"));
                }
                Outcome::Lost(e) => {
                    s.failures += 1;
                    s.last_failure = Some(e);
                    self.ws = None;
                    break;
                }
            }
            // Not awaited: the session handles a connection's messages in order, so the leave
            // is done before the next join, and its reply is skipped while waiting for that one.
            let leave = serde_json::json!([r, leave_ref, topic, "phx_leave", {}]).to_string();
            if let Err(e) = ws.send(Message::text(leave)).await {
                s.failures += 1;
                s.last_failure = Some(format!("send leave: {e}"));
                self.ws = None;
            }
        }
        s
    }
}

/// Runs every client's loop for `secs`; the step ends when the last one has its final reply.
async fn step(
    clients: &mut Vec<Client>,
    private: bool,
    o: &JoinsOpts,
    secs: f64,
    postmaster: Option<u32>,
) -> (JoinStep, Vec<u32>) {
    let cpu0 = Cpu::now(o.sidecar_pid, postmaster);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let rooms = o.rooms;
    let tasks: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            tokio::spawn(async move {
                let s = c.run(private, rooms, until).await;
                (c, s)
            })
        })
        .collect();
    let mut r = JoinStep {
        subject: if private { "private" } else { "public" }.into(),
        ..Default::default()
    };
    let mut samples = vec![];
    for t in tasks {
        match t.await {
            Ok((c, mut s)) => {
                clients.push(c);
                r.joins += s.joins;
                r.failures += s.failures;
                if s.last_failure.is_some() {
                    r.last_failure = s.last_failure;
                }
                samples.append(&mut s.lat_us);
            }
            Err(e) => {
                r.failures += 1;
                r.last_failure = Some(format!("client task: {e}"));
            }
        }
    }
    r.elapsed_s = t0.elapsed().as_secs_f64();
    let cpu1 = Cpu::now(o.sidecar_pid, postmaster);
    r.joins_per_s = r.joins as f64 / r.elapsed_s;
    r.latency = summarize(samples.clone());
    r.sidecar_cpu_s = delta(cpu0.server, cpu1.server);
    r.postgres_cpu_s = delta(cpu0.postgres, cpu1.postgres);
    r.loadgen_cpu_s = delta(cpu0.loadgen, cpu1.loadgen);
    (r, samples)
}

fn totals(steps: &[&JoinStep], samples: Vec<u32>) -> JoinTotals {
    let elapsed_s: f64 = steps.iter().map(|s| s.elapsed_s).sum();
    let joins: u64 = steps.iter().map(|s| s.joins).sum();
    let cpu = |f: fn(&JoinStep) -> Option<f64>| -> Option<f64> {
        steps.iter().map(|s| f(s)).sum::<Option<f64>>()
    };
    let per_join = |c: Option<f64>| c.filter(|_| joins > 0).map(|c| c * 1e6 / joins as f64);
    let cores = |c: Option<f64>| c.map(|c| c / elapsed_s);
    let (sc, pc, lc) = (
        cpu(|s| s.sidecar_cpu_s),
        cpu(|s| s.postgres_cpu_s),
        cpu(|s| s.loadgen_cpu_s),
    );
    JoinTotals {
        steps: steps.len(),
        elapsed_s,
        joins,
        failures: steps.iter().map(|s| s.failures).sum(),
        joins_per_s: joins as f64 / elapsed_s,
        latency: summarize(samples),
        sidecar_us_per_join: per_join(sc),
        postgres_us_per_join: per_join(pc),
        loadgen_us_per_join: per_join(lc),
        sidecar_cores: cores(sc),
        postgres_cores: cores(pc),
        loadgen_cores: cores(lc),
    }
}

/// One private join by a user who is a member of no room; returns its reply.
async fn non_member_join(url: String, token: String) -> Result<(bool, String), String> {
    let mut ws = connect(&url).await?;
    ws.send(Message::text(join_message(
        "1",
        "realtime:room-0",
        true,
        Some(&token),
    )))
    .await
    .map_err(|e| format!("send: {e}"))?;
    let r = match reply_to(&mut ws, "1").await {
        Outcome::Joined => Ok((false, "ok".to_string())),
        Outcome::Refused(reply) => Ok((true, reply)),
        Outcome::TimedOut => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
        Outcome::Lost(e) => Err(e),
    };
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    r
}

pub async fn run(o: &JoinsOpts) -> JoinsResult {
    let mut res = JoinsResult {
        params: serde_json::json!({
            "connections": o.connections,
            "rooms": o.rooms,
            "membership_rows": o.rooms * o.connections,
            "step_seconds": o.step_secs,
            "rounds": o.rounds,
            "warmup_seconds_per_subject": o.warmup_secs,
            "loop": "per connection: phx_join (own user JWT as access_token), wait for the reply, phx_leave (not awaited), next room; one join in flight per connection",
            "latency": "from sending phx_join to parsing its phx_reply, on the load generator's clock",
            "order": "public, private in even rounds; private, public in odd rounds",
            "policy": POLICY_SQL,
            "postgres_cpu": "postmaster and all its processes (backends of the sidecar's pool and queue reader, background workers)",
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
        eprintln!("joins: {e}");
        res.error = Some(e);
    }
    if let Err(e) = db.batch_execute(TEARDOWN_SQL).await {
        res.error.get_or_insert(format!("teardown: {e}"));
    }
    res
}

async fn measure(
    o: &JoinsOpts,
    db: &tokio_postgres::Client,
    res: &mut JoinsResult,
) -> Result<(), String> {
    db.batch_execute(&setup_sql(o.rooms, o.connections))
        .await
        .map_err(|e| format!("policy setup: {e}"))?;
    // Backends are the postmaster's children: the postmaster's pid reaches the whole cluster.
    let backend: i32 = db
        .query_one("select pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let postmaster = proc_parent(backend as u32);

    let token = |sub: &str| jwt::hs256(&o.jwt_secret, "authenticated", 3600, &[("sub", sub)]);
    let url_for = |token: &str| format!("{}?apikey={token}&vsn=2.0.0", o.url);
    let outsider = token("user-outsider");
    let non_member = tokio::spawn(non_member_join(url_for(&outsider), outsider));

    let mut clients = Vec::with_capacity(o.connections);
    for index in 0..o.connections {
        let token = token(&format!("user-{index}"));
        let ws = connect(&url_for(&token))
            .await
            .map_err(|e| format!("connection {index}: {e}"))?;
        clients.push(Client {
            index,
            token,
            ws: Some(ws),
            last_ref: 0,
        });
    }

    // Warm-up (not recorded): the pool opens its connections and prepares its statement.
    for private in [false, true] {
        let (w, _) = step(&mut clients, private, o, o.warmup_secs, postmaster).await;
        eprintln!(
            "  joins warm-up {}: {} joins, {} failures",
            w.subject, w.joins, w.failures
        );
    }

    let (mut public, mut private) = (vec![], vec![]);
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_private in order {
            let (mut s, mut samples) =
                step(&mut clients, is_private, o, o.step_secs, postmaster).await;
            s.round = round;
            eprintln!(
                "  joins {:<7} round {round}: {:.0} joins/s, p50 {} us p99 {} us, {} failures{}, CPU s: sidecar {:?} postgres {:?} loadgen {:?}",
                s.subject,
                s.joins_per_s,
                s.latency.p50_us,
                s.latency.p99_us,
                s.failures,
                s.last_failure.as_ref().map(|f| format!(" (last: {f})")).unwrap_or_default(),
                s.sidecar_cpu_s,
                s.postgres_cpu_s,
                s.loadgen_cpu_s,
            );
            if is_private {
                &mut private
            } else {
                &mut public
            }
            .append(&mut samples);
            res.steps.push(s);
        }
    }
    let of = |private: bool| -> Vec<&JoinStep> {
        res.steps
            .iter()
            .filter(|s| (s.subject == "private") == private)
            .collect()
    };
    res.public = Some(totals(&of(false), public));
    res.private = Some(totals(&of(true), private));

    let lost = clients.iter().filter(|c| c.ws.is_none()).count();
    for c in clients.iter_mut() {
        if let Some(ws) = c.ws.as_mut() {
            let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
        }
    }
    let sessions = db
        .query(
            "select application_name, count(*) from pg_stat_activity
             where application_name like 'pg-realtime-sidecar%' group by 1",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    res.sidecar_db_sessions = sessions
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).into()))
        .collect::<serde_json::Map<_, _>>()
        .into();

    match timeout(REPLY_TIMEOUT, non_member).await {
        Ok(Ok(Ok((refused, reply)))) => {
            res.non_member_refused = refused;
            res.non_member_reply = Some(reply);
        }
        Ok(Ok(Err(e))) => res.non_member_reply = Some(format!("no reply: {e}")),
        Ok(Err(e)) => res.non_member_reply = Some(format!("task: {e}")),
        Err(_) => res.non_member_reply = Some("no reply in time".into()),
    }
    if lost > 0 {
        return Err(format!("{lost} of {} connections were lost", o.connections));
    }
    Ok(())
}
