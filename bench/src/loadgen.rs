//! Load generator: WebSocket subscribers that parse kind-4 frames and time them, a rate-paced
//! Postgres producer, and the three fan-out measurements (idle wake-up, fixed-rate latency,
//! throughput search). Every loop is bounded in count and in time.
use crate::frame::{decode_kind4, parse_stamp};
use crate::stats::{summarize, Summary};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

// ---------------------------------------------------------------------------------------------
// Subscribers

#[derive(Default)]
struct StepRecv {
    count: u64,
    lat_us: Vec<u32>,
}

#[derive(Default)]
struct ClientStats {
    steps: HashMap<i64, StepRecv>,
    seen: Vec<u64>,
    dups: u64,
    bad_frames: u64,
    other_text: u64,
    last_other_text: Option<String>,
    last_error: Option<String>,
}

#[derive(Default)]
pub struct ClientState {
    joined: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    inner: Mutex<ClientStats>,
}

impl ClientState {
    fn on_binary(&self, b: &[u8], topic: &[u8]) {
        let now = now_us();
        let stamp = decode_kind4(b)
            .filter(|f| f.topic == topic)
            .and_then(|f| parse_stamp(f.payload));
        let mut g = self.inner.lock().unwrap();
        let Some(s) = stamp else {
            g.bad_frames += 1;
            return;
        };
        if s.n >= 0 {
            let (w, bit) = ((s.n as u64 / 64) as usize, 1u64 << (s.n as u64 % 64));
            if g.seen.len() <= w {
                g.seen.resize(w + 1024, 0);
            }
            if g.seen[w] & bit != 0 {
                g.dups += 1;
                return;
            }
            g.seen[w] |= bit;
        }
        let lat = (now - s.t).clamp(0, u32::MAX as i64) as u32;
        let e = g.steps.entry(s.s).or_default();
        e.count += 1;
        e.lat_us.push(lat);
    }
}

pub struct Clients {
    pub states: Vec<Arc<ClientState>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A v2 `phx_join` (`join_ref` = `msg_ref` = `r`) for broadcasts only; `access_token` is the
/// channel's own token (without one the connection's token applies).
pub fn join_message(r: &str, topic: &str, private: bool, access_token: Option<&str>) -> String {
    let mut payload = serde_json::json!({"config": {
        "broadcast": {"self": false, "ack": false},
        "presence": {"key": "", "enabled": false},
        "postgres_changes": [],
        "private": private
    }});
    if let Some(t) = access_token {
        payload["access_token"] = t.into();
    }
    serde_json::json!([r, r, topic, "phx_join", payload]).to_string()
}

pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn client_session(
    url: &str,
    topic: &str,
    st: &ClientState,
    stop: &mut watch::Receiver<bool>,
    connect_permits: &Semaphore,
) -> Result<(), String> {
    let join = join_message("1", topic, false, None);
    let mut ws = {
        let _permit = connect_permits.acquire().await.map_err(|e| e.to_string())?;
        let (mut ws, _) = timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async_with_config(url, Some(client_ws_config()), true),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        ws.send(Message::text(join))
            .await
            .map_err(|e| format!("send join: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "no join reply within 15 s".to_string())?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v.get(1).and_then(|r| r.as_str()) == Some("1")
                        && v.get(3).and_then(|e| e.as_str()) == Some("phx_reply")
                    {
                        if v[4]["status"] == "ok" {
                            break;
                        }
                        return Err(format!("join refused: {t}"));
                    }
                }
                Some(Ok(Message::Binary(b))) => st.on_binary(&b, topic.as_bytes()),
                Some(Ok(Message::Close(c))) => return Err(format!("closed during join: {c:?}")),
                None => return Err("closed during join".into()),
                Some(Err(e)) => return Err(format!("join: {e}")),
                Some(Ok(_)) => {}
            }
        }
        ws
    };
    st.connects.fetch_add(1, Ordering::Relaxed);
    st.joined.store(true, Ordering::Release);
    let hb_every = Duration::from_secs(25);
    let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + hb_every, hb_every);
    let mut hb_ref: u64 = 1;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => st.on_binary(&b, topic.as_bytes()),
                Some(Ok(Message::Text(t))) => {
                    let s = t.as_str();
                    // Heartbeat replies are expected; anything else is counted and reported.
                    if !(s.contains("\"phoenix\"") && s.contains("phx_reply")) {
                        let mut g = st.inner.lock().unwrap();
                        g.other_text += 1;
                        g.last_other_text = Some(s.chars().take(300).collect());
                    }
                }
                Some(Ok(Message::Close(c))) => return Err(format!("server closed: {c:?}")),
                None => return Err("connection ended".into()),
                Some(Err(e)) => return Err(format!("read: {e}")),
                Some(Ok(_)) => {}
            },
            _ = hb.tick() => {
                hb_ref += 1;
                ws.send(Message::text(format!(r#"[null,"{hb_ref}","phoenix","heartbeat",{{}}]"#)))
                    .await
                    .map_err(|e| format!("heartbeat: {e}"))?;
            }
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ok(());
            }
        }
    }
}

