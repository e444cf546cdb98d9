//! Assembles bench/report/report.json and report.md from the raw results of one run.
use crate::changes::{ChangesResult, SubjectResult};
use crate::hardening::{unchecked_before, HardeningResult, HardeningRun, VARIANTS};
use crate::joins::{JoinTotals, JoinsResult};
use crate::loadgen::{FanoutResult, StepResult};
use crate::memory::MemoryResult;
use crate::roundtrip::{RoundTripResult, RtTotals};
use crate::writers::WritersResult;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub baseline_name: String,
    pub ratio: Option<f64>,
    /// Human-readable target.
    pub target: String,
    /// ratio_min | ratio_max | min | max | reference
    pub target_kind: String,
    pub target_value: Option<f64>,
    /// None: no target (reference figure) or not measurable.
    pub pass: Option<bool>,
    pub params: Value,
    pub note: Option<String>,
}

fn ratio(v: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (v, b) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn fig(
    id: &str,
    title: &str,
    unit: &str,
    value: Option<f64>,
    baseline: Option<f64>,
    baseline_name: &str,
    kind: &str,
    target_value: Option<f64>,
    params: Value,
) -> Figure {
    let r = ratio(value, baseline);
    let (target, pass) = match (kind, target_value) {
        ("ratio_min", Some(t)) => (format!(">= {t}x baseline"), r.map(|r| r >= t)),
        ("ratio_max", Some(t)) => (format!("<= {t}x baseline"), r.map(|r| r <= t)),
        ("min", Some(t)) => (format!(">= {t} {unit}"), value.map(|v| v >= t)),
        ("max", Some(t)) => (format!("<= {t} {unit}"), value.map(|v| v <= t)),
        _ => ("reference (no target)".to_string(), None),
    };
    // A missing measurement of a figure that has a target is a miss.
    let pass = if kind == "reference" {
        None
    } else {
        Some(pass.unwrap_or(false))
    };
    Figure {
        id: id.into(),
        title: title.into(),
        unit: unit.into(),
        value,
        baseline,
        baseline_name: baseline_name.into(),
        ratio: r,
        target,
        target_kind: kind.into(),
        target_value,
        pass,
        params,
        note: None,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display()))
}

/// A stage's raw results (`file`.json): missing is a problem unless the stage was skipped
/// (BENCH_ONLY), and so is a result that reports an error.
fn load<T: serde::de::DeserializeOwned>(
    raw: &Path,
    file: &str,
    what: &str,
    skipped: bool,
    problems: &mut Vec<String>,
) -> Option<T> {
    let path = raw.join(format!("{file}.json"));
    if skipped && !path.exists() {
        return None;
    }
    let value: Value = read(&path)
        .map_err(|e| problems.push(format!("{what}: results missing: {e}")))
        .ok()?;
    if let Some(e) = value["error"].as_str() {
        problems.push(format!("{what} failed: {e}"));
    }
    serde_json::from_value(value)
        .map_err(|e| problems.push(format!("{what}: results unreadable: {e}")))
        .ok()
}

fn step_latency(s: &Option<StepResult>) -> (Option<f64>, Option<f64>) {
    match s {
        Some(s) if s.latency.samples > 0 => {
            (Some(ms(s.latency.p50_us)), Some(ms(s.latency.p99_us)))
        }
        _ => (None, None),
    }
}

