//! Load generator: WebSocket subscribers that parse kind-4 frames and time them, a rate-paced
//! producer (Postgres statements, or kind-3 pushes from joined WebSocket clients), and the three
//! fan-out measurements (idle wake-up, fixed-rate latency, throughput search). Every loop is
//! bounded in count and in time.
use crate::frame::{decode_kind4, encode_kind3, parse_stamp, Stamp};
use crate::stats::{summarize, Summary};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

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

/// What one receiving connection has seen, per step.
#[derive(Default)]
pub struct ClientState {
    joined: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    inner: Mutex<ClientStats>,
}

impl ClientState {
    fn on_binary(&self, b: &[u8], topic: &[u8]) {
        let stamp = decode_kind4(b)
            .filter(|f| f.topic == topic)
            .and_then(|f| parse_stamp(f.payload));
        match stamp {
            Some(s) => self.record(s),
            None => self.inner.lock().unwrap().bad_frames += 1,
        }
    }

    /// Counts and times one delivery (duplicates of a sequence number only counted as such).
    pub fn record(&self, s: Stamp) {
        let now = now_us();
        let mut g = self.inner.lock().unwrap();
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

    /// Heartbeat replies are expected; any other text frame is counted and reported.
    pub fn on_text(&self, s: &str) {
        if !(s.contains("\"phoenix\"") && s.contains("phx_reply")) {
            let mut g = self.inner.lock().unwrap();
            g.other_text += 1;
            g.last_other_text = Some(s.chars().take(300).collect());
        }
    }

    /// The receiver is joined (and counted as a connect).
    pub fn set_joined(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.joined.store(true, Ordering::Release);
    }

    pub fn ended(&self, r: &Result<(), String>) {
        self.joined.store(false, Ordering::Release);
        if let Err(e) = r {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            self.inner.lock().unwrap().last_error = Some(e.clone());
        }
    }
}

/// Aggregates over a set of receiving connections.
#[derive(Clone, Copy)]
pub struct Receivers<'a>(pub &'a [Arc<ClientState>]);

impl Receivers<'_> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn joined(&self) -> usize {
        self.0
            .iter()
            .filter(|s| s.joined.load(Ordering::Acquire))
            .count()
    }

    pub fn last_error(&self) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find_map(|s| s.inner.lock().unwrap().last_error.clone())
    }

    pub fn disconnects(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.disconnects.load(Ordering::Relaxed))
            .sum()
    }

    pub fn received(&self, step: i64) -> u64 {
        self.0
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
        for s in self.0 {
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
        for s in self.0 {
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
}

/// Subscribers that only receive; each reconnects by itself after an error.
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

/// Phoenix's client heartbeat period; servers close connections silent for 60 s.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(25);

pub fn heartbeat(r: u64) -> Message {
    Message::text(format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#))
}

/// Opens a WebSocket (Nagle off, like the browser clients), over a socket bound to `source` when
/// one is given: spreading 10k connections over several 127.0.0.x source addresses keeps each
/// address's ephemeral ports far from exhaustion.
pub async fn connect_ws(url: &str, source: Option<IpAddr>) -> Result<Ws, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let addr = tokio::net::lookup_host((host, uri.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let connect = async {
        let sock = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(client_ws_config()))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    };
    timeout(Duration::from_secs(15), connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// Joins `topic` and waits for the ok reply; broadcasts that arrive first are recorded in `st`.
async fn join(ws: &mut Ws, topic: &str, st: &ClientState) -> Result<(), String> {
    ws.send(Message::text(join_message("1", topic, false, None)))
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
                        st.set_joined();
                        return Ok(());
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
}

async fn client_session(
    url: &str,
    topic: &str,
    source: Option<IpAddr>,
    st: &ClientState,
    stop: &mut watch::Receiver<bool>,
    connect_permits: &Semaphore,
) -> Result<(), String> {
    let mut ws = {
        let _permit = connect_permits.acquire().await.map_err(|e| e.to_string())?;
        let mut ws = connect_ws(url, source).await?;
        join(&mut ws, topic, st).await?;
        ws
    };
    run_until_stopped(&mut ws, stop, |m| match m {
        Message::Binary(b) => st.on_binary(b, topic.as_bytes()),
        Message::Text(t) => st.on_text(t.as_str()),
        _ => {}
    })
    .await
}

/// Feed every data frame to `on_message` and heartbeat every `HEARTBEAT_EVERY` until `stop`
/// changes (then close the socket) or the connection ends (an error).
pub async fn run_until_stopped(
    ws: &mut Ws,
    stop: &mut watch::Receiver<bool>,
    mut on_message: impl FnMut(&Message),
) -> Result<(), String> {
    let mut hb = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    let mut hb_ref: u64 = 1;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(c))) => return Err(format!("server closed: {c:?}")),
                Some(Ok(m)) => on_message(&m),
                None => return Err("connection ended".into()),
                Some(Err(e)) => return Err(format!("read: {e}")),
            },
            _ = hb.tick() => {
                hb_ref += 1;
                ws.send(heartbeat(hb_ref)).await.map_err(|e| format!("heartbeat: {e}"))?;
            }
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ok(());
            }
        }
    }
}