impl Clients {
    /// Starts `n` subscribers (each reconnects by itself after an error, 500 ms apart) and waits
    /// up to `wait` for all of them to be joined.
    pub async fn start(
        n: usize,
        url: &str,
        topic: &str,
        wait: Duration,
    ) -> Result<Clients, String> {
        let (stop, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(64));
        let mut states = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let st = Arc::new(ClientState::default());
            states.push(st.clone());
            let (url, topic, mut stop_rx, permits) = (
                url.to_string(),
                topic.to_string(),
                stop_rx.clone(),
                permits.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _attempt in 0..1000 {
                    if *stop_rx.borrow() {
                        return;
                    }
                    let r = client_session(&url, &topic, &st, &mut stop_rx, &permits).await;
                    st.joined.store(false, Ordering::Release);
                    match r {
                        Ok(()) => return,
                        Err(e) => {
                            st.disconnects.fetch_add(1, Ordering::Relaxed);
                            st.inner.lock().unwrap().last_error = Some(e);
                            tokio::select! {
                                _ = sleep(Duration::from_millis(500)) => {}
                                _ = stop_rx.changed() => return,
                            }
                        }
                    }
                }
            }));
        }
        let c = Clients {
            states,
            stop,
            tasks,
        };
        c.wait_joined(wait).await?;
        Ok(c)
    }

    pub fn joined(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.joined.load(Ordering::Acquire))
            .count()
    }

    pub async fn wait_joined(&self, wait: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let j = self.joined();
            if j == self.states.len() {
                return Ok(());
            }
            if t0.elapsed() > wait {
                return Err(format!(
                    "only {j}/{} subscribers joined after {:?}; last error: {:?}",
                    self.states.len(),
                    wait,
                    self.last_error()
                ));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.states
            .iter()
            .rev()
            .find_map(|s| s.inner.lock().unwrap().last_error.clone())
    }

    pub fn disconnects(&self) -> u64 {
        self.states
            .iter()
            .map(|s| s.disconnects.load(Ordering::Relaxed))
            .sum()
    }

    pub fn received(&self, step: i64) -> u64 {
        self.states
            .iter()
            .map(|s| {
                s.inner
                    .lock()
                    .unwrap()
                    .steps
                    .get(&step)
                    .map_or(0, |r| r.count)
            })
            .sum()
    }

    /// Takes the latency samples of `step` gathered so far (counts stay for later re-reads).
    pub fn take_samples(&self, step: i64) -> (u64, Vec<u32>) {
        let mut all = Vec::new();
        let mut count = 0;
        for s in &self.states {
            let mut g = s.inner.lock().unwrap();
            if let Some(r) = g.steps.get_mut(&step) {
                count += r.count;
                all.append(&mut r.lat_us);
            }
        }
        (count, all)
    }

    pub fn counters(&self) -> ClientCounters {
        let mut c = ClientCounters::default();
        for s in &self.states {
            let g = s.inner.lock().unwrap();
            c.dups += g.dups;
            c.bad_frames += g.bad_frames;
            c.other_text += g.other_text;
            if g.last_other_text.is_some() {
                c.last_other_text = g.last_other_text.clone();
            }
            if g.last_error.is_some() {
                c.last_error = g.last_error.clone();
            }
            c.disconnects += s.disconnects.load(Ordering::Relaxed);
            c.connects += s.connects.load(Ordering::Relaxed);
        }
        c
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = timeout(Duration::from_secs(5), t).await;
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct ClientCounters {
    pub connects: u64,
    pub disconnects: u64,
    pub dups: u64,
    pub bad_frames: u64,
    pub other_text: u64,
    pub last_other_text: Option<String>,
    pub last_error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Producer

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `select realtime.broadcast(topic, event, jsonb)` (the product).
    Broadcast,
    /// `select pg_notify(channel, json::text)` (the relay baseline).
    Notify,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "broadcast" => Ok(Mode::Broadcast),
            "notify" => Ok(Mode::Notify),
            _ => Err(format!("unknown producer mode {s}")),
        }
    }

    pub fn sql(self, sub_topic: &str, event: &str) -> String {
        match self {
            Mode::Broadcast => format!(
                "select realtime.broadcast('{sub_topic}', '{event}', jsonb_build_object('t', $1::int8, 'n', $2::int8, 's', $3::int8))"
            ),
            Mode::Notify => {
                format!("select pg_notify('{sub_topic}', json_build_object('t', $1::int8, 'n', $2::int8, 's', $3::int8)::text)")
            }
        }
    }
}