pub fn build(raw: &Path, out: &Path) -> Result<bool, String> {
    let mut problems: Vec<String> = vec![];
    let meta: Value = read(&raw.join("meta.json")).unwrap_or_else(|e| {
        problems.push(format!("meta: {e}"));
        json!({})
    });
    // A partial run (BENCH_ONLY) reports what it measured; the other stages are not missing.
    let only: Vec<String> = meta["only"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let skipped = |stage: &str| !only.is_empty() && !only.iter().any(|s| s == stage);
    let p = &mut problems;
    let side: Option<FanoutResult> = load(
        raw,
        "fanout-sidecar",
        "fan-out run against the sidecar",
        skipped("fanout"),
        p,
    );
    let relay: Option<FanoutResult> = load(
        raw,
        "fanout-relay",
        "fan-out run against the relay",
        skipped("fanout"),
        p,
    );
    let push_side: Option<FanoutResult> = load(
        raw,
        "fanout-push-sidecar",
        "client broadcast fan-out against the sidecar",
        skipped("push"),
        p,
    );
    let push_relay: Option<FanoutResult> = load(
        raw,
        "fanout-push-relay",
        "client broadcast fan-out against the relay",
        skipped("push"),
        p,
    );
    let roundtrip: Option<RoundTripResult> = load(
        raw,
        "roundtrip",
        "client broadcast round trip",
        skipped("roundtrip"),
        p,
    );
    let memory: Option<MemoryResult> =
        load(raw, "memory", "memory benchmark", skipped("memory"), p);
    let writers: Option<WritersResult> =
        load(raw, "writers", "writer benchmark", skipped("writers"), p);
    let capture: Option<WritersResult> = load(
        raw,
        "capture",
        "capture writer benchmark",
        skipped("capture"),
        p,
    );
    let changes: Option<ChangesResult> = load(
        raw,
        "changes",
        "Postgres Changes benchmark",
        skipped("changes"),
        p,
    );
    let hardening: Option<HardeningResult> = load(
        raw,
        "hardening",
        "hardening writer benchmark (old vs new build)",
        skipped("hardening"),
        p,
    );
    let joins: Option<JoinsResult> = load(raw, "joins", "join benchmark", skipped("joins"), p);
    if let Some(c) = &changes {
        let k = &c.client_counters;
        if k.dups > 0 || k.bad_frames > 0 {
            problems.push(format!(
                "Postgres Changes subscribers got {} duplicate and {} unparsable changes",
                k.dups, k.bad_frames
            ));
        }
    }
    if let Some(j) = &joins {
        if !j.non_member_refused {
            problems.push(format!(
                "a private join by a user who is in no room was not refused ({}): the private joins may not have run the policy",
                j.non_member_reply.as_deref().unwrap_or("no reply recorded")
            ));
        }
    }

    let mut figs: Vec<Figure> = vec![];
    let subs = side
        .as_ref()
        .or(relay.as_ref())
        .map(|r| r.subscribers)
        .unwrap_or(0);

    // 1a. Throughput.
    let best = |r: &Option<FanoutResult>| {
        r.as_ref()
            .and_then(|r| r.best.as_ref())
            .map(|b| b.deliveries_per_s)
    };
    let best_rate = |r: &Option<FanoutResult>| {
        r.as_ref()
            .and_then(|r| r.best.as_ref())
            .map(|b| b.target_rate)
    };
    let mut f = fig(
        "fanout_throughput",
        &format!("SQL broadcast -> 1 topic x {subs} subscribers: max deliveries/s with p99 <= 100 ms, no loss"),
        "deliveries/s",
        best(&side),
        best(&relay),
        "LISTEN/NOTIFY relay",
        "ratio_min",
        Some(0.8),
        json!({
            "subscribers": subs,
            "step_seconds": side.as_ref().and_then(|r| r.throughput_steps.first()).map(|s| s.produced.sent as f64 / s.target_rate),
            "sidecar_best_msgs_per_s": best_rate(&side),
            "relay_best_msgs_per_s": best_rate(&relay),
            "search": "double the producer rate from the start rate until a step fails (a step that missed only the p99 limit, by at most 50%, is re-run once), then bisect to within 10%",
            "step_pass": "all messages sent at >= 97% of the target rate, every delivery within 1 s of the last send, p99 <= 100 ms, no loss, no disconnect",
            "producer_connections": side.as_ref().map(|r| r.producer_connections),
        }),
    );
    f.note = Some(format!(
        "sidecar: {}; relay: {}",
        side.as_ref().map(search_note).unwrap_or_default(),
        relay.as_ref().map(search_note).unwrap_or_default()
    ));
    figs.push(f);

    // 1b. Latency at a fixed rate.
    let lat_params = |r: &Option<FanoutResult>| {
        r.as_ref().and_then(|r| r.latency.as_ref()).map(|l| {
            json!({"msgs_per_s": l.target_rate, "subscribers": l.subscribers,
                   "deliveries_per_s": l.target_rate * l.subscribers as f64, "messages": l.produced.sent,
                   "measured_from": "producer wall clock just before the statement",
                   "measured_to": "kind-4 frame parsed by the subscriber"})
        })
    };
    let (s50, s99) = step_latency(&side.as_ref().and_then(|r| r.latency.clone()));
    let (r50, r99) = step_latency(&relay.as_ref().and_then(|r| r.latency.clone()));
    figs.push(fig(
        "fanout_latency_p50",
        "Send-to-client latency p50 at 10k deliveries/s",
        "ms",
        s50,
        r50,
        "LISTEN/NOTIFY relay",
        "ratio_max",
        Some(1.2),
        lat_params(&side).unwrap_or(Value::Null),
    ));
    figs.push(fig(
        "fanout_latency_p99",
        "Send-to-client latency p99 at 10k deliveries/s",
        "ms",
        s99,
        r99,
        "LISTEN/NOTIFY relay",
        "ratio_max",
        Some(1.2),
        lat_params(&side).unwrap_or(Value::Null),
    ));
    let lost = |r: &Option<FanoutResult>| {
        r.as_ref()
            .and_then(|r| r.latency.as_ref())
            .map(|l| l.lost as f64)
    };
    let mut f = fig(
        "fanout_latency_loss",
        "Deliveries lost in the latency test",
        "deliveries",
        lost(&side),
        lost(&relay),
        "LISTEN/NOTIFY relay",
        "max",
        Some(0.0),
        json!({"wait_for_stragglers_s": 12}),
    );
    f.ratio = None;
    if let Some(l) = side.as_ref().and_then(|r| r.latency.as_ref()) {
        f.note = Some(format!(
            "expected {}, on time {}, late {}, lost {}",
            l.expected_deliveries, l.on_time, l.late, l.lost
        ));
    }
    figs.push(f);

    // 3. Idle wake-up.
    let idle_params = side.as_ref().and_then(|r| r.idle.as_ref()).map(|i| {
        json!({"messages": i.produced.sent, "spacing_ms": (1000.0 / i.target_rate).round(), "subscribers": i.subscribers})
    });
    let (i50, i99) = step_latency(&side.as_ref().and_then(|r| r.idle.clone()));
    let (b50, b99) = step_latency(&relay.as_ref().and_then(|r| r.idle.clone()));
    figs.push(fig(
        "idle_wakeup_p50",
        "Idle wake-up latency p50 (single broadcasts ~50 ms apart)",
        "ms",
        i50,
        b50,
        "LISTEN/NOTIFY relay",
        "max",
        Some(5.0),
        idle_params.clone().unwrap_or(Value::Null),
    ));
    figs.push(fig(
        "idle_wakeup_p99",
        "Idle wake-up latency p99 (single broadcasts ~50 ms apart)",
        "ms",
        i99,
        b99,
        "LISTEN/NOTIFY relay",
        "max",
        Some(10.0),
        idle_params.unwrap_or(Value::Null),
    ));
    if let Some(i) = side.as_ref().and_then(|r| r.idle.as_ref()) {
        if i.lost > 0 {
            problems.push(format!(
                "idle wake-up test lost {} of {} messages",
                i.lost, i.expected_deliveries
            ));
        }
    }

    // 2. Writers.
    if let Some(w) = &writers {
        let best = |shape: &str, variant: &str| best_tps(w, shape, variant);
        for (shape, title) in [
            ("one_statement", "one-statement INSERT"),
            (
                "one_statement_prepared",
                "one-statement INSERT, prepared (-M prepared)",
            ),
            ("transaction", "BEGIN; INSERT; ...; END"),
        ] {
            let plain = best(shape, "plain");
            let noop = best(shape, "noop");
            let p =
                json!({"shape": shape, "pgbench": w.params, "plain_tps": plain, "noop_tps": noop});
            figs.push(fig(
                &format!("writer_{shape}_broadcast"),
                &format!("Writer tps, {title} + realtime.broadcast"),
                "tps",
                best(shape, "broadcast"),
                plain,
                "same shape without broadcast",
                "ratio_min",
                Some(0.8),
                p.clone(),
            ));
            let mut f = fig(
                &format!("writer_{shape}_broadcast_vs_noop"),
                &format!("Writer tps, {title} + realtime.broadcast vs + a no-op function call"),
                "tps",
                best(shape, "broadcast"),
                noop,
                "same statement calling concat_ws() instead",
                "reference",
                None,
                p.clone(),
            );
            f.note =
                Some("what realtime.broadcast itself costs, apart from the statement shape".into());
            figs.push(f);
            let mut f = fig(
                &format!("writer_{shape}_noop"),
                &format!("Writer tps, {title} + a no-op function call (shape floor)"),
                "tps",
                noop,
                plain,
                "same shape without the call",
                "reference",
                None,
                p.clone(),
            );
            f.note = Some("the most any function called in this shape can reach".into());
            figs.push(f);
            let mut f = fig(
                &format!("writer_{shape}_notify"),
                &format!("Writer tps, {title} + pg_notify (reference: the NOTIFY design)"),
                "tps",
                best(shape, "notify"),
                plain,
                "same shape without notify",
                "reference",
                None,
                p,
            );
            f.note =
                Some("why the design matters: a NOTIFY per transaction serializes commits".into());
            figs.push(f);
        }
        for r in &w.runs {
            if let Some(e) = &r.error {
                problems.push(format!("pgbench {} round {}: {e}", r.script, r.round));
            }
        }
    }

    if let Some(w) = &capture {
        capture_figures(&mut figs, w, &mut problems);
    }
    if let Some(h) = &hardening {
        hardening_figures(&mut figs, h, &mut problems);
    }
    if let Some(c) = &changes {
        changes_figures(&mut figs, c);
    }

    // 4. Private-channel joins.
    if let Some(j) = &joins {
        let (private, public) = (j.private.as_ref(), j.public.as_ref());
        let jp = &j.params;
        let p = json!({"connections": jp["connections"], "rooms": jp["rooms"],
                       "step_seconds": jp["step_seconds"], "rounds": jp["rounds"],
                       "private_joins": private.map(|t| t.joins), "public_joins": public.map(|t| t.joins)});
        let base = "public joins (no database work)";
        let conns = &jp["connections"];
        let mut f = fig(
            "joins_private_per_s",
            &format!("Private-channel joins/s, RLS membership policy evaluated per join ({conns} connections, one join in flight each)"),
            "joins/s",
            private.map(|t| t.joins_per_s),
            public.map(|t| t.joins_per_s),
            base,
            "min",
            Some(2000.0),
            p.clone(),
        );
        // A rate with failed joins in it is not a join rate.
        if let Some(n) = private.map(|t| t.failures).filter(|&n| n > 0) {
            f.pass = Some(false);
            f.note = Some(format!("not valid: {n} private joins failed"));
        }
        figs.push(f);
        let lat = |t: Option<&JoinTotals>| match t {
            Some(t) if t.latency.samples > 0 => {
                (Some(ms(t.latency.p50_us)), Some(ms(t.latency.p99_us)))
            }
            _ => (None, None),
        };
        let ((v50, v99), (b50, b99)) = (lat(private), lat(public));
        for (q, value, baseline) in [("p50", v50, b50), ("p99", v99, b99)] {
            let mut f = fig(
                &format!("joins_private_latency_{q}"),
                &format!("Private-channel join latency {q} (phx_join sent -> ok reply parsed), at the rate above"),
                "ms",
                value,
                baseline,
                base,
                "reference",
                None,
                p.clone(),
            );
            f.note = Some(format!(
                "closed loop: {conns} joins in flight, so latency ~ {conns} / joins per second"
            ));
            figs.push(f);
        }
        let mut f = fig(
            "joins_failures",
            "Private joins refused, unanswered or lost",
            "joins",
            private.map(|t| t.failures as f64),
            public.map(|t| t.failures as f64),
            base,
            "max",
            Some(0.0),
            p.clone(),
        );
        f.ratio = None;
        f.note = j.steps.iter().rev().find_map(|s| s.last_failure.clone());
        figs.push(f);
        let cpu =
            |t: Option<&JoinTotals>| t.map(|t| (t.sidecar_us_per_join, t.postgres_us_per_join));
        let ((vs, vp), (bs, bp)) = (
            cpu(private).unwrap_or_default(),
            cpu(public).unwrap_or_default(),
        );
        for (id, name, value, baseline) in [
            ("sidecar", "Sidecar", vs, bs),
            ("postgres", "Postgres (whole cluster)", vp, bp),
        ] {
            figs.push(fig(
                &format!("joins_private_{id}_cpu"),
                &format!("{name} CPU per private join"),
                "us",
                value,
                baseline,
                base,
                "reference",
                None,
                p.clone(),
            ));
        }
    }

    // 5. Client broadcast round trip in rooms.
    if let Some(rt) = &roundtrip {
        let (side, relay) = (rt.totals.get("sidecar"), rt.totals.get("relay"));
        let p = &rt.params;
        let p = json!({"clients": p["clients"], "room_size": p["room_size"], "msgs_per_s": p["msgs_per_s"],
                       "deliveries_per_s": p["deliveries_per_s"], "step_seconds": p["step_seconds"], "rounds": p["rounds"],
                       "sidecar_messages": side.map(|t| t.sent), "relay_messages": relay.map(|t| t.sent)});
        let base = "bench relay (in-process room fan-out)";
        let rate = |k: &str| p[k].as_f64().unwrap_or(0.0);
        let title = format!(
            "Client broadcast round trip ({} clients in rooms of {}, {:.0} msgs/s in, {:.0} deliveries/s out)",
            p["clients"],
            p["room_size"],
            rate("msgs_per_s"),
            rate("deliveries_per_s")
        );
        let lat = |t: Option<&RtTotals>, f: fn(&RtTotals) -> u64| {
            t.filter(|t| t.latency.samples > 0).map(|t| ms(f(t)))
        };
        let mut f = fig(
            "client_roundtrip_p99",
            &format!("{title}: p99"),
            "ms",
            lat(side, |t| t.latency.p99_us),
            lat(relay, |t| t.latency.p99_us),
            base,
            "max",
            Some(10.0),
            p.clone(),
        );
        f.note = Some("Supabase Realtime publishes p99 213 ms for its broadcast benchmark".into());
        figs.push(f);
        for (q, get) in [
            (
                "p50",
                (|t: &RtTotals| t.latency.p50_us) as fn(&RtTotals) -> u64,
            ),
            ("max", |t: &RtTotals| t.latency.max_us),
        ] {
            figs.push(fig(
                &format!("client_roundtrip_{q}"),
                &format!("{title}: {q}"),
                "ms",
                lat(side, get),
                lat(relay, get),
                base,
                "reference",
                None,
                p.clone(),
            ));
        }
        let mut f = fig(
            "client_roundtrip_lost",
            &format!("{title}: deliveries lost"),
            "deliveries",
            side.map(|t| t.lost as f64),
            relay.map(|t| t.lost as f64),
            base,
            "max",
            Some(0.0),
            p.clone(),
        );
        f.ratio = None;
        f.note = side.map(|t| {
            format!(
                "expected {}, on time {}, late {}, lost {}, receiver disconnects {}",
                t.expected, t.on_time, t.late, t.lost, t.disconnects
            )
        });
        figs.push(f);
        let mut f = fig(
            "client_roundtrip_sidecar_cpu",
            &format!(
                "Sidecar CPU per client broadcast in the round trip (1 push in, {} deliveries out)",
                p["room_size"].as_u64().unwrap_or(1).saturating_sub(1)
            ),
            "us",
            side.and_then(|t| t.server_us_per_msg),
            relay.and_then(|t| t.server_us_per_msg),
            base,
            "reference",
            None,
            p.clone(),
        );
        f.note = side.and_then(|t| t.postgres_us_per_msg).map(|c| {
            format!("plus {c:.0} us of Postgres CPU per message: the sidecar hands every push to realtime._publish for other sidecars (relay: none)")
        });
        figs.push(f);
    }

    // 6. Client broadcast fan-out.
    let push_best = |r: &Option<FanoutResult>| r.as_ref().and_then(|r| r.best.clone());
    let (ps, pr) = (push_best(&push_side), push_best(&push_relay));
    let push_subs = push_side
        .as_ref()
        .or(push_relay.as_ref())
        .map_or(0, |r| r.subscribers);
    let mut f = fig(
        "client_fanout_throughput",
        &format!("Client broadcast -> 1 room x {push_subs} subscribers: max deliveries/s with p99 <= 100 ms, no loss"),
        "deliveries/s",
        ps.as_ref().map(|b| b.deliveries_per_s),
        pr.as_ref().map(|b| b.deliveries_per_s),
        "bench relay (in-process room fan-out)",
        "reference",
        None,
        json!({
            "subscribers": push_subs,
            "sender_clients": push_side.as_ref().map(|r| r.producer_connections),
            "sidecar_best_msgs_per_s": ps.as_ref().map(|b| b.target_rate),
            "relay_best_msgs_per_s": pr.as_ref().map(|b| b.target_rate),
            "search": "as the SQL fan-out search, the producer being WebSocket clients pushing kind-3 broadcasts into the room",
        }),
    );
    f.note = Some(format!(
        "no target set; sidecar: {}; relay: {}",
        push_side.as_ref().map(search_note).unwrap_or_default(),
        push_relay.as_ref().map(search_note).unwrap_or_default()
    ));
    figs.push(f);

    // 7. Memory per idle connection.
    if let Some(mem) = &memory {
        let p = json!({"connections": mem.params["connections"], "channels": mem.params["channels"],
                       "idle_seconds": mem.params["idle_seconds"], "measure": mem.params["measure"]});
        let mut f = fig(
            "memory_per_connection",
            &format!(
                "Server RSS per idle connection joined to a channel, {} connections",
                mem.params["connections"]
            ),
            "kB",
            mem.kb_per_connection("sidecar"),
            mem.kb_per_connection("relay"),
            "bench relay (tokio-tungstenite, 4 KiB read buffer)",
            "max",
            Some(10.0),
            p,
        );
        f.note = Some(
            "each process's first measurement; kB = 1024 bytes; a minimal tokio-tungstenite relay is published at ~10.2 KB"
                .into(),
        );
        figs.push(f);
    }

    if !only.is_empty() {
        figs.retain(|f| f.value.is_some());
    }
    let run_ok = problems.is_empty();
    let missed: Vec<&Figure> = figs.iter().filter(|f| f.pass == Some(false)).collect();
    let report = json!({
        "benchmark": "pg_realtime",
        "meta": meta,
        "run_completed": run_ok,
        "problems": problems,
        "targets_met": missed.is_empty(),
        "targets_missed": missed.iter().map(|f| f.id.clone()).collect::<Vec<_>>(),
        "figures": figs,
        "details": {"fanout": {"sidecar": side, "relay": relay}, "writers": writers, "capture": capture,
                    "hardening": hardening, "changes": changes, "joins": joins,
                    "client_roundtrip": roundtrip, "client_fanout": {"sidecar": push_side, "relay": push_relay},
                    "memory": memory},
    });
    let raw = Raw {
        side,
        relay,
        push_side,
        push_relay,
        writers,
        capture,
        hardening,
        changes,
        joins,
        roundtrip,
        memory,
    };
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.md"), markdown(&report, &figs, &raw))
        .map_err(|e| e.to_string())?;
    Ok(run_ok)
}

/// A search step's pass/fail with its reasons; "-" for fixed-rate steps.
fn step_verdict(s: &StepResult) -> String {
    match (s.label.starts_with("tp@"), s.pass) {
        (false, _) => "-".into(),
        (true, true) => "yes".into(),
        (true, false) => format!("no: {}", s.fail_reasons.join("; ")),
    }
}

fn search_note(r: &FanoutResult) -> String {
    if r.search_note.is_empty() {
        "search converged".into()
    } else {
        r.search_note.clone()
    }
}

/// Everything one run measured, as read from its raw results.
struct Raw {
    side: Option<FanoutResult>,
    relay: Option<FanoutResult>,
    push_side: Option<FanoutResult>,
    push_relay: Option<FanoutResult>,
    writers: Option<WritersResult>,
    capture: Option<WritersResult>,
    hardening: Option<HardeningResult>,
    changes: Option<ChangesResult>,
    joins: Option<JoinsResult>,
    roundtrip: Option<RoundTripResult>,
    memory: Option<MemoryResult>,
}

fn num(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if unit == "ms" => format!("{v:.2} ms"),
        Some(v) if v >= 1000.0 || v.fract() == 0.0 => format!("{:.0}", v),
        Some(v) => format!("{v:.1}"),
    }
}