/// One connection attempt of client `i`: connect (holding one of the `permits` while
/// connecting and joining), join, mark the state joined, then receive until stopped (Ok) or the
/// connection fails (Err).
pub type Session = Arc<
    dyn Fn(
            usize,
            Arc<ClientState>,
            watch::Receiver<bool>,
            Arc<Semaphore>,
        ) -> futures_util::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

impl Clients {
    /// Starts `n` subscribers, client `i` joined to `topic_of(i)` from source address
    /// `sources[i % len]` (the system's choice when empty); each reconnects by itself after an
    /// error, 500 ms apart. Waits up to `wait` for all of them to be joined.
    pub async fn start(
        n: usize,
        url: &str,
        topic_of: impl Fn(usize) -> String,
        sources: &[IpAddr],
        wait: Duration,
    ) -> Result<Clients, String> {
        let url = url.to_string();
        let topics: Vec<String> = (0..n).map(topic_of).collect();
        let sources = sources.to_vec();
        let session: Session = Arc::new(move |i, st, mut stop, permits| {
            let (url, topic) = (url.clone(), topics[i].clone());
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            Box::pin(
                async move { client_session(&url, &topic, source, &st, &mut stop, &permits).await },
            )
        });
        Clients::spawn(n, session, wait).await
    }

    /// Starts `n` clients running `session`, each again after an error (500 ms apart); waits up
    /// to `wait` for all of them to be joined (and stops them when they are not).
    pub async fn spawn(n: usize, session: Session, wait: Duration) -> Result<Clients, String> {
        let (stop, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(64));
        let mut states = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let st = Arc::new(ClientState::default());
            states.push(st.clone());
            let (session, mut stop_rx, permits) =
                (session.clone(), stop_rx.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                for _attempt in 0..1000 {
                    if *stop_rx.borrow() {
                        return;
                    }
                    let r = session(i, st.clone(), stop_rx.clone(), permits.clone()).await;
                    st.ended(&r);
                    if r.is_ok() {
                        return;
                    }
                    tokio::select! {
                        _ = sleep(Duration::from_millis(500)) => {}
                        _ = stop_rx.changed() => return,
                    }
                }
            }));
        }
        let c = Clients {
            states,
            stop,
            tasks,
        };
        if let Err(e) = c.wait_joined(wait).await {
            c.shutdown().await;
            return Err(e);
        }
        Ok(c)
    }

    pub fn receivers(&self) -> Receivers<'_> {
        Receivers(&self.states)
    }

    pub async fn wait_joined(&self, wait: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let j = self.receivers().joined();
            if j == self.states.len() {
                return Ok(());
            }
            if t0.elapsed() > wait {
                return Err(format!(
                    "only {j}/{} subscribers joined after {:?}; last error: {:?}",
                    self.states.len(),
                    wait,
                    self.receivers().last_error()
                ));
            }
            sleep(Duration::from_millis(50)).await;
        }
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
    /// Kind-3 broadcast pushes from WebSocket clients joined to the topic (realtime-js
    /// `channel.send`); both subjects relay them to the other members. Several senders receive
    /// each other's pushes, so an overloaded server may close one as a slow client.
    Client,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "broadcast" => Ok(Mode::Broadcast),
            "notify" => Ok(Mode::Notify),
            "client" => Ok(Mode::Client),
            _ => Err(format!("unknown producer mode {s}")),
        }
    }

    /// The producing statement of the SQL modes.
    pub fn sql(self, sub_topic: &str, event: &str) -> Option<String> {
        match self {
            Mode::Broadcast => Some(format!(
                "select realtime.broadcast('{sub_topic}', '{event}', jsonb_build_object('t', $1::int8, 'n', $2::int8, 's', $3::int8))"
            )),
            Mode::Notify => Some(format!(
                "select pg_notify('{sub_topic}', json_build_object('t', $1::int8, 'n', $2::int8, 's', $3::int8)::text)"
            )),
            Mode::Client => None,
        }
    }
}