/// A few producer connections on their own runtime thread, so that the subscribers' work does
/// not delay the statements (the timestamp is taken right before each statement).
pub struct Producer {
    rt: Option<tokio::runtime::Runtime>,
    conns: Vec<(Arc<tokio_postgres::Client>, tokio_postgres::Statement)>,
    next_n: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Produced {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// How far the producer fell behind its schedule at worst (ms).
    pub max_behind_ms: f64,
}

impl Producer {
    pub async fn new(dsn: &str, conns: usize, sql: &str) -> Result<Producer, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("producer")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (dsn, sql) = (dsn.to_string(), sql.to_string());
        // Own the runtime before any early return: dropping it from async code would panic.
        let mut p = Producer {
            rt: Some(rt),
            conns: vec![],
            next_n: AtomicU64::new(0),
        };
        p.conns =
            p.rt.as_ref()
                .unwrap()
                .spawn(async move {
                    let mut v = Vec::new();
                    for _ in 0..conns {
                        let (client, conn) = tokio_postgres::connect(&dsn, NoTls)
                            .await
                            .map_err(|e| format!("producer connect: {e}"))?;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                eprintln!("producer connection error: {e}");
                            }
                        });
                        let stmt = client
                            .prepare(&sql)
                            .await
                            .map_err(|e| format!("prepare `{sql}`: {e}"))?;
                        v.push((Arc::new(client), stmt));
                    }
                    Ok::<_, String>(v)
                })
                .await
                .map_err(|e| e.to_string())??;
        Ok(p)
    }

    /// Sends `count` messages tagged with `step` at `rate` messages/s over the first `use_conns`
    /// connections (message i goes out at start + i/rate on connection i % use_conns).
    pub async fn run(&self, rate: f64, count: u64, step: i64, use_conns: usize) -> Produced {
        let use_conns = use_conns.clamp(1, self.conns.len());
        let n0 = self.next_n.fetch_add(count, Ordering::Relaxed) as i64;
        let start = tokio::time::Instant::now() + Duration::from_millis(20);
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for k in 0..use_conns {
            let (client, stmt) = self.conns[k].clone();
            handles.push(self.rt.as_ref().unwrap().spawn(async move {
                let mut p = Produced::default();
                let mut i = k as u64;
                while i < count {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let behind = tokio::time::Instant::now()
                        .saturating_duration_since(due)
                        .as_secs_f64()
                        * 1e3;
                    p.max_behind_ms = p.max_behind_ms.max(behind);
                    sleep_until(due).await;
                    let (t, n) = (now_us(), n0 + i as i64);
                    match timeout(
                        Duration::from_secs(10),
                        client.execute(&stmt, &[&t, &n, &step]),
                    )
                    .await
                    {
                        Ok(Ok(_)) => p.sent += 1,
                        Ok(Err(e)) => {
                            p.errors += 1;
                            p.first_error.get_or_insert(e.to_string());
                        }
                        Err(_) => {
                            p.errors += 1;
                            p.first_error
                                .get_or_insert("statement timed out (10 s)".into());
                        }
                    }
                    i += use_conns as u64;
                }
                p
            }));
        }
        let mut total = Produced::default();
        for h in handles {
            let p = h.await.unwrap_or_default();
            total.sent += p.sent;
            total.errors += p.errors;
            total.max_behind_ms = total.max_behind_ms.max(p.max_behind_ms);
            if total.first_error.is_none() {
                total.first_error = p.first_error;
            }
        }
        total.elapsed_s = (t0.elapsed().as_secs_f64() - 0.02).max(1e-3);
        total
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.conns.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server CPU accounting (for efficiency figures; optional)

/// From /proc/PID/stat: (parent pid, own CPU seconds, CPU seconds of its reaped children).
fn proc_stat(pid: u32) -> Option<(u32, f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after ")" start at index 3 (state): ppid = 4th, utime..cstime = 14th..17th overall.
    let ticks = |i: usize| -> Option<f64> { Some(f.get(i)?.parse::<f64>().ok()? / 100.0) };
    Some((
        f.get(1)?.parse().ok()?,
        ticks(11)? + ticks(12)?,
        ticks(13)? + ticks(14)?,
    ))
}

pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|s| s.1)
}