fn markdown(report: &Value, figs: &[Figure], raw: &Raw) -> String {
    let mut m = String::new();
    m.push_str("# pg_realtime benchmark\n\n");
    let meta = &report["meta"];
    m.push_str(&format!(
        "Run {} on {} ({} cores, load average at start {}), git {}. Everything (Postgres, sidecar or relay, load generator) shares this machine; figures are ratios to baselines measured in the same run.\n\n",
        meta["started_at"].as_str().unwrap_or("?"),
        meta["host"].as_str().unwrap_or("?"),
        meta["nproc"].as_str().unwrap_or("?"),
        meta["loadavg_start"].as_str().unwrap_or("?"),
        meta["git_rev"].as_str().unwrap_or("?"),
    ));
    if let Some(only) = meta["only"].as_str().filter(|o| !o.trim().is_empty()) {
        m.push_str(&format!(
            "Partial run (BENCH_ONLY): stages {only} only.\n\n"
        ));
    }
    if report["run_completed"] != true {
        m.push_str("**The run did not complete cleanly:**\n\n");
        for p in report["problems"].as_array().into_iter().flatten() {
            m.push_str(&format!("- {}\n", p.as_str().unwrap_or("")));
        }
        m.push('\n');
    }
    m.push_str("| Figure | pg_realtime | Baseline | Ratio | Target | Result |\n|---|---|---|---|---|---|\n");
    for f in figs {
        let res = match f.pass {
            Some(true) => "pass".to_string(),
            Some(false) => "**MISSED**".to_string(),
            None => "reference".to_string(),
        };
        m.push_str(&format!(
            "| {} | {} {} | {} ({}) | {} | {} | {} |\n",
            f.title,
            num(f.value, &f.unit),
            if f.unit == "ms" { "" } else { &f.unit },
            num(f.baseline, &f.unit),
            f.baseline_name,
            f.ratio
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into()),
            f.target,
            res
        ));
    }
    let missed: Vec<&Figure> = figs.iter().filter(|f| f.pass == Some(false)).collect();
    m.push('\n');
    if missed.is_empty() {
        m.push_str("All targets met in this run.\n\n");
    } else {
        m.push_str("**Targets missed in this run:**\n\n");
        for f in &missed {
            let got = match f.ratio {
                Some(r) if f.target_kind.starts_with("ratio") => format!("{r:.2}x the baseline"),
                _ => format!(
                    "{} {}",
                    num(f.value, &f.unit),
                    if f.unit == "ms" { "" } else { &f.unit }
                ),
            };
            m.push_str(&format!(
                "- `{}`: {} — target {}\n",
                f.id,
                got.trim_end(),
                f.target
            ));
        }
        m.push('\n');
    }
    m.push_str("## Fan-out details (SQL broadcast)\n\n");
    for (name, r) in [
        ("pg_realtime sidecar", &raw.side),
        ("LISTEN relay (baseline)", &raw.relay),
    ] {
        if let Some(r) = r {
            fanout_details(&mut m, name, r);
        }
    }
    if let Some(rt) = &raw.roundtrip {
        roundtrip_details(&mut m, rt);
    }
    m.push_str("## Client broadcast fan-out details\n\nWebSocket clients joined to the room push kind-3 broadcasts (`self: false`), paced like the SQL producer (message i at start + i/rate, round robin over the senders); the subscribers, joined to the same room, parse the kind-4 frames.\n\n");
    for (name, r) in [
        ("pg_realtime sidecar", &raw.push_side),
        ("bench relay (baseline)", &raw.push_relay),
    ] {
        if let Some(r) = r {
            fanout_details(&mut m, name, r);
        }
    }
    if let Some(mem) = &raw.memory {
        memory_details(&mut m, mem);
    }
    if let Some(w) = &raw.writers {
        m.push_str(&format!(
            "## Writer details\n\npgbench -c {} -j {} -T {}, simple protocol (`-M prepared` for the prepared shape), {} rounds (best tps per script), UNLOGGED `bench_t`; the pg_realtime sidecar was connected and draining the queue during every run (no subscribers on topic `w`), and a LISTEN connection received every NOTIFY of the pg_notify runs.\n\n",
            w.params["clients"], w.params["threads"], w.params["seconds_per_run"], w.params["rounds"]
        ));
        pgbench_runs(&mut m, w);
    }
    if let Some(w) = &raw.capture {
        m.push_str(&format!(
            "## Capture writer details\n\npgbench -c {} -j {} -T {}, one-row `INSERT INTO <table>(v) VALUES (1)` per transaction, {} rounds (best tps per script, order alternating per round): `bench_cap` has `realtime.enable` (three statement-level AFTER triggers with transition tables), `bench_nocap` (the baseline) has the same shape without them; both UNLOGGED, truncated before each run, nobody subscribed (the trigger returns after its subscribed-tables check). The sidecar was connected and draining the queue.\n\n",
            w.params["clients"], w.params["threads"], w.params["seconds_per_run"], w.params["rounds"]
        ));
        pgbench_runs(&mut m, w);
    }
    if let Some(h) = &raw.hardening {
        hardening_details(&mut m, h);
    }
    if let Some(c) = &raw.changes {
        changes_details(&mut m, c);
    }
    if let Some(j) = &raw.joins {
        let p = &j.params;
        m.push_str(&format!(
            "## Join details\n\n{} connections, each with its own user JWT (role `authenticated`, `sub` = `user-<i>`), join room after room of {} (`phx_join`, wait for the reply, `phx_leave` not awaited): one join in flight per connection. Private joins run `realtime._authorize` on the sidecar's pool, with this policy on `realtime.messages` and every user a member of every room ({} rows in `bench_members`):\n\n```sql\n{}\n```\n\nPublic joins (the baseline) send the same frames with `private: false`. {} s per step, {} rounds, order alternating per round, after an unrecorded warm-up of each. Latency: from sending `phx_join` to parsing its reply (load generator's clock). CPU in cores (CPU seconds per second of the step); Postgres counts the whole cluster.\n\n| Step | round | joins/s | p50 ms | p99 ms | max ms | failures | sidecar cores | Postgres cores | load generator cores |\n|---|---|---|---|---|---|---|---|---|---|\n",
            p["connections"], p["rooms"], p["membership_rows"],
            p["policy"].as_str().unwrap_or("?"), p["step_seconds"], p["rounds"]
        ));
        let cores = |c: Option<f64>, s: f64| c.map(|c| format!("{:.2}", c / s)).unwrap_or_default();
        for s in &j.steps {
            m.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                s.subject,
                s.round,
                s.joins_per_s,
                ms(s.latency.p50_us),
                ms(s.latency.p99_us),
                ms(s.latency.max_us),
                s.failures,
                cores(s.sidecar_cpu_s, s.elapsed_s),
                cores(s.postgres_cpu_s, s.elapsed_s),
                cores(s.loadgen_cpu_s, s.elapsed_s),
            ));
        }
        m.push_str(&format!(
            "\nA private join by a user in no room: {} ({}). Sidecar database sessions after the run: {}.\n\n",
            if j.non_member_refused { "refused, as it must be" } else { "**not refused**" },
            j.non_member_reply.as_deref().unwrap_or("-"),
            j.sidecar_db_sessions
        ));
    }
    m.push_str("Fan-out latency: from the producer's wall clock just before the producing statement (or push) to the kind-4 frame being parsed by the subscriber (same machine, same clock). Timings are never pass/fail tests; a missed target is reported here, not failed.\n");
    m
}

