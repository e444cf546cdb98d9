//! pg-realtime-bench: the pieces of `scripts/bench.sh`.
//!
//!   relay   --listen 127.0.0.1:P --dsn DSN [--channel bench --topic realtime:bench --event m --max-secs 1800]
//!   fanout  --target NAME --ws ws://127.0.0.1:P/realtime/v1/websocket --mode broadcast|notify|client --out FILE
//!           [--server-pid PID] [--target2 NAME --ws2 URL --mode2 MODE --out2 FILE --server-pid2 PID] --dsn DSN
//!           [--jwt-secret S --role anon --subscribers 1000 --producers 4
//!            --idle-count 100 --idle-interval-ms 50 --latency-rate 10 --latency-secs 10
//!            --step-secs 3 --start-rate 100 --max-rate 12800 --p99-ms 100 --max-steps 14 --search-budget-s 240]
//!           (several targets are measured interleaved: idle A, B; latency A, B; search steps A, B, A, ...;
//!            --idle-count 0 / --latency-secs 0 skip those; mode client: --producers clients push kind-3 frames)
//!   roundtrip --relay-ws URL --sidecar-ws URL --dsn DSN --out FILE [--relay-pid PID --sidecar-pid PID
//!           --jwt-secret S --clients 1000 --room-size 10 --rate 2 --step-secs 5 --rounds 2 --warmup-secs 2 --threads 2]
//!           (client broadcasts within rooms, every client sending and receiving; subjects alternate)
//!   memory  --relay-ws URL --sidecar-ws URL --out FILE [--relay-pid PID --sidecar-pid PID --jwt-secret S
//!           --connections 10000 --rooms 1000 --sources 8 --idle-secs 5 --rounds 2]
//!           (server RSS per idle joined connection; clients bound to 127.0.0.2 .. 127.0.0.(1 + sources))
//!   writers --host H --port P --pgbench PATH --scripts DIR --out FILE
//!           [--user postgres --db postgres --seconds 8 --rounds 2 --clients 16 --threads 2 --settle-ms 1500]
//!   capture --host H --port P --pgbench PATH --scripts DIR --out FILE [same options as writers]
//!           (one-row INSERTs into a table captured for Postgres Changes, no subscribers, vs the same
//!            table shape without capture, alternating)
//!   hardening --host H --port P --old-port P2 --pgbench PATH --scripts DIR --out FILE [--old-rev REV
//!           --prefill 10000 --variants id,id (default: all) and the writers options]
//!           (the writer-side cost of the hardening checks: capture with 0, 1 and 1,000 subscribers
//!            and private vs public SQL sends, current extension (port P) vs the pre-hardening build
//!            REV (port P2), alternating)
//!   changes --ws ws://127.0.0.1:P/realtime/v1/websocket --dsn DSN --jwt-secret S --out FILE
//!           [--sidecar-pid PID --subscribers 1000 --small 100 --producers 8 --prefill 10000 --sources 4
//!            --step-secs 3 --fixed-secs 5 --p99-ms 100 --max-steps 10 --search-budget-s 200
//!            --all-start-rate 5 --all-max-rate 400 --owned-start-rate 100 --owned-max-rate 12800]
//!           (Postgres Changes to one user per connection: RLS-checked vs RLS disabled, unfiltered
//!            and with an owner filter; searches interleaved per group)
//!   joins   --ws ws://127.0.0.1:P/realtime/v1/websocket --dsn DSN --jwt-secret S --out FILE
//!           [--sidecar-pid PID --connections 50 --rooms 100 --step-secs 5 --rounds 2 --warmup-secs 1]
//!           (private joins with a per-user RLS policy vs public joins, alternating)
//!   report  --raw DIR --out DIR      (exit 0 when the run completed, 3 when a part of it failed)
mod capture;
mod changes;
mod frame;
mod hardening;
mod joins;
mod jwt;
mod loadgen;
mod memory;
mod relay;
mod report;
mod roundtrip;
mod stats;
mod writers;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(v: &[String]) -> Result<Args, String> {
        let mut m = HashMap::new();
        let mut it = v.iter();
        while let Some(k) = it.next() {
            let k = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k}"))?;
            let val = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
            m.insert(k.to_string(), val.clone());
        }
        Ok(Args(m))
    }
    fn req(&self, k: &str) -> Result<String, String> {
        self.0
            .get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required"))
    }
    fn get<T: std::str::FromStr>(&self, k: &str, d: T) -> Result<T, String> {
        match self.0.get(k) {
            None => Ok(d),
            Some(v) => v.parse().map_err(|_| format!("bad value for --{k}: {v}")),
        }
    }
    fn str(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn pid(&self, k: &str) -> Option<u32> {
        self.0.get(k).and_then(|p| p.parse().ok())
    }
    /// `url` with the connection parameters (an anon API key when --jwt-secret is given).
    fn ws_url(&self, url: String) -> String {
        match self.0.get("jwt-secret") {
            Some(secret) => {
                let token = jwt::hs256(secret, &self.str("role", "anon"), 3600, &[]);
                format!("{url}?apikey={token}&vsn=2.0.0")
            }
            None => url,
        }
    }
    /// The relay (baseline) and the sidecar, in that order.
    fn subjects(&self) -> Result<Vec<loadgen::Subject>, String> {
        ["relay", "sidecar"]
            .into_iter()
            .map(|name| {
                Ok(loadgen::Subject {
                    name: name.into(),
                    url: self.ws_url(self.req(&format!("{name}-ws"))?),
                    pid: self.pid(&format!("{name}-pid")),
                })
            })
            .collect()
    }
}

