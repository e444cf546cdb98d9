//! Writer throughput: pgbench runs of the bench/*.sql scripts (plain INSERT vs INSERT +
//! realtime.broadcast vs INSERT + pg_notify, and vs the same statement with a no-op function call
//! in place of the broadcast, which separates what the statement shape costs from what
//! realtime.broadcast costs), in three shapes, alternating the order per round.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio_postgres::NoTls;

#[derive(Clone)]
pub struct WritersOpts {
    pub pgbench: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub db: String,
    pub scripts_dir: PathBuf,
    pub seconds: u64,
    pub rounds: usize,
    pub clients: u32,
    pub threads: u32,
    pub settle: Duration,
    pub sidecar_running: bool,
    /// When given, the sidecar's CPU time during each run is recorded.
    pub sidecar_pid: Option<u32>,
}

/// Shapes and the pgbench query protocol each runs with.
pub const SHAPES: &[(&str, &str)] = &[
    ("one_statement", "simple"),
    ("one_statement_prepared", "prepared"),
    ("transaction", "simple"),
];

/// (shape, variant, script file)
pub const SCRIPTS: &[(&str, &str, &str)] = &[
    ("one_statement", "plain", "w1_plain.sql"),
    ("one_statement", "noop", "w1_noop.sql"),
    ("one_statement", "broadcast", "w1_broadcast.sql"),
    ("one_statement", "notify", "w1_notify.sql"),
    ("one_statement_prepared", "plain", "w1_plain.sql"),
    ("one_statement_prepared", "noop", "w1_noop.sql"),
    ("one_statement_prepared", "broadcast", "w1_broadcast.sql"),
    ("one_statement_prepared", "notify", "w1_notify.sql"),
    ("transaction", "plain", "wtx_plain.sql"),
    ("transaction", "noop", "wtx_noop.sql"),
    ("transaction", "broadcast", "wtx_broadcast.sql"),
    ("transaction", "notify", "wtx_notify.sql"),
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PgbenchRun {
    pub shape: String,
    pub variant: String,
    pub script: String,
    pub round: usize,
    pub tps: Option<f64>,
    pub latency_avg_ms: Option<f64>,
    pub transactions: Option<u64>,
    pub failed: Option<u64>,
    /// Sidecar CPU seconds per second of the run (cores busy), when its pid was given.
    pub sidecar_cores: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WritersResult {
    pub params: serde_json::Value,
    pub runs: Vec<PgbenchRun>,
    pub error: Option<String>,
}

pub fn parse_pgbench(out: &str) -> (Option<f64>, Option<f64>, Option<u64>, Option<u64>) {
    let mut tps = None;
    let mut lat = None;
    let mut tx = None;
    let mut failed = None;
    for l in out.lines() {
        let l = l.trim();
        if let Some(r) = l.strip_prefix("tps = ") {
            // PG 15: "tps = 123.4 (without initial connection time)"; older ones print two lines.
            if tps.is_none()
                || l.contains("without initial connection")
                || l.contains("excluding connections")
            {
                tps = r.split_whitespace().next().and_then(|x| x.parse().ok());
            }
        } else if let Some(r) = l.strip_prefix("latency average = ") {
            lat = r.split_whitespace().next().and_then(|x| x.parse().ok());
        } else if let Some(r) = l.strip_prefix("number of transactions actually processed: ") {
            tx = r
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|x| x.parse().ok());
        } else if let Some(r) = l.strip_prefix("number of failed transactions: ") {
            failed = r.split_whitespace().next().and_then(|x| x.parse().ok());
        }
    }
    (tps, lat, tx, failed)
}

pub async fn run(o: &WritersOpts) -> WritersResult {
    let mut res = WritersResult {
        params: serde_json::json!({
            "tool": "pgbench",
            "clients": o.clients,
            "threads": o.threads,
            "seconds_per_run": o.seconds,
            "rounds": o.rounds,
            "protocol": "simple, except the *_prepared shape (-M prepared)",
            "table": "UNLOGGED bench_t(id bigserial primary key, v int), truncated before each run",
            "aggregation": "best tps of the rounds per script (order alternates per round)",
            "sidecar_connected_and_draining": o.sidecar_running,
            "notify_consumer": "a LISTEN connection on channel w receives every notification",
        }),
        ..Default::default()
    };
    let client = match connect(o).await {
        Ok(client) => client,
        Err(e) => {
            res.error = Some(e);
            return res;
        }
    };
    // The NOTIFY reference gets a consumer too: a LISTENer receives every notification, as the
    // sidecar reads every queued message during the broadcast runs.
    let listener = match tokio_postgres::connect(&dsn(o), NoTls).await {
        Ok((l, mut conn)) => {
            let drain = tokio::spawn(async move {
                let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut msgs).await {}
            });
            if let Err(e) = l.batch_execute("LISTEN w").await {
                res.error = Some(format!("listen: {e}"));
                return res;
            }
            (l, drain)
        }
        Err(e) => {
            res.error = Some(format!("connect listener: {e}"));
            return res;
        }
    };
    if let Err(e) = client
        .batch_execute("drop table if exists bench_t; create unlogged table bench_t(id bigserial primary key, v int);")
        .await
    {
        res.error = Some(format!("setup: {e}"));
        return res;
    }
    for round in 0..o.rounds {
        for &(shape, protocol) in SHAPES {
            let mut scripts: Vec<_> = SCRIPTS.iter().filter(|s| s.0 == shape).collect();
            if round % 2 == 1 {
                scripts.reverse();
            }
            for (shape, variant, file) in scripts {
                let run = (*shape, *variant, round);
                match settled_run(o, &client, "truncate bench_t", file, protocol, run).await {
                    Ok(run) => res.runs.push(run),
                    Err(e) => {
                        res.error = Some(e);
                        return res;
                    }
                }
            }
        }
    }
    let (listener, drain) = listener;
    drop(listener);
    drain.abort();
    res
}