fn fanout_details(m: &mut String, name: &str, r: &FanoutResult) {
    m.push_str(&format!(
        "**{name}** ({} subscribers, producer `{:?}`, {} producer connections)",
        r.subscribers, r.mode, r.producer_connections
    ));
    if let Some(kb) = r.server_rss_kb_after_connect {
        m.push_str(&format!(
            ", server RSS with all subscribers joined {:.1} MB",
            kb as f64 / 1024.0
        ));
    }
    if let Some(e) = &r.error {
        m.push_str(&format!(" — **error: {e}**"));
    }
    m.push_str("\n\n| Step | msgs/s (target) | deliveries/s | p50 ms | p99 ms | max ms | late | lost | server CPU us/delivery | pass |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for s in r
        .idle
        .iter()
        .chain(r.latency.iter())
        .chain(r.throughput_steps.iter())
    {
        m.push_str(&format!(
            "| {} | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            s.label,
            s.achieved_rate,
            s.target_rate,
            s.deliveries_per_s,
            ms(s.latency.p50_us),
            ms(s.latency.p99_us),
            ms(s.latency.max_us),
            s.late,
            s.lost,
            s.server_cpu_us_per_delivery
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            step_verdict(s)
        ));
    }
    if !r.search_note.is_empty() {
        m.push_str(&format!("\nThroughput search: {}.\n", r.search_note));
    }
    let c = &r.client_counters;
    if c.disconnects > 0 || c.dups > 0 || c.bad_frames > 0 || c.other_text > 0 {
        m.push_str(&format!(
            "\nClient anomalies: {} disconnects (last error {:?}), {} duplicates, {} unparsable frames, {} unexpected text frames (last {:?}).\n",
            c.disconnects, c.last_error, c.dups, c.bad_frames, c.other_text, c.last_other_text
        ));
    }
    m.push('\n');
}

fn best_tps(w: &WritersResult, shape: &str, variant: &str) -> Option<f64> {
    w.runs
        .iter()
        .filter(|r| r.shape == shape && r.variant == variant)
        .filter_map(|r| r.tps)
        .reduce(f64::max)
}

fn pgbench_runs(m: &mut String, w: &WritersResult) {
    m.push_str("| Script | shape | round | tps | latency avg ms | sidecar CPU (cores) |\n|---|---|---|---|---|---|\n");
    for r in &w.runs {
        m.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.script,
            r.shape,
            r.round,
            r.tps
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| "error".into()),
            r.latency_avg_ms
                .map(|t| format!("{t:.3}"))
                .unwrap_or_default(),
            r.sidecar_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default()
        ));
    }
    m.push('\n');
}