/// CPU seconds of `root` and its children (a postmaster and its backends): live children are
/// read one by one, exited ones are in the root's reaped-children time.
pub fn proc_tree_cpu_secs(root: u32) -> Option<f64> {
    let (_, own, reaped) = proc_stat(root)?;
    let children: f64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|s| s.0 == root)
        .map(|s| s.1)
        .sum();
    Some(own + reaped + children)
}

pub fn proc_parent(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|s| s.0)
}

pub fn proc_rss_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Measurements

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct StepResult {
    pub label: String,
    pub step: i64,
    pub target_rate: f64,
    pub subscribers: u64,
    pub produced: Produced,
    pub achieved_rate: f64,
    pub expected_deliveries: u64,
    /// Delivered by the end of the step window (production end + grace).
    pub on_time: u64,
    /// Delivered after the window but before the backlog wait ended.
    pub late: u64,
    /// Never delivered (within window + backlog wait).
    pub lost: u64,
    pub deliveries_per_s: f64,
    pub latency: Summary,
    pub disconnects: u64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub pass: bool,
    pub fail_reasons: Vec<String>,
}

pub struct StepSpec {
    pub label: String,
    pub rate: f64,
    pub count: u64,
    pub use_conns: usize,
    pub grace: Duration,
    pub backlog_wait: Duration,
    pub p99_limit_us: Option<u64>,
}

/// One measured step against one target. `step` must be unique within the run (it tags the
/// messages, so late deliveries of an earlier step never count for a later one).
pub struct Bench<'a> {
    pub clients: &'a Clients,
    pub producer: &'a Producer,
    pub server_pid: Option<u32>,
}