fn write_json<T: serde::Serialize>(out: &str, v: &T) -> Result<(), String> {
    std::fs::write(out, serde_json::to_string_pretty(v).unwrap()).map_err(|e| format!("{out}: {e}"))
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = match argv.get(1).map(|s| s.as_str()) {
        Some(
            cmd @ ("relay" | "fanout" | "roundtrip" | "memory" | "writers" | "capture"
            | "hardening" | "changes" | "joins" | "report"),
        ) => match Args::parse(&argv[2..]).and_then(|a| run(cmd, a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("pg-realtime-bench {cmd}: {e}");
                1
            }
        },
        _ => {
            eprintln!("usage: pg-realtime-bench relay|fanout|roundtrip|memory|writers|capture|hardening|changes|joins|report --key value ... (see src/main.rs)");
            2
        }
    };
    std::process::exit(code);
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn run(cmd: &str, a: Args) -> Result<i32, String> {
    match cmd {
        "relay" => {
            let o = relay::RelayOpts {
                listen: a
                    .req("listen")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?,
                dsn: a.req("dsn")?,
                channel: a.str("channel", "bench"),
                topic: a.str("topic", "realtime:bench"),
                event: a.str("event", "m"),
                max_secs: a.get("max-secs", 1800)?,
            };
            runtime()?.block_on(relay::run(o))?;
            Ok(0)
        }
        "fanout" => {
            // Targets: --target/--mode/--ws/--server-pid/--out, then the same keys suffixed 2, 3, ...
            let mut targets = vec![];
            let mut outs = vec![];
            for suffix in ["", "2", "3", "4"] {
                let Some(name) = a.0.get(&format!("target{suffix}")).cloned() else {
                    break;
                };
                targets.push(loadgen::TargetSpec {
                    name,
                    url: a.ws_url(a.req(&format!("ws{suffix}"))?),
                    mode: loadgen::Mode::parse(&a.req(&format!("mode{suffix}"))?)?,
                    server_pid: a.pid(&format!("server-pid{suffix}")),
                });
                outs.push(a.req(&format!("out{suffix}"))?);
            }
            if targets.is_empty() {
                return Err("--target is required".into());
            }
            let o = loadgen::FanoutOpts {
                dsn: a.req("dsn")?,
                sub_topic: a.str("sub-topic", "bench"),
                event: a.str("event", "m"),
                subscribers: a.get("subscribers", 1000)?,
                producer_conns: a.get("producers", 4)?,
                idle_count: a.get("idle-count", 100)?,
                idle_interval_ms: a.get("idle-interval-ms", 50)?,
                latency_rate: a.get("latency-rate", 10.0)?,
                latency_secs: a.get("latency-secs", 10.0)?,
                step_secs: a.get("step-secs", 3.0)?,
                start_rate: a.get("start-rate", 100.0)?,
                max_rate: a.get("max-rate", 12800.0)?,
                p99_limit_us: a.get::<u64>("p99-ms", 100)? * 1000,
                max_steps: a.get("max-steps", 14)?,
                search_budget: Duration::from_secs(a.get("search-budget-s", 240)?),
            };
            let results = runtime()?.block_on(loadgen::fanout(&targets, &o));
            let mut code = 0;
            for (r, out) in results.iter().zip(&outs) {
                write_json(out, r)?;
                if r.error.is_some() {
                    code = 3;
                }
            }
            Ok(code)
        }
        "roundtrip" => {
            let o = roundtrip::RoundTripOpts {
                subjects: a.subjects()?,
                dsn: a.req("dsn")?,
                clients: a.get("clients", 1000)?,
                room_size: a.get("room-size", 10)?,
                rate_per_client: a.get("rate", 2.0)?,
                step_secs: a.get("step-secs", 5.0)?,
                rounds: a.get("rounds", 2)?,
                warmup_secs: a.get("warmup-secs", 2.0)?,
                threads: a.get("threads", 2)?,
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(roundtrip::run(&o));
            write_json(&out, &r)?;
            Ok(if r.error.is_some() { 3 } else { 0 })
        }
        "memory" => {
            let sources: u8 = a.get("sources", 8)?;
            let o = memory::MemoryOpts {
                subjects: a.subjects()?,
                connections: a.get("connections", 10000)?,
                rooms: a.get("rooms", 1000)?,
                sources: (0..sources)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
                    .collect(),
                idle_secs: a.get("idle-secs", 5.0)?,
                rounds: a.get("rounds", 2)?,
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(memory::run(&o));
            write_json(&out, &r)?;
            Ok(if r.error.is_some() { 3 } else { 0 })
        }
        "writers" | "capture" | "hardening" => {
            let o = writers::WritersOpts {
                pgbench: a.str("pgbench", "/usr/lib/postgresql/15/bin/pgbench"),
                host: a.str("host", "127.0.0.1"),
                port: a.req("port")?.parse().map_err(|_| "--port")?,
                user: a.str("user", "postgres"),
                db: a.str("db", "postgres"),
                scripts_dir: a.req("scripts")?.into(),
                seconds: a.get("seconds", 8)?,
                rounds: a.get("rounds", 2)?,
                clients: a.get("clients", 16)?,
                threads: a.get("threads", 2)?,
                settle: Duration::from_millis(a.get("settle-ms", 1500)?),
                sidecar_running: a.get("sidecar-running", true)?,
                sidecar_pid: a.pid("sidecar-pid"),
            };
            let out = a.req("out")?;
            if cmd == "hardening" {
                let o = hardening::HardeningOpts {
                    new: o,
                    old_port: a.req("old-port")?.parse().map_err(|_| "--old-port")?,
                    old_rev: a.str("old-rev", "?"),
                    prefill: a.get("prefill", 10_000)?,
                    only: a.str("variants", ""),
                };
                let r = runtime()?.block_on(hardening::run(&o));
                write_json(&out, &r)?;
                return Ok(if r.error.is_some() { 3 } else { 0 });
            }
            let r = if cmd == "writers" {
                runtime()?.block_on(writers::run(&o))
            } else {
                runtime()?.block_on(capture::run(&o))
            };
            write_json(&out, &r)?;
            Ok(if r.error.is_some() { 3 } else { 0 })
        }
        "changes" => {
            let sources: u8 = a.get("sources", 4)?;
            let o = changes::ChangesOpts {
                url: a.req("ws")?,
                dsn: a.req("dsn")?,
                jwt_secret: a.req("jwt-secret")?,
                subscribers: a.get("subscribers", 1000)?,
                small: a.get("small", 100)?,
                producers: a.get("producers", 8)?,
                prefill: a.get("prefill", 10_000)?,
                sources: (0..sources)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
                    .collect(),
                step_secs: a.get("step-secs", 3.0)?,
                fixed_secs: a.get("fixed-secs", 5.0)?,
                p99_limit_us: a.get::<u64>("p99-ms", 100)? * 1000,
                max_steps: a.get("max-steps", 10)?,
                search_budget: Duration::from_secs(a.get("search-budget-s", 200)?),
                all_start_rate: a.get("all-start-rate", 5.0)?,
                all_max_rate: a.get("all-max-rate", 400.0)?,
                owned_start_rate: a.get("owned-start-rate", 100.0)?,
                owned_max_rate: a.get("owned-max-rate", 12800.0)?,
                sidecar_pid: a.pid("sidecar-pid"),
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(changes::run(&o));
            write_json(&out, &r)?;
            Ok(if r.error.is_some() { 3 } else { 0 })
        }
        "joins" => {
            let o = joins::JoinsOpts {
                url: a.req("ws")?,
                dsn: a.req("dsn")?,
                jwt_secret: a.req("jwt-secret")?,
                connections: a.get("connections", 50)?,
                rooms: a.get("rooms", 100)?,
                step_secs: a.get("step-secs", 5.0)?,
                rounds: a.get("rounds", 2)?,
                warmup_secs: a.get("warmup-secs", 1.0)?,
                sidecar_pid: a.pid("sidecar-pid"),
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(joins::run(&o));
            write_json(&out, &r)?;
            Ok(if r.error.is_some() { 3 } else { 0 })
        }
        "report" => {
            let ok = report::build(
                std::path::Path::new(&a.req("raw")?),
                std::path::Path::new(&a.req("out")?),
            )?;
            Ok(if ok { 0 } else { 3 })
        }
        _ => unreachable!(),
    }
}