fn capture_figures(figs: &mut Vec<Figure>, w: &WritersResult, problems: &mut Vec<String>) {
    for (shape, title, kind, target) in [
        ("one_statement", "one-row INSERT", "ratio_min", Some(0.9)),
        (
            "one_statement_prepared",
            "one-row INSERT, prepared (-M prepared)",
            "reference",
            None,
        ),
    ] {
        let plain = best_tps(w, shape, "plain");
        let mut f = fig(
            &format!("writer_capture_{shape}"),
            &format!("Writer tps, {title} into a table with realtime.enable, 0 subscribers"),
            "tps",
            best_tps(w, shape, "capture"),
            plain,
            "same table shape without capture",
            kind,
            target,
            json!({"shape": shape, "pgbench": w.params, "plain_tps": plain}),
        );
        if kind == "reference" {
            f.note =
                Some("a cheaper statement, so the trigger's fixed cost is a larger share".into());
        }
        figs.push(f);
    }
    for r in &w.runs {
        if let Some(e) = &r.error {
            problems.push(format!(
                "pgbench {} ({}) round {}: {e}",
                r.script, r.shape, r.round
            ));
        }
    }
}

/// Postgres CPU per delivery of a step, in microseconds.
fn pg_us_per_delivery(s: &StepResult) -> Option<f64> {
    s.postgres_cpu_s
        .filter(|_| s.expected_deliveries > 0)
        .map(|c| c * 1e6 / s.expected_deliveries as f64)
}