impl Bench<'_> {
    pub async fn step(&self, step: i64, spec: &StepSpec) -> StepResult {
        let subs = self.clients.states.len() as u64;
        let joined_before = self.clients.joined() as u64;
        let disc0 = self.clients.disconnects();
        let cpu0 = self.server_pid.and_then(proc_cpu_secs);
        let produced = self
            .producer
            .run(spec.rate, spec.count, step, spec.use_conns)
            .await;
        let expected = produced.sent * subs;
        let window_end = Instant::now() + spec.grace;
        while Instant::now() < window_end && self.clients.received(step) < expected {
            sleep(Duration::from_millis(10)).await;
        }
        let (on_time, samples) = self.clients.take_samples(step);
        let cpu1 = self.server_pid.and_then(proc_cpu_secs);
        let backlog_end = Instant::now() + spec.backlog_wait;
        let mut total = on_time;
        while total < expected && Instant::now() < backlog_end {
            sleep(Duration::from_millis(50)).await;
            total = self.clients.received(step);
        }
        let _ = self.clients.take_samples(step); // drop late samples
        let disconnects = self.clients.disconnects() - disc0;
        let latency = summarize(samples);
        let achieved_rate = produced.sent as f64 / produced.elapsed_s;
        let server_cpu_s = match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let mut r = StepResult {
            label: spec.label.clone(),
            step,
            target_rate: spec.rate,
            subscribers: subs,
            achieved_rate,
            expected_deliveries: expected,
            on_time: on_time.min(expected),
            late: total.min(expected).saturating_sub(on_time),
            lost: expected.saturating_sub(total),
            deliveries_per_s: achieved_rate * subs as f64,
            latency,
            disconnects,
            server_cpu_us_per_delivery: server_cpu_s
                .filter(|_| on_time > 0)
                .map(|c| c * 1e6 / on_time as f64),
            server_cpu_s,
            produced,
            pass: false,
            fail_reasons: vec![],
        };
        let f = &mut r.fail_reasons;
        if joined_before < subs {
            f.push(format!(
                "only {joined_before}/{subs} subscribers joined at start"
            ));
        }
        if r.produced.errors > 0 {
            f.push(format!(
                "{} producer errors: {:?}",
                r.produced.errors, r.produced.first_error
            ));
        }
        if r.achieved_rate < 0.97 * spec.rate {
            f.push(format!(
                "producer reached {:.0}/s of {:.0}/s",
                r.achieved_rate, spec.rate
            ));
        }
        if r.lost > 0 {
            f.push(format!("{} deliveries lost", r.lost));
        }
        if r.late > 0 {
            f.push(format!(
                "{} deliveries later than {:?} after the last send",
                r.late, spec.grace
            ));
        }
        if r.disconnects > 0 {
            f.push(format!("{} subscriber disconnects", r.disconnects));
        }
        if let Some(lim) = spec.p99_limit_us {
            if r.latency.p99_us > lim {
                f.push(format!("p99 {} us > {} us", r.latency.p99_us, lim));
            }
        }
        r.pass = r.fail_reasons.is_empty();
        eprintln!(
            "  [{}] rate {:.0}/s x {} subs: sent {} ({:.0}/s), deliveries/s {:.0}, p50 {} us p99 {} us max {} us, late {} lost {} -> {}",
            r.label,
            spec.rate,
            subs,
            r.produced.sent,
            r.achieved_rate,
            r.deliveries_per_s,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.max_us,
            r.late,
            r.lost,
            if r.pass { "pass".to_string() } else { format!("FAIL {:?}", r.fail_reasons) }
        );
        r
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FanoutResult {
    pub target: String,
    pub mode: Mode,
    pub url: String,
    pub subscribers: usize,
    pub producer_connections: usize,
    pub idle: Option<StepResult>,
    pub latency: Option<StepResult>,
    pub throughput_steps: Vec<StepResult>,
    pub best: Option<StepResult>,
    pub search_note: String,
    pub client_counters: ClientCounters,
    pub server_rss_kb_after_connect: Option<u64>,
    pub server_hwm_kb: Option<u64>,
    pub error: Option<String>,
}

/// One subject of the fan-out benchmark.
#[derive(Clone)]
pub struct TargetSpec {
    pub name: String,
    pub url: String,
    pub mode: Mode,
    pub server_pid: Option<u32>,
}

pub struct FanoutOpts {
    pub dsn: String,
    pub sub_topic: String,
    pub event: String,
    pub subscribers: usize,
    pub producer_conns: usize,
    pub idle_count: u64,
    pub idle_interval_ms: u64,
    pub latency_rate: f64,
    pub latency_secs: f64,
    pub step_secs: f64,
    pub start_rate: f64,
    pub max_rate: f64,
    pub p99_limit_us: u64,
    /// Per target.
    pub max_steps: usize,
    /// For the whole (interleaved) search.
    pub search_budget: Duration,
}

/// Throughput search state of one target: double from the start rate until a step fails, then
/// bisect until the bracket is within 10%. A step that missed only the p99 limit, and by at most
/// 50%, is re-run once (noise from other work on the shared machine); a clear overload is not.
struct Search {
    lo: Option<f64>,
    hi: Option<f64>,
    rate: f64,
    retry: bool,
    steps_run: usize,
    done: bool,
    note: String,
}

impl Search {
    fn new(start: f64) -> Search {
        Search {
            lo: None,
            hi: None,
            rate: start,
            retry: false,
            steps_run: 0,
            done: false,
            note: String::new(),
        }
    }

    /// The next rate to try, or None when the search is over.
    fn next(&mut self, o: &FanoutOpts) -> Option<f64> {
        if self.done {
            return None;
        }
        if self.steps_run >= o.max_steps {
            self.note = format!(
                "search stopped by its step bound after {} steps",
                self.steps_run
            );
        } else if self.retry {
            return Some(self.rate);
        } else {
            match (self.lo, self.hi) {
                (Some(l), Some(h)) if h / l <= 1.1 => {}
                (Some(l), None) if l >= o.max_rate => {
                    self.note = format!("reached the configured max rate {} msg/s", o.max_rate)
                }
                (None, Some(h)) if h <= 1.0 => self.note = "failed even at 1 msg/s".into(),
                _ => return Some(self.rate),
            }
        }
        self.done = true;
        None
    }

    fn record(&mut self, r: &StepResult, o: &FanoutOpts) {
        self.steps_run += 1;
        let marginal = !r.pass
            && r.lost == 0
            && r.late == 0
            && r.disconnects == 0
            && r.produced.errors == 0
            && r.latency.p99_us <= o.p99_limit_us * 3 / 2;
        if marginal && !self.retry {
            self.retry = true;
            return;
        }
        self.retry = false;
        if r.pass {
            self.lo = Some(self.rate);
        } else {
            self.hi = Some(self.rate);
        }
        self.rate = match (self.lo, self.hi) {
            (Some(l), None) => (l * 2.0).min(o.max_rate),
            (None, Some(h)) => (h / 2.0).floor().max(1.0),
            (Some(l), Some(h)) => ((l + h) / 2.0).round(),
            (None, None) => unreachable!(),
        };
    }
}

struct Live {
    spec: TargetSpec,
    res: FanoutResult,
    producer: Option<Producer>,
    clients: Option<Clients>,
    search: Search,
}

impl Live {
    fn fail(&mut self, e: String) {
        eprintln!("fanout {}: {e}", self.spec.name);
        self.res.error.get_or_insert(e);
    }
    fn ok(&self) -> bool {
        self.res.error.is_none()
    }
    /// The measurement handle over this target's clients (only called while `ok()`).
    fn bench(&self) -> Bench<'_> {
        Bench {
            clients: self.clients.as_ref().unwrap(),
            producer: self.producer.as_ref().unwrap(),
            server_pid: self.spec.server_pid,
        }
    }
}

