//! Client broadcast round trip. `clients` WebSocket clients in rooms of `room_size` each push
//! `rate_per_client` kind-3 broadcasts per second (the sender's clock in the payload, sends
//! spread evenly over the period) and receive the other members' (`self: false`). Latency runs
//! from just before the push to the receiver parsing the kind-4 frame, both in this process.
//! Subjects are measured in alternating steps, the order flipping every round, after an
//! unrecorded warm-up of each; every subject's clients stay connected (and heartbeat) throughout.
use crate::loadgen::{
    postmaster_pid, Bench, ClientCounters, Producer, Receivers, StepResult, StepSpec, Subject,
};
use crate::stats::{summarize, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::sleep;

pub struct RoundTripOpts {
    pub subjects: Vec<Subject>,
    pub dsn: String,
    pub clients: usize,
    pub room_size: usize,
    pub rate_per_client: f64,
    pub step_secs: f64,
    pub rounds: usize,
    pub warmup_secs: f64,
    /// Load generator threads for all clients of a subject (they send and receive).
    pub threads: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RtStep {
    pub subject: String,
    pub round: usize,
    pub result: StepResult,
}

/// One subject over all its rounds: rates over the summed send time, latency over all samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RtTotals {
    pub steps: usize,
    pub sent: u64,
    pub msgs_per_s: f64,
    pub deliveries_per_s: f64,
    pub expected: u64,
    pub on_time: u64,
    pub late: u64,
    pub lost: u64,
    pub latency: Summary,
    pub disconnects: u64,
    pub send_errors: u64,
    /// How far the slowest sender fell behind its schedule (ms).
    pub max_send_behind_ms: f64,
    /// CPU time per message sent (one push in, room_size - 1 deliveries out), microseconds.
    pub server_us_per_msg: Option<f64>,
    pub postgres_us_per_msg: Option<f64>,
    pub loadgen_us_per_msg: Option<f64>,
    pub counters: ClientCounters,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundTripResult {
    pub params: serde_json::Value,
    pub steps: Vec<RtStep>,
    /// By subject name.
    pub totals: BTreeMap<String, RtTotals>,
    pub error: Option<String>,
}

fn totals(steps: &[&StepResult], samples: Vec<u32>, counters: ClientCounters) -> RtTotals {
    let sum = |f: fn(&StepResult) -> u64| steps.iter().map(|s| f(s)).sum::<u64>();
    let sent = sum(|s| s.produced.sent);
    let secs: f64 = steps.iter().map(|s| s.produced.elapsed_s).sum();
    let expected = sum(|s| s.expected_deliveries);
    let per_msg = |f: fn(&StepResult) -> Option<f64>| {
        let cpu: Option<f64> = steps.iter().map(|s| f(s)).sum();
        cpu.filter(|_| sent > 0).map(|c| c * 1e6 / sent as f64)
    };
    RtTotals {
        steps: steps.len(),
        sent,
        msgs_per_s: sent as f64 / secs,
        deliveries_per_s: expected as f64 / secs,
        expected,
        on_time: sum(|s| s.on_time),
        late: sum(|s| s.late),
        lost: sum(|s| s.lost),
        latency: summarize(samples),
        disconnects: sum(|s| s.disconnects),
        send_errors: sum(|s| s.produced.errors),
        max_send_behind_ms: steps
            .iter()
            .map(|s| s.produced.max_behind_ms)
            .fold(0.0, f64::max),
        server_us_per_msg: per_msg(|s| s.server_cpu_s),
        postgres_us_per_msg: per_msg(|s| s.postgres_cpu_s),
        loadgen_us_per_msg: per_msg(|s| s.loadgen_cpu_s),
        counters,
    }
}

pub async fn run(o: &RoundTripOpts) -> RoundTripResult {
    let rate = o.clients as f64 * o.rate_per_client;
    let mut res = RoundTripResult {
        params: serde_json::json!({
            "clients": o.clients,
            "room_size": o.room_size,
            "rooms": o.clients / o.room_size.max(1),
            "msgs_per_s_per_client": o.rate_per_client,
            "msgs_per_s": rate,
            "deliveries_per_s": rate * o.room_size.saturating_sub(1) as f64,
            "step_seconds": o.step_secs,
            "rounds": o.rounds,
            "warmup_seconds_per_subject": o.warmup_secs,
            "push": "kind-3 binary broadcast push (realtime-js channel.send), JSON payload {\"t\",\"n\",\"s\"}, ~40 bytes; join config broadcast self:false ack:false",
            "latency": "from the sender's wall clock just before the push to the receiver parsing the kind-4 frame (same process, same clock)",
            "order": "subjects in the given order in even rounds, reversed in odd rounds",
            "loadgen_threads_per_subject": o.threads,
        }),
        ..Default::default()
    };
    if o.room_size < 2 || !o.clients.is_multiple_of(o.room_size) {
        res.error = Some("--clients must be a multiple of --room-size (>= 2)".into());
        return res;
    }
    let postmaster = postmaster_pid(&o.dsn).await;
    let topics: Vec<String> = (0..o.clients)
        .map(|i| format!("realtime:rt-{}", i / o.room_size))
        .collect();
    let mut producers: Vec<Producer> = vec![];
    for s in &o.subjects {
        eprintln!("roundtrip {}: connecting {} clients", s.name, o.clients);
        match Producer::websocket(&s.url, topics.clone(), "m", o.threads, true).await {
            Ok(p) => producers.push(p),
            Err(e) => {
                res.error = Some(format!("{}: {e}", s.name));
                break;
            }
        }
    }
    if res.error.is_none() {
        measure(o, rate, postmaster, &producers, &mut res).await;
    }
    for mut p in producers {
        p.close().await;
    }
    res
}

async fn measure(
    o: &RoundTripOpts,
    rate: f64,
    postmaster: Option<u32>,
    producers: &[Producer],
    res: &mut RoundTripResult,
) {
    let bench = |i: usize| Bench {
        receivers: Receivers(&producers[i].receivers),
        deliveries_per_msg: (o.room_size - 1) as u64,
        producer: &producers[i],
        server_pid: o.subjects[i].pid,
        postmaster_pid: postmaster,
    };
    let spec = |label: String, secs: f64| StepSpec {
        label,
        rate,
        count: (rate * secs).round().max(1.0) as u64,
        use_conns: o.clients,
        grace: Duration::from_secs(1),
        backlog_wait: Duration::from_secs(5),
        p99_limit_us: None,
    };
    let mut step_id = 0;
    for (i, s) in o.subjects.iter().enumerate() {
        step_id += 1;
        eprint!("{}:", s.name);
        bench(i)
            .step(step_id, &spec("warm-up".into(), o.warmup_secs))
            .await;
    }
    let mut samples: Vec<Vec<u32>> = vec![vec![]; o.subjects.len()];
    for round in 0..o.rounds {
        let mut order: Vec<usize> = (0..o.subjects.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            step_id += 1;
            let name = &o.subjects[i].name;
            eprint!("{name}:");
            let (r, mut s) = bench(i)
                .step(step_id, &spec(format!("{name} r{round}"), o.step_secs))
                .await;
            samples[i].append(&mut s);
            res.steps.push(RtStep {
                subject: name.clone(),
                round,
                result: r,
            });
            sleep(Duration::from_millis(300)).await;
        }
    }
    for (i, (s, samples)) in o.subjects.iter().zip(samples).enumerate() {
        let steps: Vec<&StepResult> = res
            .steps
            .iter()
            .filter(|x| x.subject == s.name)
            .map(|x| &x.result)
            .collect();
        let t = totals(
            &steps,
            samples,
            Receivers(&producers[i].receivers).counters(),
        );
        eprintln!(
            "roundtrip {}: {:.0} msgs/s, {:.0} deliveries/s, p50 {} us p99 {} us max {} us, lost {}",
            s.name, t.msgs_per_s, t.deliveries_per_s, t.latency.p50_us, t.latency.p99_us, t.latency.max_us, t.lost
        );
        res.totals.insert(s.name.clone(), t);
    }
}