fn changes_figures(figs: &mut Vec<Figure>, c: &ChangesResult) {
    let subject = |n: &str| c.subject(n);
    let best = |n: &str| subject(n).and_then(|s| s.best.as_ref());
    let fixed = |n: &str| subject(n).and_then(|s| s.fixed.as_ref());
    let note = |n: &str| {
        subject(n)
            .map(|s| {
                format!(
                    "{n}: {}",
                    if s.search_note.is_empty() {
                        "search converged"
                    } else {
                        &s.search_note
                    }
                )
            })
            .unwrap_or_default()
    };
    let (n, small) = (&c.params["subscribers"], &c.params["small_subscribers"]);
    let params = |names: &[&str]| {
        json!({"subscribers": n, "small_subscribers": small, "prefill_rows_per_table": c.params["prefill_rows_per_table"],
               "producer_connections": c.params["producer_connections"], "step_seconds": c.params["step_seconds"],
               "policies": names.iter().map(|s| (s.to_string(), subject(s).and_then(|x| x.policy.clone()).into())).collect::<serde_json::Map<_, _>>(),
               "best_inserts_per_s": names.iter().map(|s| (s.to_string(), best(s).map(|b| b.target_rate).into())).collect::<serde_json::Map<_, _>>()})
    };
    let all = ["rls", "open"];
    let mut f = fig(
        "changes_rls_deliveries",
        &format!("Postgres Changes to {n} subscribers, one user each, no filter, RLS policy per user: max deliveries/s with p99 <= 100 ms, no loss"),
        "deliveries/s",
        best("rls").map(|b| b.deliveries_per_s),
        best("open").map(|b| b.deliveries_per_s),
        "same subscribers, twin table with RLS disabled",
        "min",
        Some(50000.0),
        params(&all),
    );
    f.note = Some(format!(
        "reference: Supabase's estimator tops out at ~3-4k RLS-checked deliveries/s; {}; {}",
        note("rls"),
        note("open")
    ));
    figs.push(f);
    let rate = fixed("rls").map_or(0.0, |s| s.target_rate);
    let at = format!("at the same load, {rate:.0} inserts/s x {n} deliveries each");
    let statement = |s: Option<&StepResult>, f: fn(&StepResult) -> u64| {
        s.filter(|s| s.produced.statement.samples > 0)
            .map(|s| ms(f(s)))
    };
    let mut f = fig(
        "changes_rls_writer_p99",
        &format!("Writer INSERT latency p99 {at}"),
        "ms",
        statement(fixed("rls"), |s| s.produced.statement.p99_us),
        statement(fixed("open"), |s| s.produced.statement.p99_us),
        "same load, RLS disabled",
        "reference",
        None,
        params(&all),
    );
    f.note = Some("autocommit INSERT timed by the producer: the routing, one RLS query per subscriber's claims, runs in it before the commit".into());
    figs.push(f);
    figs.push(fig(
        "changes_rls_latency_p99",
        &format!("Insert-to-client latency p99 {at}"),
        "ms",
        fixed("rls").map(|s| ms(s.latency.p99_us)),
        fixed("open").map(|s| ms(s.latency.p99_us)),
        "same load, RLS disabled",
        "reference",
        None,
        params(&all),
    ));
    figs.push(fig(
        "changes_rls_postgres_cpu",
        &format!("Postgres CPU per delivery {at}"),
        "us",
        fixed("rls").and_then(pg_us_per_delivery),
        fixed("open").and_then(pg_us_per_delivery),
        "same load, RLS disabled",
        "reference",
        None,
        params(&all),
    ));

    let owned = ["rls_owned", "open_owned", "rls_owned_small"];
    let mut f = fig(
        "changes_selective_rate",
        &format!("Postgres Changes, owner-only policy, {n} subscribers each filtered owner=eq.<own id>, random owners (1 delivery per change): max changes/s with p99 <= 100 ms, no loss"),
        "changes/s",
        best("rls_owned").map(|b| b.deliveries_per_s),
        best("open_owned").map(|b| b.deliveries_per_s),
        "same subscribers and filters, twin table with RLS disabled",
        "reference",
        None,
        params(&owned),
    );
    f.note = Some(format!(
        "no target set; {}; {}",
        note("rls_owned"),
        note("open_owned")
    ));
    figs.push(f);
    let ratio_if_per_subscription = small.as_f64().zip(n.as_f64()).map_or(0.0, |(s, n)| s / n);
    let mut f = fig(
        "changes_selective_scaling",
        &format!("Same, {n} subscribers vs {small}: max changes/s"),
        "changes/s",
        best("rls_owned").map(|b| b.deliveries_per_s),
        best("rls_owned_small").map(|b| b.deliveries_per_s),
        &format!("{small} subscribers (users 0..{small}), same policy and filters"),
        "reference",
        None,
        params(&owned),
    );
    f.note = Some(format!(
        "a change costs work only for the subscriptions whose indexed eq filter matches it: if it cost work per subscription, this ratio would be ~{ratio_if_per_subscription:.2}x; {}",
        note("rls_owned_small")
    ));
    figs.push(f);
    let owned_rate = fixed("rls_owned").map_or(0.0, |s| s.target_rate);
    figs.push(fig(
        "changes_selective_writer_p50",
        &format!(
            "Writer INSERT latency p50 at {owned_rate:.0} changes/s, {n} subscribers vs {small}"
        ),
        "ms",
        statement(fixed("rls_owned"), |s| s.produced.statement.p50_us),
        statement(fixed("rls_owned_small"), |s| s.produced.statement.p50_us),
        &format!("{small} subscribers"),
        "reference",
        None,
        params(&owned),
    ));

    let mut f = fig(
        "changes_leaks",
        "Changes delivered to a subscriber its policy or filter excludes (another user's row; any row to a non-member)",
        "deliveries",
        Some((c.foreign_deliveries + c.outsider_deliveries) as f64),
        None,
        "none",
        "max",
        Some(0.0),
        json!({"foreign_owner": c.foreign_deliveries, "to_non_member": c.outsider_deliveries}),
    );
    f.note = c.last_leak.clone();
    figs.push(f);
    let steps = || {
        c.subjects
            .iter()
            .flat_map(|s| s.steps.iter().chain(s.fixed.iter()))
    };
    let lost: u64 = steps().map(|s| s.lost).sum();
    let mut f = fig(
        "changes_lost",
        "Changes never delivered (all steps, overloaded ones included, after up to 20 s for stragglers)",
        "deliveries",
        Some(lost as f64),
        None,
        "none",
        "reference",
        None,
        json!({"expected": steps().map(|s| s.expected_deliveries).sum::<u64>(), "receiver_disconnects": c.client_counters.disconnects,
               "duplicates": c.client_counters.dups}),
    );
    f.note = Some(format!(
        "{} receiver disconnects, {} duplicates; a delivery lost without a disconnect is a product bug",
        c.client_counters.disconnects, c.client_counters.dups
    ));
    figs.push(f);
}