/// The sending half of a joined WebSocket client; its reading half is drained by a task that
/// also heartbeats (through this sink, hence the lock).
struct WsSender {
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    topic: String,
    event: String,
}

#[derive(Clone)]
enum Conn {
    Sql(Arc<tokio_postgres::Client>, tokio_postgres::Statement),
    Ws(Arc<WsSender>),
}

impl Conn {
    async fn send(&self, t: i64, n: i64, step: i64) -> Result<(), String> {
        match self {
            Conn::Sql(client, stmt) => client
                .execute(stmt, &[&t, &n, &step])
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Conn::Ws(w) => {
                let payload = format!(r#"{{"t":{t},"n":{n},"s":{step}}}"#);
                let frame = encode_kind3("1", "", &w.topic, &w.event, payload.as_bytes());
                w.sink
                    .lock()
                    .await
                    .send(Message::Binary(frame.into()))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Producer connections on their own runtime, so that the subscribers' work does not delay the
/// sends (the timestamp is taken right before each one).
pub struct Producer {
    rt: Option<tokio::runtime::Runtime>,
    conns: Vec<Conn>,
    /// Sequence numbers (`n`), shared with the producers of the same receivers (see
    /// `share_numbering`): a receiver's duplicate check keys on them.
    next_n: Arc<AtomicU64>,
    /// The WebSocket connections' receiving halves, in connection order (empty for SQL).
    pub receivers: Vec<Arc<ClientState>>,
    stop: watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Produced {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// How far the producer fell behind its schedule at worst (ms).
    pub max_behind_ms: f64,
    /// Time each successful send took: for SQL, the statement as the writer sees it (autocommit,
    /// so including its commit).
    #[serde(default)]
    pub statement: Summary,
}

/// Drains what a producing WebSocket client receives (recorded in `st` when `record`), and
/// heartbeats, until stopped or the connection fails.
async fn ws_reader(
    mut stream: SplitStream<Ws>,
    w: Arc<WsSender>,
    st: Arc<ClientState>,
    record: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut hb = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    let mut hb_ref: u64 = 1;
    let r = loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) if record => st.on_binary(&b, w.topic.as_bytes()),
                Some(Ok(Message::Text(t))) => st.on_text(t.as_str()),
                Some(Ok(Message::Close(c))) => break Err(format!("server closed: {c:?}")),
                None => break Err("connection ended".into()),
                Some(Err(e)) => break Err(format!("read: {e}")),
                Some(Ok(_)) => {}
            },
            _ = hb.tick() => {
                hb_ref += 1;
                if let Err(e) = w.sink.lock().await.send(heartbeat(hb_ref)).await {
                    break Err(format!("heartbeat: {e}"));
                }
            }
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(2), w.sink.lock().await.close()).await;
                break Ok(());
            }
        }
    };
    st.ended(&r);
}