fn log_run(run: &PgbenchRun) {
    eprintln!(
        "  pgbench {:<17} {:<22} round {}: tps {:?} latency {:?} ms, sidecar cores {:?}{}",
        run.script,
        run.shape,
        run.round,
        run.tps,
        run.latency_avg_ms,
        run.sidecar_cores.map(|c| (c * 100.0).round() / 100.0),
        run.error
            .as_ref()
            .map(|e| format!(" ERROR {e}"))
            .unwrap_or_default()
    );
}

/// One pgbench run of `file` (in `o.scripts_dir`) with query protocol `protocol`; the caller
/// fills in shape, variant and round.
/// Empty the tables (`truncate`), let the machine settle, then one pgbench run of `file`,
/// labelled (shape, variant, round) and logged.
pub async fn settled_run(
    o: &WritersOpts,
    client: &tokio_postgres::Client,
    truncate: &str,
    file: &str,
    protocol: &str,
    (shape, variant, round): (&str, &str, usize),
) -> Result<PgbenchRun, String> {
    client
        .batch_execute(truncate)
        .await
        .map_err(|e| format!("truncate: {e}"))?;
    tokio::time::sleep(o.settle).await;
    let mut run = pgbench(o, file, protocol).await;
    run.shape = shape.to_string();
    run.variant = variant.to_string();
    run.round = round;
    log_run(&run);
    Ok(run)
}

fn dsn(o: &WritersOpts) -> String {
    format!(
        "host={} port={} user={} dbname={}",
        o.host, o.port, o.user, o.db
    )
}

/// A database session for setting up and inspecting a writer run.
pub async fn connect(o: &WritersOpts) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(&dsn(o), NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

async fn pgbench(o: &WritersOpts, file: &str, protocol: &str) -> PgbenchRun {
    let path = o.scripts_dir.join(file);
    let mut run = PgbenchRun {
        script: file.to_string(),
        ..Default::default()
    };
    let (pgbench, host, port, user, db) = (
        o.pgbench.clone(),
        o.host.clone(),
        o.port,
        o.user.clone(),
        o.db.clone(),
    );
    let (c, j, t) = (o.clients, o.threads, o.seconds);
    let protocol = protocol.to_string();
    let cpu0 = o.sidecar_pid.and_then(crate::loadgen::proc_cpu_secs);
    let t0 = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(pgbench)
            .args([
                "-n",
                "-M",
                &protocol,
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "-U",
                &user,
            ])
            .args([
                "-c",
                &c.to_string(),
                "-j",
                &j.to_string(),
                "-T",
                &t.to_string(),
            ])
            .arg("-f")
            .arg(path)
            .arg(db)
            .output()
    })
    .await
    .expect("spawn_blocking");
    if let (Some(a), Some(b)) = (cpu0, o.sidecar_pid.and_then(crate::loadgen::proc_cpu_secs)) {
        run.sidecar_cores = Some((b - a) / t0.elapsed().as_secs_f64());
    }
    match out {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let (tps, lat, tx, failed) = parse_pgbench(&stdout);
            run.tps = tps;
            run.latency_avg_ms = lat;
            run.transactions = tx;
            run.failed = failed;
            if !out.status.success() || tps.is_none() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                run.error = Some(format!(
                    "pgbench exited {}: {}",
                    out.status,
                    stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        Err(e) => run.error = Some(format!("cannot run pgbench: {e}")),
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg15_output() {
        let out = "pgbench (15.14 (Debian 15.14-0+deb12u1))\ntransaction type: w1_plain.sql\n\
scaling factor: 1\nquery mode: simple\nnumber of clients: 16\nnumber of threads: 2\n\
maximum number of tries: 1\nduration: 8 s\nnumber of transactions actually processed: 544123\n\
number of failed transactions: 0 (0.000%)\nlatency average = 0.235 ms\n\
initial connection time = 12.345 ms\ntps = 68015.123456 (without initial connection time)\n";
        let (tps, lat, tx, failed) = parse_pgbench(out);
        assert_eq!(tps, Some(68015.123456));
        assert_eq!(lat, Some(0.235));
        assert_eq!(tx, Some(544123));
        assert_eq!(failed, Some(0));
    }
}