fn changes_details(m: &mut String, c: &ChangesResult) {
    let p = &c.params;
    m.push_str(&format!(
        "## Postgres Changes details\n\n{} WebSocket clients, one per user (JWT role `authenticated`, `sub` = `user-<i>`), each joined one channel `realtime:db` with a `postgres_changes` binding (event `*`) on every table below ({} of them also on the `rls_owned_small` table); plus one outsider (`user-outsider`, no membership) bound to the `rls` table. All subscribed (`Subscribed to PostgreSQL`) in {:.1} s. Tables: {}, {} analyzed rows each before the run. {} producer connections; {}. Latency: {}. INSERT: {}. Search: {}. Fixed step: {}. CPU per delivery; Postgres counts the whole cluster.\n\n",
        p["subscribers"], p["small_subscribers"], c.subscribe_s,
        p["tables"].as_str().unwrap_or("?"), p["prefill_rows_per_table"], p["producer_connections"],
        p["insert"].as_str().unwrap_or("?"), p["latency"].as_str().unwrap_or("?"),
        p["statement"].as_str().unwrap_or("?"), p["search"].as_str().unwrap_or("?"),
        p["fixed_step"].as_str().unwrap_or("?"),
    ));
    for s in &c.subjects {
        subject_details(m, s);
    }
    let k = &c.client_counters;
    m.push_str(&format!(
        "Leak checks: {} records with another user's `owner`, {} changes to the non-member. Clients: {} connects, {} disconnects (last error {:?}), {} duplicates, {} unexpected text frames (last {:?}).\n\n",
        c.foreign_deliveries, c.outsider_deliveries, k.connects, k.disconnects, k.last_error, k.dups, k.other_text, k.last_other_text
    ));
}

fn subject_details(m: &mut String, s: &SubjectResult) {
    m.push_str(&format!(
        "**{}** (`{}`, {} subscribers{}, deliveries per insert: {}): policy {}\n\n| Step | inserts/s (target) | deliveries/s | p50 ms | p99 ms | max ms | INSERT p50 ms | INSERT p99 ms | lost | Postgres CPU us/delivery | sidecar CPU us/delivery | pass |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        s.subject,
        s.table,
        s.subscribers,
        s.filter.as_ref().map(|f| format!(", filter `{f}`")).unwrap_or_default(),
        s.deliveries_per_change,
        s.policy.as_ref().map(|p| format!("`{p}`")).unwrap_or_else(|| "none (RLS disabled)".into()),
    ));
    let us = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    for r in s.steps.iter().chain(s.fixed.iter()) {
        m.push_str(&format!(
            "| {} | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            r.label,
            r.achieved_rate,
            r.target_rate,
            r.deliveries_per_s,
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.max_us),
            ms(r.produced.statement.p50_us),
            ms(r.produced.statement.p99_us),
            r.lost,
            us(pg_us_per_delivery(r)),
            us(r.server_cpu_us_per_delivery),
            step_verdict(r)
        ));
    }
    if !s.search_note.is_empty() {
        m.push_str(&format!("\nSearch: {}.\n", s.search_note));
    }
    m.push('\n');
}

fn roundtrip_details(m: &mut String, rt: &RoundTripResult) {
    let p = &rt.params;
    let rate = |k: &str| p[k].as_f64().unwrap_or(0.0);
    m.push_str(&format!(
        "## Client broadcast round trip details\n\n{} WebSocket clients in rooms of {}, each pushing {} kind-3 broadcasts/s (`self: false`) and receiving the others': {:.0} msgs/s in, {:.0} deliveries/s out. Latency: {}. {} s per step, {} rounds, subjects alternating (order flipped every round) after an unrecorded {} s warm-up of each; both subjects' clients stay connected throughout. CPU per message sent; Postgres counts the whole cluster (the sidecar writes every push to `realtime._publish`).\n\n| Step | msgs/s (target) | deliveries/s | p50 ms | p99 ms | max ms | late | lost | server CPU us/msg | Postgres CPU us/msg | load generator CPU us/msg |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        p["clients"], p["room_size"], p["msgs_per_s_per_client"], rate("msgs_per_s"), rate("deliveries_per_s"),
        p["latency"].as_str().unwrap_or("?"), p["step_seconds"], p["rounds"], p["warmup_seconds_per_subject"]
    ));
    let per_msg = |c: Option<f64>, s: &StepResult| {
        c.filter(|_| s.produced.sent > 0)
            .map(|c| format!("{:.0}", c * 1e6 / s.produced.sent as f64))
            .unwrap_or_else(|| "-".into())
    };
    for st in &rt.steps {
        let s = &st.result;
        m.push_str(&format!(
            "| {} | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |\n",
            s.label,
            s.achieved_rate,
            s.target_rate,
            s.deliveries_per_s,
            ms(s.latency.p50_us),
            ms(s.latency.p99_us),
            ms(s.latency.max_us),
            s.late,
            s.lost,
            per_msg(s.server_cpu_s, s),
            per_msg(s.postgres_cpu_s, s),
            per_msg(s.loadgen_cpu_s, s),
        ));
    }
    m.push('\n');
    for (name, t) in &rt.totals {
        let c = &t.counters;
        m.push_str(&format!(
            "- **{name}**: {} messages, p50 / p99 / max {:.2} / {:.2} / {:.2} ms over {} deliveries, {} late, {} lost, {} send errors, senders at most {:.1} ms behind schedule; {} receiver disconnects, {} duplicates, {} unparsable frames, {} unexpected text frames{}.\n",
            t.sent,
            ms(t.latency.p50_us),
            ms(t.latency.p99_us),
            ms(t.latency.max_us),
            t.latency.samples,
            t.late,
            t.lost,
            t.send_errors,
            t.max_send_behind_ms,
            c.disconnects,
            c.dups,
            c.bad_frames,
            c.other_text,
            c.last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
        ));
    }
    m.push('\n');
}

fn memory_details(m: &mut String, mem: &MemoryResult) {
    let p = &mem.params;
    m.push_str(&format!(
        "## Memory details\n\n{} connections per measurement, each joined to one of {} channels ({}), from source addresses {}; idle {} s before the sample. {}. The figure is each process's first measurement: a later one reuses memory its allocator kept after the earlier connections closed (see RSS after close), so it reads low.\n\n| Subject | round | counts | joined | connect s | RSS before MB | RSS idle MB | kB/connection | RSS after close MB |\n|---|---|---|---|---|---|---|---|---|\n",
        p["connections"], p["channels"], p["client"].as_str().unwrap_or("?"), p["source_addresses"],
        p["idle_seconds"], p["measure"].as_str().unwrap_or("?")
    ));
    let mb = |kb: Option<u64>| {
        kb.map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".into())
    };
    for s in &mem.steps {
        m.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |\n",
            s.subject,
            s.round,
            if s.first { "yes" } else { "no" },
            s.joined,
            s.connect_s,
            mb(s.rss_before_kb),
            mb(s.rss_idle_kb),
            s.kb_per_connection
                .map(|k| format!("{k:.2}"))
                .unwrap_or_else(|| "-".into()),
            mb(s.rss_closed_kb),
        ));
        if let Some(e) = &s.error {
            m.push_str(&format!("\n**{} round {}: {e}**\n\n", s.subject, s.round));
        }
    }
    m.push('\n');
}

/// A variant's measurements in one build, in round order.
struct BuildRuns<'a> {
    runs: Vec<&'a HardeningRun>,
}

impl<'a> BuildRuns<'a> {
    fn of(h: &'a HardeningResult, build: &str, variant: &str) -> BuildRuns<'a> {
        let mut runs: Vec<&HardeningRun> = h
            .runs
            .iter()
            .filter(|r| r.build == build && r.run.variant == variant)
            .collect();
        runs.sort_by_key(|r| r.run.round);
        BuildRuns { runs }
    }
    fn tps(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.run.tps).collect()
    }
    fn best(&self) -> Option<f64> {
        self.tps().into_iter().reduce(f64::max)
    }
    /// The lowest Postgres CPU per transaction of the rounds (the least disturbed one).
    fn cpu_us(&self) -> Option<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.postgres_us_per_tx)
            .reduce(f64::min)
    }
    /// The median of the rounds' other load on the machine, in cores.
    fn other_cores(&self) -> Option<f64> {
        median(self.runs.iter().filter_map(|r| r.other_cores).collect())
    }
    /// Queue rows per transaction (of the first round).
    fn rows_per_tx(&self) -> Option<f64> {
        self.runs.first().and_then(|r| {
            let tx = r.run.transactions.filter(|&n| n > 0)? as f64;
            Some(r.queue_rows? as f64 / tx)
        })
    }
}

