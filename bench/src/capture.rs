//! Writer throughput on a table captured for Postgres Changes (`realtime.enable`: three
//! statement-level triggers with transition tables) that nobody subscribes to, against the same
//! table shape without capture: pgbench one-row INSERTs, variants alternating per round. With no
//! subscription on the table the trigger returns at once, so this is the price every writer of
//! an enabled table pays whether or not anyone listens.
use crate::writers::{connect, settled_run, WritersOpts, WritersResult};

/// (shape, pgbench query protocol): the one-statement shapes of the writer benchmark.
const SHAPES: &[(&str, &str)] = &[
    ("one_statement", "simple"),
    ("one_statement_prepared", "prepared"),
];

/// (variant, script): the baseline first.
const SCRIPTS: &[(&str, &str)] = &[("plain", "wcap_plain.sql"), ("capture", "wcap_capture.sql")];

/// Both tables alike; only bench_cap is captured.
const SETUP_SQL: &str = "drop table if exists bench_cap, bench_nocap;
    create unlogged table bench_nocap(id bigserial primary key, v int);
    create unlogged table bench_cap(id bigserial primary key, v int);
    select realtime.enable('bench_cap');";

pub async fn run(o: &WritersOpts) -> WritersResult {
    let mut res = WritersResult {
        params: serde_json::json!({
            "tool": "pgbench",
            "clients": o.clients,
            "threads": o.threads,
            "seconds_per_run": o.seconds,
            "rounds": o.rounds,
            "statement": "INSERT INTO <table>(v) VALUES (1), one statement per transaction",
            "tables": "UNLOGGED (id bigserial primary key, v int), truncated before each run; bench_cap has realtime.enable (capture triggers), bench_nocap has not",
            "subscribers": 0,
            "aggregation": "best tps of the rounds per script (order alternates per round)",
            "sidecar_connected_and_draining": o.sidecar_running,
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
    if let Err(e) = client.batch_execute(SETUP_SQL).await {
        res.error = Some(format!("setup: {e}"));
        return res;
    }
    for round in 0..o.rounds {
        for &(shape, protocol) in SHAPES {
            let mut scripts = SCRIPTS.to_vec();
            if round % 2 == 1 {
                scripts.reverse();
            }
            for (variant, file) in scripts {
                let truncate = "truncate bench_cap, bench_nocap";
                let run = (shape, variant, round);
                match settled_run(o, &client, truncate, file, protocol, run).await {
                    Ok(run) => res.runs.push(run),
                    Err(e) => {
                        res.error = Some(e);
                        return res;
                    }
                }
            }
        }
    }
    if let Err(e) = client
        .batch_execute("drop table if exists bench_cap, bench_nocap")
        .await
    {
        res.error = Some(format!("teardown: {e}"));
    }
    res
}
