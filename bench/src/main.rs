//! pg-realtime-bench: the pieces of `scripts/bench.sh`.
//!
//!   relay   --listen 127.0.0.1:P --dsn DSN [--channel bench --topic realtime:bench --event m --max-secs 1800]
//!   fanout  --target NAME --ws ws://127.0.0.1:P/realtime/v1/websocket --mode broadcast|notify --out FILE
//!           [--server-pid PID] [--target2 NAME --ws2 URL --mode2 MODE --out2 FILE --server-pid2 PID] --dsn DSN
//!           [--jwt-secret S --role anon --subscribers 1000 --producers 4
//!            --idle-count 100 --idle-interval-ms 50 --latency-rate 10 --latency-secs 10
//!            --step-secs 3 --start-rate 100 --max-rate 12800 --p99-ms 100 --max-steps 14 --search-budget-s 240]
//!           (several targets are measured interleaved: idle A, B; latency A, B; search steps A, B, A, ...)
//!   writers --host H --port P --pgbench PATH --scripts DIR --out FILE
//!           [--user postgres --db postgres --seconds 8 --rounds 2 --clients 16 --threads 2 --settle-ms 1500]
//!   joins   --ws ws://127.0.0.1:P/realtime/v1/websocket --dsn DSN --jwt-secret S --out FILE
//!           [--sidecar-pid PID --connections 50 --rooms 100 --step-secs 5 --rounds 2 --warmup-secs 1]
//!           (private joins with a per-user RLS policy vs public joins, alternating)
//!   report  --raw DIR --out DIR      (exit 0 when the run completed, 3 when a part of it failed)
mod frame;
mod joins;
mod jwt;
mod loadgen;
mod relay;
mod report;
mod stats;
mod writers;

use std::collections::HashMap;
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
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = match argv.get(1).map(|s| s.as_str()) {
        Some(cmd @ ("relay" | "fanout" | "writers" | "joins" | "report")) => {
            match Args::parse(&argv[2..]).and_then(|a| run(cmd, a)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("pg-realtime-bench {cmd}: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!("usage: pg-realtime-bench relay|fanout|writers|joins|report --key value ... (see src/main.rs)");
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
                let mut url = a.req(&format!("ws{suffix}"))?;
                if let Some(secret) = a.0.get("jwt-secret") {
                    let token = jwt::hs256(secret, &a.str("role", "anon"), 3600, &[]);
                    url = format!("{url}?apikey={token}&vsn=2.0.0");
                }
                targets.push(loadgen::TargetSpec {
                    name,
                    url,
                    mode: loadgen::Mode::parse(&a.req(&format!("mode{suffix}"))?)?,
                    server_pid: a
                        .0
                        .get(&format!("server-pid{suffix}"))
                        .and_then(|p| p.parse().ok()),
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
                std::fs::write(out, serde_json::to_string_pretty(r).unwrap())
                    .map_err(|e| format!("{out}: {e}"))?;
                if r.error.is_some() {
                    code = 3;
                }
            }
            Ok(code)
        }
        "writers" => {
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
                sidecar_pid: a.0.get("sidecar-pid").and_then(|p| p.parse().ok()),
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(writers::run(&o));
            std::fs::write(&out, serde_json::to_string_pretty(&r).unwrap())
                .map_err(|e| format!("{out}: {e}"))?;
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
                sidecar_pid: a.0.get("sidecar-pid").and_then(|p| p.parse().ok()),
            };
            let out = a.req("out")?;
            let r = runtime()?.block_on(joins::run(&o));
            std::fs::write(&out, serde_json::to_string_pretty(&r).unwrap())
                .map_err(|e| format!("{out}: {e}"))?;
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
