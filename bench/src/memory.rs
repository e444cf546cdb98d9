//! Memory per idle subscribed connection. For each subject, the server's resident set (VmRSS)
//! is read before `connections` clients connect and again after all of them have joined a
//! channel (`rooms` channels, round robin) and sat idle for `idle_secs`; the difference divided
//! by the count is the figure. Subjects alternate, the order flipping every round; each
//! measurement opens its own connections and closes them afterwards. Only a process's first
//! measurement counts: a later one reuses what its allocator kept from the earlier one (shown
//! as `rss_closed_kb`), so it reads low.
use crate::loadgen::{proc_rss_kb, Clients, Subject};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::time::sleep;

pub struct MemoryOpts {
    pub subjects: Vec<Subject>,
    pub connections: usize,
    pub rooms: usize,
    /// Client source addresses, used round robin.
    pub sources: Vec<IpAddr>,
    pub idle_secs: f64,
    pub rounds: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemStep {
    pub subject: String,
    pub round: usize,
    /// Whether this was the subject process's first measurement (the one that counts).
    pub first: bool,
    pub connections: usize,
    pub joined: usize,
    pub connect_s: f64,
    pub rss_before_kb: Option<u64>,
    pub rss_idle_kb: Option<u64>,
    /// After the clients closed and the server had 2 s to drop them.
    pub rss_closed_kb: Option<u64>,
    pub kb_per_connection: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryResult {
    pub params: serde_json::Value,
    pub steps: Vec<MemStep>,
    pub error: Option<String>,
}

impl MemoryResult {
    /// The figure of `subject`: its first measurement.
    pub fn kb_per_connection(&self, subject: &str) -> Option<f64> {
        self.steps
            .iter()
            .find(|s| s.subject == subject && s.first)
            .and_then(|s| s.kb_per_connection)
    }
}

async fn measure(o: &MemoryOpts, s: &Subject, round: usize) -> MemStep {
    let rss = || s.pid.and_then(|p| proc_rss_kb(p, "VmRSS:"));
    let mut m = MemStep {
        subject: s.name.clone(),
        round,
        first: round == 0,
        connections: o.connections,
        rss_before_kb: rss(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let rooms = o.rooms.max(1);
    let started = Clients::start(
        o.connections,
        &s.url,
        |i| format!("realtime:mem-{}", i % rooms),
        &o.sources,
        Duration::from_secs(180),
    )
    .await;
    m.connect_s = t0.elapsed().as_secs_f64();
    match started {
        Err(e) => m.error = Some(e),
        Ok(clients) => {
            sleep(Duration::from_secs_f64(o.idle_secs)).await;
            m.joined = clients.receivers().joined();
            m.rss_idle_kb = rss();
            if m.joined < o.connections {
                m.error = Some(format!(
                    "{} of {} connections dropped while idle; last error: {:?}",
                    o.connections - m.joined,
                    o.connections,
                    clients.receivers().last_error()
                ));
            }
            clients.shutdown().await;
        }
    }
    sleep(Duration::from_secs(2)).await;
    m.rss_closed_kb = rss();
    if m.error.is_none() {
        m.kb_per_connection = match (m.rss_before_kb, m.rss_idle_kb) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) / o.connections as f64),
            _ => None,
        };
    }
    eprintln!(
        "memory {} round {round}: {} joined in {:.1} s, RSS {:?} -> {:?} kB ({:.2} kB/connection), {:?} kB after close{}",
        s.name,
        m.joined,
        m.connect_s,
        m.rss_before_kb,
        m.rss_idle_kb,
        m.kb_per_connection.unwrap_or(f64::NAN),
        m.rss_closed_kb,
        m.error.as_ref().map(|e| format!(" (error: {e})")).unwrap_or_default()
    );
    m
}

pub async fn run(o: &MemoryOpts) -> MemoryResult {
    let mut res = MemoryResult {
        params: serde_json::json!({
            "connections": o.connections,
            "channels": o.rooms,
            "source_addresses": o.sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "idle_seconds": o.idle_secs,
            "rounds": o.rounds,
            "client": "tokio-tungstenite, one phx_join each (broadcast self:false, presence off), phoenix heartbeat every 25 s",
            "measure": "VmRSS of the server process after all joined and idle, minus VmRSS before connecting, divided by the connections; kB = 1024 bytes",
        }),
        ..Default::default()
    };
    for round in 0..o.rounds {
        let mut order: Vec<&Subject> = o.subjects.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for s in order {
            let m = measure(o, s, round).await;
            if let Some(e) = &m.error {
                res.error
                    .get_or_insert(format!("{} round {round}: {e}", s.name));
            }
            res.steps.push(m);
        }
    }
    res
}