/// new/old tps of each round.
fn round_ratios(old: &BuildRuns, new: &BuildRuns) -> Vec<f64> {
    old.runs
        .iter()
        .filter_map(|o| {
            let n = new.runs.iter().find(|n| n.run.round == o.run.round)?;
            ratio(n.run.tps, o.run.tps)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// "median (lowest–highest)" of the per-round ratios.
fn ratio_spread(r: &[f64]) -> String {
    median(r.to_vec()).map_or("-".into(), |m| format!("{m:.2} ({})", range(r, 2)))
}

fn range(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo:.digits$}–{hi:.digits$}"),
        _ => "-".into(),
    }
}

fn hardening_figures(figs: &mut Vec<Figure>, h: &HardeningResult, problems: &mut Vec<String>) {
    let old_rev = h.params["old"]
        .as_str()
        .unwrap_or("the pre-hardening build");
    for v in VARIANTS {
        let (old, new) = (BuildRuns::of(h, "old", v.id), BuildRuns::of(h, "new", v.id));
        if old.runs.is_empty() && new.runs.is_empty() {
            continue;
        }
        let unchecked = unchecked_before(v.id);
        let (kind, target) = if unchecked {
            ("reference", None)
        } else {
            ("ratio_min", Some(0.9))
        };
        let mut f = fig(
            &format!("hardening_{}", v.id),
            &format!(
                "Writer tps, {}: current build vs before the hardening",
                v.title
            ),
            "tps",
            new.best(),
            old.best(),
            "same run, pre-hardening build",
            kind,
            target,
            json!({"variant": v.id, "script": v.script, "old": old_rev, "pgbench": h.params,
                   "old_tps_rounds": old.tps(), "new_tps_rounds": new.tps(),
                   "round_ratios": round_ratios(&old, &new), "round_ratio_median": median(round_ratios(&old, &new)),
                   "other_load_cores_median": {"old": old.other_cores(), "new": new.other_cores()},
                   "postgres_us_per_tx": {"old": old.cpu_us(), "new": new.cpu_us()},
                   "queue_rows_per_tx": {"old": old.rows_per_tx(), "new": new.rows_per_tx()}}),
        );
        let cpu = |c: Option<f64>| c.map_or("-".into(), |c| format!("{c:.0}"));
        let spread = format!(
            "rounds: old {} tps, new {} tps, new/old per round median {}; Postgres CPU per transaction old {} us, new {} us",
            range(&old.tps(), 0),
            range(&new.tps(), 0),
            ratio_spread(&round_ratios(&old, &new)),
            cpu(old.cpu_us()),
            cpu(new.cpu_us())
        );
        f.note = Some(if unchecked {
            format!("the old build did not check this caller's INSERT policy at all (the bug the check fixed): the ratio is the check's price, not a like-for-like regression; {spread}")
        } else {
            spread
        });
        figs.push(f);
        for (build, r) in [("old", &old), ("new", &new)] {
            for run in &r.runs {
                if let Some(e) = &run.run.error {
                    problems.push(format!(
                        "hardening {} ({build} build) round {}: {e}",
                        v.id, run.run.round
                    ));
                }
            }
        }
    }
    if let Some(n) = h
        .builds
        .get("new")
        .and_then(|b| b.forbidden_private_send_queued)
        .filter(|&n| n > 0)
    {
        problems.push(format!(
            "the current build queued {n} message(s) for a private send its INSERT policy forbids: the send_private_rls figures did not measure the check"
        ));
    }
}

fn hardening_details(m: &mut String, h: &HardeningResult) {
    let p = &h.params;
    let s = |k: &str| p[k].as_str().unwrap_or("?").to_string();
    m.push_str(&format!(
        "## Hardening writer details (issue 10: old vs new build)\n\npgbench -c {} -j {} -T {}, {} protocol, {} rounds. Old: {}. New: {}. Clusters: {}. Order: {}. Tables: {}. Subscriptions: {}. Queue: {}. Sender: {}. Figures: {}; Postgres CPU per transaction is the whole cluster's CPU time over the run (lowest of the rounds) divided by the transactions; other load is what the rest of the machine (other agents' work) kept busy meanwhile (median of the rounds): the figures are only as steady as that.\n\n",
        p["clients"], p["threads"], p["seconds_per_run"], s("protocol"), p["rounds"],
        s("old"), s("new"), s("clusters"), s("order"), s("tables"), s("subscriptions"), s("queue"), s("sender"), s("aggregation"),
    ));
    m.push_str("| Build | port | extversion | realtime.send language | realtime_sidecar role | subscriptions | messages per transaction (probe) | private send to a topic the policy forbids: messages queued |\n|---|---|---|---|---|---|---|---|\n");
    for (name, b) in &h.builds {
        let msgs: Vec<String> = b
            .messages_per_tx
            .iter()
            .map(|(k, v)| format!("{k} {}", v.map_or("-".into(), |v| v.to_string())))
            .collect();
        m.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            b.port,
            b.extversion.as_deref().unwrap_or("-"),
            b.send_language.as_deref().unwrap_or("-"),
            b.has_sidecar_role.map_or("-".into(), |x| x.to_string()),
            b.subscriptions.map_or("-".into(), |x| x.to_string()),
            msgs.join(", "),
            b.forbidden_private_send_queued
                .map_or("-".into(), |x| x.to_string()),
        ));
    }
    m.push_str("\n| Variant | old tps (best) | new tps (best) | new/old (best) | old rounds tps | new rounds tps | new/old per round: median (range) | Postgres CPU us/tx old | new | queue rows/tx old | new | other load, cores old | new |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let f0 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let f2 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for v in VARIANTS {
        let (old, new) = (BuildRuns::of(h, "old", v.id), BuildRuns::of(h, "new", v.id));
        if old.runs.is_empty() && new.runs.is_empty() {
            continue;
        }
        let label = if unchecked_before(v.id) {
            format!("`{}` (old: unchecked, the bug)", v.id)
        } else {
            format!("`{}`", v.id)
        };
        m.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f0(old.best()),
            f0(new.best()),
            ratio(new.best(), old.best()).map_or("-".into(), |r| format!("{r:.2}x")),
            range(&old.tps(), 0),
            range(&new.tps(), 0),
            ratio_spread(&round_ratios(&old, &new)),
            f0(old.cpu_us()),
            f0(new.cpu_us()),
            f2(old.rows_per_tx()),
            f2(new.rows_per_tx()),
            f2(old.other_cores()),
            f2(new.other_cores()),
        ));
    }
    m.push('\n');
    for v in VARIANTS {
        m.push_str(&format!(
            "- `{}`: {} (`bench/{}`{})\n",
            v.id,
            v.title,
            v.script,
            if v.sender { ", as the sender" } else { "" }
        ));
    }
    m.push('\n');
}