impl Producer {
    fn runtime(threads: usize) -> Result<Producer, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("producer")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Producer {
            rt: Some(rt),
            conns: vec![],
            next_n: Arc::new(AtomicU64::new(0)),
            receivers: vec![],
            stop: watch::channel(false).0,
            readers: vec![],
        })
    }

    /// `conns` Postgres connections with `sql` prepared.
    pub async fn sql(dsn: &str, conns: usize, sql: &str) -> Result<Producer, String> {
        // Own the runtime before any early return: dropping it from async code would panic.
        let mut p = Producer::runtime(1)?;
        let (dsn, sql) = (dsn.to_string(), sql.to_string());
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
                        v.push(Conn::Sql(Arc::new(client), stmt));
                    }
                    Ok::<_, String>(v)
                })
                .await
                .map_err(|e| e.to_string())??;
        Ok(p)
    }

    /// One WebSocket client per entry of `topics`, joined to it (broadcast `self: false`), on a
    /// runtime of `threads` workers. With `record`, what each receives is timed like a
    /// subscriber's (in `receivers`), which makes the clients both the senders and the receivers.
    pub async fn websocket(
        url: &str,
        topics: Vec<String>,
        event: &str,
        threads: usize,
        record: bool,
    ) -> Result<Producer, String> {
        let mut p = Producer::runtime(threads)?;
        p.receivers = (0..topics.len())
            .map(|_| Arc::new(ClientState::default()))
            .collect();
        let (url, event, states, stop) = (
            url.to_string(),
            event.to_string(),
            p.receivers.clone(),
            p.stop.subscribe(),
        );
        let opened = p
            .rt
            .as_ref()
            .unwrap()
            .spawn(async move {
                let opens = topics.into_iter().zip(states).map(|(topic, st)| {
                    let (url, event, stop) = (url.clone(), event.clone(), stop.clone());
                    async move {
                        let mut ws = connect_ws(&url, None).await?;
                        join(&mut ws, &topic, &st).await?;
                        let (sink, stream) = ws.split();
                        let w = Arc::new(WsSender {
                            sink: tokio::sync::Mutex::new(sink),
                            topic,
                            event,
                        });
                        let reader = tokio::spawn(ws_reader(stream, w.clone(), st, record, stop));
                        Ok::<_, String>((Conn::Ws(w), reader))
                    }
                });
                // Joined in order, 64 handshakes at a time.
                futures_util::stream::iter(opens)
                    .buffered(64)
                    .collect::<Vec<_>>()
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut first_error = None;
        for r in opened {
            match r {
                Ok((conn, reader)) => {
                    p.conns.push(conn);
                    p.readers.push(reader);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(p),
            Some(e) => {
                p.close().await;
                Err(format!("producer client: {e}"))
            }
        }
    }

    /// Closes the WebSocket clients cleanly (the runtime is dropped with the producer).
    pub async fn close(&mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.readers) {
            let _ = timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Numbers this producer's messages in `other`'s sequence, for producers that send to the
    /// same receivers.
    pub fn share_numbering(&mut self, other: &Producer) {
        self.next_n = other.next_n.clone();
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
            let conn = self.conns[k].clone();
            handles.push(self.rt.as_ref().unwrap().spawn(async move {
                let mut p = Produced::default();
                let mut took_us = Vec::new();
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
                    let sent_at = Instant::now();
                    match timeout(Duration::from_secs(10), conn.send(t, n, step)).await {
                        Ok(Ok(())) => {
                            p.sent += 1;
                            took_us
                                .push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok(Err(e)) => {
                            p.errors += 1;
                            p.first_error.get_or_insert(e);
                        }
                        Err(_) => {
                            p.errors += 1;
                            p.first_error.get_or_insert("send timed out (10 s)".into());
                        }
                    }
                    i += use_conns as u64;
                }
                (p, took_us)
            }));
        }
        let mut total = Produced::default();
        let mut took_us = Vec::new();
        for h in handles {
            let (p, mut took) = h.await.unwrap_or_default();
            took_us.append(&mut took);
            total.sent += p.sent;
            total.errors += p.errors;
            total.max_behind_ms = total.max_behind_ms.max(p.max_behind_ms);
            if total.first_error.is_none() {
                total.first_error = p.first_error;
            }
        }
        total.elapsed_s = (t0.elapsed().as_secs_f64() - 0.02).max(1e-3);
        total.statement = summarize(took_us);
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
    /// The whole Postgres cluster and this load generator, over the same window as the server.
    #[serde(default)]
    pub postgres_cpu_s: Option<f64>,
    #[serde(default)]
    pub loadgen_cpu_s: Option<f64>,
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

/// A database connection whose connection task runs until the client is dropped.
pub async fn connect_db(dsn: &str) -> Result<tokio_postgres::Client, String> {
    let (db, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .map_err(|e| format!("connect to Postgres: {e}"))?;
    tokio::spawn(conn);
    Ok(db)
}

/// The postmaster's pid (a backend's parent), whose process tree is the whole cluster.
pub async fn postmaster_pid(dsn: &str) -> Option<u32> {
    let db = connect_db(dsn).await.ok()?;
    let backend: i32 = db
        .query_one("select pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    proc_parent(backend as u32)
}

/// CPU seconds used so far by the server, the Postgres cluster and this load generator.
#[derive(Clone, Copy)]
pub struct Cpu {
    pub server: Option<f64>,
    pub postgres: Option<f64>,
    pub loadgen: Option<f64>,
}

impl Cpu {
    pub fn now(server_pid: Option<u32>, postmaster_pid: Option<u32>) -> Cpu {
        Cpu {
            server: server_pid.and_then(proc_cpu_secs),
            postgres: postmaster_pid.and_then(proc_tree_cpu_secs),
            loadgen: proc_cpu_secs(std::process::id()),
        }
    }
}

pub fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// One measured step against one target. `step` must be unique within the run (it tags the
/// messages, so late deliveries of an earlier step never count for a later one).
pub struct Bench<'a> {
    pub receivers: Receivers<'a>,
    /// Deliveries each message should make: every receiver (fan-out), or the other members of
    /// the sender's room (clients that send and receive).
    pub deliveries_per_msg: u64,
    pub producer: &'a Producer,
    pub server_pid: Option<u32>,
    pub postmaster_pid: Option<u32>,
}

impl Bench<'_> {
    /// The step's result and its on-time latency samples.
    pub async fn step(&self, step: i64, spec: &StepSpec) -> (StepResult, Vec<u32>) {
        let rx = self.receivers;
        let subs = rx.len() as u64;
        let joined_before = rx.joined() as u64;
        let disc0 = rx.disconnects();
        let cpu0 = Cpu::now(self.server_pid, self.postmaster_pid);
        let produced = self
            .producer
            .run(spec.rate, spec.count, step, spec.use_conns)
            .await;
        let expected = produced.sent * self.deliveries_per_msg;
        let window_end = Instant::now() + spec.grace;
        while Instant::now() < window_end && rx.received(step) < expected {
            sleep(Duration::from_millis(10)).await;
        }
        let (on_time, samples) = rx.take_samples(step);
        let cpu1 = Cpu::now(self.server_pid, self.postmaster_pid);
        let backlog_end = Instant::now() + spec.backlog_wait;
        let mut total = on_time;
        while total < expected && Instant::now() < backlog_end {
            sleep(Duration::from_millis(50)).await;
            total = rx.received(step);
        }
        let _ = rx.take_samples(step); // drop late samples
        let disconnects = rx.disconnects() - disc0;
        let latency = summarize(samples.clone());
        let achieved_rate = produced.sent as f64 / produced.elapsed_s;
        let server_cpu_s = delta(cpu0.server, cpu1.server);
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
            deliveries_per_s: achieved_rate * self.deliveries_per_msg as f64,
            latency,
            disconnects,
            server_cpu_us_per_delivery: server_cpu_s
                .filter(|_| on_time > 0)
                .map(|c| c * 1e6 / on_time as f64),
            server_cpu_s,
            postgres_cpu_s: delta(cpu0.postgres, cpu1.postgres),
            loadgen_cpu_s: delta(cpu0.loadgen, cpu1.loadgen),
            produced,
            pass: false,
            fail_reasons: vec![],
        };
        let f = &mut r.fail_reasons;
        if joined_before < subs {
            f.push(format!(
                "only {joined_before}/{subs} receivers joined at start"
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
            f.push(format!("{} receiver disconnects", r.disconnects));
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
        (r, samples)
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

/// A server measured against another one in the same run.
#[derive(Clone)]
pub struct Subject {
    pub name: String,
    /// With the connection parameters (`apikey`, `vsn`).
    pub url: String,
    pub pid: Option<u32>,
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
pub struct Search {
    lo: Option<f64>,
    hi: Option<f64>,
    rate: f64,
    limits: SearchLimits,
    /// The next step re-runs a marginal miss.
    pub retry: bool,
    pub steps_run: usize,
    pub done: bool,
    /// Why the search ended, unless it converged.
    pub note: String,
}

#[derive(Clone, Copy)]
pub struct SearchLimits {
    pub max_rate: f64,
    pub p99_limit_us: u64,
    pub max_steps: usize,
}

impl Search {
    pub fn new(start: f64, limits: SearchLimits) -> Search {
        Search {
            lo: None,
            hi: None,
            rate: start,
            limits,
            retry: false,
            steps_run: 0,
            done: false,
            note: String::new(),
        }
    }

    /// The next rate to try, or None when the search is over.
    /// The next rate to try, unless the search is over or `started` is `budget` ago (then the
    /// search ends with a note saying so).
    pub fn next_within(&mut self, started: Instant, budget: Duration) -> Option<f64> {
        if started.elapsed() > budget {
            if !self.done {
                self.done = true;
                self.note = format!(
                    "search stopped by its time budget ({budget:?}) after {} steps",
                    self.steps_run
                );
            }
            return None;
        }
        self.next()
    }

    pub fn next(&mut self) -> Option<f64> {
        let o = self.limits;
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

    pub fn record(&mut self, r: &StepResult) {
        let o = self.limits;
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
    fn bench(&self, postmaster_pid: Option<u32>) -> Bench<'_> {
        let clients = self.clients.as_ref().unwrap();
        Bench {
            receivers: clients.receivers(),
            deliveries_per_msg: clients.states.len() as u64,
            producer: self.producer.as_ref().unwrap(),
            server_pid: self.spec.server_pid,
            postmaster_pid,
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
            search: Search::new(
                o.start_rate,
                SearchLimits {
                    max_rate: o.max_rate,
                    p99_limit_us: o.p99_limit_us,
                    max_steps: o.max_steps,
                },
            ),
        })
        .collect();
    let mut next_step: i64 = 0;

    let postmaster = postmaster_pid(&o.dsn).await;
    for l in live.iter_mut() {
        let p = match l.spec.mode.sql(&o.sub_topic, &o.event) {
            Some(sql) => Producer::sql(&o.dsn, o.producer_conns, &sql).await,
            None => {
                let topics = vec![topic.clone(); o.producer_conns];
                Producer::websocket(&l.spec.url, topics, &o.event, 1, false).await
            }
        };
        match p {
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
            let one = match Clients::start(
                1,
                &l.spec.url,
                |_| topic.clone(),
                &[],
                Duration::from_secs(20),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    l.fail(e);
                    continue;
                }
            };
            sleep(Duration::from_millis(500)).await;
            next_step += 1;
            let b = Bench {
                receivers: one.receivers(),
                deliveries_per_msg: 1,
                producer: l.producer.as_ref().unwrap(),
                server_pid: l.spec.server_pid,
                postmaster_pid: postmaster,
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
            l.res.idle = Some(b.step(next_step, &spec).await.0);
            one.shutdown().await;
        }
    }

    // 2. Subscribers (all targets stay connected; idle ones cost nothing).
    for l in live.iter_mut().filter(|l| l.ok()) {
        eprintln!("{}: connecting {} subscribers", l.spec.name, o.subscribers);
        let t0 = Instant::now();
        match Clients::start(
            o.subscribers,
            &l.spec.url,
            |_| topic.clone(),
            &[],
            Duration::from_secs(90),
        )
        .await
        {
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
    for l in live.iter_mut().filter(|l| l.ok() && o.latency_secs > 0.0) {
        eprintln!(
            "{}: latency at {} msg/s for {} s",
            l.spec.name, o.latency_rate, o.latency_secs
        );
        next_step += 1;
        let b = l.bench(postmaster);
        let spec = StepSpec {
            label: "latency".into(),
            rate: o.latency_rate,
            count: (o.latency_rate * o.latency_secs).round() as u64,
            use_conns: o.producer_conns,
            grace: Duration::from_secs(2),
            backlog_wait: Duration::from_secs(10),
            p99_limit_us: None,
        };
        l.res.latency = Some(b.step(next_step, &spec).await.0);
        sleep(Duration::from_millis(500)).await;
    }

    // 4. Throughput searches, interleaved step by step.
    eprintln!("throughput search (interleaved)");
    let search_start = Instant::now();
    loop {
        let mut any = false;
        for l in live.iter_mut().filter(|l| l.ok()) {
            let Some(rate) = l.search.next_within(search_start, o.search_budget) else {
                continue;
            };
            any = true;
            next_step += 1;
            // Subscribers closed by an overloaded server reconnect by themselves; let them, so
            // that one overload does not spoil the next step (a step still fails when some miss).
            let _ = l
                .clients
                .as_ref()
                .unwrap()
                .wait_joined(Duration::from_secs(15))
                .await;
            let b = l.bench(postmaster);
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
            let (r, _) = b.step(next_step, &spec).await;
            l.search.record(&r);
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
            l.res.client_counters = c.receivers().counters();
            c.shutdown().await;
        }
        l.res.server_hwm_kb = l.spec.server_pid.and_then(|p| proc_rss_kb(p, "VmHWM:"));
        if let Some(mut p) = l.producer.take() {
            p.close().await;
        }
        out.push(l.res);
    }
    out
}