/// Runs the fan-out measurements against every target, interleaved so that background load on
/// the shared machine hits all subjects alike: idle wake-up (A, B), fixed-rate latency (A, B),
/// then the throughput searches step by step (A, B, A, B, ...).
pub async fn fanout(targets: &[TargetSpec], o: &FanoutOpts) -> Vec<FanoutResult> {
    let topic = format!("realtime:{}", o.sub_topic);
    let mut live: Vec<Live> = targets
        .iter()
        .map(|t| Live {
            spec: t.clone(),
            res: FanoutResult {
                target: t.name.clone(),
                mode: t.mode,
                url: t.url.split('?').next().unwrap_or("").to_string(),
                subscribers: o.subscribers,
                producer_connections: o.producer_conns,
                idle: None,
                latency: None,
                throughput_steps: vec![],
                best: None,
                search_note: String::new(),
                client_counters: ClientCounters::default(),
                server_rss_kb_after_connect: None,
                server_hwm_kb: None,
                error: None,
            },
            producer: None,
            clients: None,
            search: Search::new(o.start_rate),
        })
        .collect();
    let mut next_step: i64 = 0;

    for l in live.iter_mut() {
        match Producer::new(
            &o.dsn,
            o.producer_conns,
            &l.spec.mode.sql(&o.sub_topic, &o.event),
        )
        .await
        {
            Ok(p) => l.producer = Some(p),
            Err(e) => l.fail(e),
        }
    }

    // 1. Idle wake-up: one subscriber, single messages spaced idle_interval_ms apart.
    if o.idle_count > 0 {
        for l in live.iter_mut().filter(|l| l.ok()) {
            eprintln!(
                "{}: idle wake-up ({} messages, {} ms apart, 1 subscriber)",
                l.spec.name, o.idle_count, o.idle_interval_ms
            );
            let one = match Clients::start(1, &l.spec.url, &topic, Duration::from_secs(20)).await {
                Ok(c) => c,
                Err(e) => {
                    l.fail(e);
                    continue;
                }
            };
            sleep(Duration::from_millis(500)).await;
            next_step += 1;
            let b = Bench {
                clients: &one,
                producer: l.producer.as_ref().unwrap(),
                server_pid: l.spec.server_pid,
            };
            let spec = StepSpec {
                label: "idle".into(),
                rate: 1000.0 / o.idle_interval_ms as f64,
                count: o.idle_count,
                use_conns: 1,
                grace: Duration::from_secs(2),
                backlog_wait: Duration::from_secs(5),
                p99_limit_us: None,
            };
            l.res.idle = Some(b.step(next_step, &spec).await);
            one.shutdown().await;
        }
    }

    // 2. Subscribers (all targets stay connected; idle ones cost nothing).
    for l in live.iter_mut().filter(|l| l.ok()) {
        eprintln!("{}: connecting {} subscribers", l.spec.name, o.subscribers);
        let t0 = Instant::now();
        match Clients::start(o.subscribers, &l.spec.url, &topic, Duration::from_secs(90)).await {
            Ok(c) => {
                eprintln!(
                    "{}: {} joined in {:.1} s",
                    l.spec.name,
                    o.subscribers,
                    t0.elapsed().as_secs_f64()
                );
                l.clients = Some(c);
                l.res.server_rss_kb_after_connect =
                    l.spec.server_pid.and_then(|p| proc_rss_kb(p, "VmRSS:"));
            }
            Err(e) => l.fail(e),
        }
    }
    sleep(Duration::from_secs(1)).await;

    // 3. Fixed-rate latency.
    for l in live.iter_mut().filter(|l| l.ok()) {
        eprintln!(
            "{}: latency at {} msg/s for {} s",
            l.spec.name, o.latency_rate, o.latency_secs
        );
        next_step += 1;
        let b = l.bench();
        let spec = StepSpec {
            label: "latency".into(),
            rate: o.latency_rate,
            count: (o.latency_rate * o.latency_secs).round() as u64,
            use_conns: o.producer_conns,
            grace: Duration::from_secs(2),
            backlog_wait: Duration::from_secs(10),
            p99_limit_us: None,
        };
        l.res.latency = Some(b.step(next_step, &spec).await);
        sleep(Duration::from_millis(500)).await;
    }

    // 4. Throughput searches, interleaved step by step.
    eprintln!("throughput search (interleaved)");
    let search_start = Instant::now();
    loop {
        let mut any = false;
        for l in live.iter_mut().filter(|l| l.ok()) {
            if search_start.elapsed() > o.search_budget {
                if !l.search.done {
                    l.search.done = true;
                    l.search.note = format!(
                        "search stopped by its time budget ({:?}) after {} steps",
                        o.search_budget, l.search.steps_run
                    );
                }
                continue;
            }
            let Some(rate) = l.search.next(o) else {
                continue;
            };
            any = true;
            next_step += 1;
            let b = l.bench();
            let spec = StepSpec {
                label: format!("tp@{rate:.0}{}", if l.search.retry { "-retry" } else { "" }),
                rate,
                count: (rate * o.step_secs).round().max(1.0) as u64,
                use_conns: o.producer_conns,
                grace: Duration::from_secs(1),
                backlog_wait: Duration::from_secs(20),
                p99_limit_us: Some(o.p99_limit_us),
            };
            eprint!("{}:", l.spec.name);
            let r = b.step(next_step, &spec).await;
            l.search.record(&r, o);
            if r.pass
                && l.res
                    .best
                    .as_ref()
                    .is_none_or(|x| r.deliveries_per_s > x.deliveries_per_s)
            {
                l.res.best = Some(r.clone());
            }
            l.res.throughput_steps.push(r);
            sleep(Duration::from_millis(500)).await;
        }
        if !any {
            break;
        }
    }

    let mut out = vec![];
    for mut l in live {
        l.res.search_note = l.search.note.clone();
        if let Some(c) = l.clients.take() {
            l.res.client_counters = c.counters();
            c.shutdown().await;
        }
        l.res.server_hwm_kb = l.spec.server_pid.and_then(|p| proc_rss_kb(p, "VmHWM:"));
        drop(l.producer.take());
        out.push(l.res);
    }
    out
}
