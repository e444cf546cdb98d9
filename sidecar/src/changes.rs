//! Postgres Changes on the sidecar side: subscriptions in the database (`realtime._subscribe`),
//! delivery of the changes the database routed to this sidecar (docs/protocol.md §6).
//!
//! Ownership and invariants:
//! * The database decides who sees what (filters, column privileges, RLS; extension/src/changes.rs)
//!   and queues one row per (change, sidecar, column view) listing subscription ids. This module
//!   only maps those ids to the channels that own them ([`Changes`]) and writes the frames.
//! * A channel registers its subscription ids when `_subscribe` returns and unregisters them when
//!   it ends or re-subscribes; a change for an id no longer registered is dropped. Rows of
//!   subscriptions this sidecar no longer serves are swept by the presence heartbeat
//!   (`realtime._sweep_subscriptions`, keeping rows younger than `SWEEP_GRACE`); a dead sidecar's
//!   rows go with its presences.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::codec;
use crate::fanout::ConnHandle;
use crate::filter::{Binding, FilterValue};

/// Subscription rows younger than this are never swept: their channel may be registering them.
pub const SWEEP_GRACE: &str = "30 seconds";
const SUBSCRIBE_SQL: &str = "SELECT out_binding, out_subscription \
                             FROM realtime._subscribe($1::text::uuid, $2::text::jsonb, $3::text::jsonb)";
const SWEEP_SQL: &str =
    "SELECT realtime._sweep_subscriptions($1::text::uuid, $2, $3::text::interval)";

/// Where the changes of one subscription go.
struct Target {
    conn: Arc<ConnHandle>,
    /// The Phoenix topic of the channel.
    topic: String,
    /// The channel instance (its registration), to group one frame per channel.
    channel: u64,
    /// The join-reply id of the binding (`ids` in change frames).
    binding: u64,
}

#[derive(Default)]
pub struct Changes {
    targets: RwLock<HashMap<i64, Target>>,
    next_channel: AtomicU64,
}

/// Why a channel's subscriptions could not be created.
#[derive(Debug)]
pub enum SubscribeFailure {
    /// The database's message (bad parameters, table not enabled) or a connection problem.
    Refused(String),
    /// `postgres_changes_options.wait` ran out (milliseconds).
    Timeout(u64),
}

/// A change routed to this sidecar.
#[derive(Deserialize)]
struct Routed<'a> {
    subscriptions: Vec<i64>,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Changes {
    /// A new channel registration id (groups one channel's subscriptions).
    pub fn next_channel(&self) -> u64 {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }

    /// Register a channel's subscriptions: (binding id, subscription id) pairs.
    pub fn register(&self, conn: &Arc<ConnHandle>, topic: &str, channel: u64, subs: &[(u64, i64)]) {
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        for &(binding, id) in subs {
            targets.insert(
                id,
                Target {
                    conn: conn.clone(),
                    topic: topic.to_owned(),
                    channel,
                    binding,
                },
            );
        }
    }

    pub fn unregister(&self, ids: &[i64]) {
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            targets.remove(id);
        }
    }

    fn live(&self) -> Vec<i64> {
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        targets.keys().copied().collect()
    }

    /// Deliver one routed change (a queue row's payload): one frame per channel, `ids` = its
    /// matched bindings.
    pub fn deliver(&self, payload: &str) -> Result<(), serde_json::Error> {
        let routed: Routed = serde_json::from_str(payload)?;
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        let mut channels: HashMap<u64, (&Target, Vec<u64>)> = HashMap::new();
        for id in &routed.subscriptions {
            let Some(target) = targets.get(id) else {
                continue;
            };
            let (_, ids) = channels
                .entry(target.channel)
                .or_insert_with(|| (target, Vec::new()));
            if !ids.contains(&target.binding) {
                ids.push(target.binding);
            }
        }
        for (target, ids) in channels.into_values() {
            let payload = ChangeFrame {
                ids: &ids,
                data: routed.data,
            };
            let frame = codec::encode(
                target.conn.vsn,
                None,
                None,
                &target.topic,
                "postgres_changes",
                &payload,
            );
            target.conn.push(frame);
        }
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct ChangeFrame<'a> {
    ids: &'a [u64],
    data: &'a RawValue,
}

/// The `_subscribe` form of parsed bindings: `[{binding, event, schema, table, filters, select}]`.
pub fn bindings_json(bindings: &[(u64, Binding)]) -> String {
    let entries: Vec<Value> = bindings
        .iter()
        .map(|(id, b)| {
            let filters: Vec<Value> = b
                .filters
                .iter()
                .map(|c| {
                    let mut cond = json!({
                        "column": c.column,
                        "op": c.op.sql_name(),
                        "negate": c.negate,
                    });
                    match &c.value {
                        FilterValue::One(v) => cond["value"] = json!(v),
                        FilterValue::List(values) => cond["values"] = json!(values),
                        FilterValue::Is(v) => cond["value"] = json!(v.as_str()),
                    }
                    cond
                })
                .collect();
            let mut entry = json!({
                "binding": id,
                "event": b.event.as_str(),
                "schema": b.schema,
                "table": b.table,
                "filters": filters,
            });
            if let Some(select) = &b.select {
                entry["select"] = json!(select);
            }
            entry
        })
        .collect();
    Value::Array(entries).to_string()
}

/// Create the subscriptions of one channel within `wait` (if set); (binding id, subscription
/// id) pairs.
pub async fn subscribe(
    state: &AppState,
    claims: &str,
    bindings: &str,
    wait: Option<Duration>,
) -> Result<Vec<(u64, i64)>, SubscribeFailure> {
    let created = create(state, claims, bindings);
    match wait {
        None => created.await.map_err(SubscribeFailure::Refused),
        Some(limit) => match tokio::time::timeout(limit, created).await {
            Ok(result) => result.map_err(SubscribeFailure::Refused),
            Err(_) => Err(SubscribeFailure::Timeout(limit.as_millis() as u64)),
        },
    }
}

async fn create(state: &AppState, claims: &str, bindings: &str) -> Result<Vec<(u64, i64)>, String> {
    let client = state
        .db
        .get()
        .await
        .map_err(|_| crate::error::UNABLE_TO_CONNECT.to_owned())?;
    let statement = client
        .prepare_cached(SUBSCRIBE_SQL)
        .await
        .map_err(|err| db_message(&err))?;
    let rows = client
        .query(&statement, &[&state.instance, &claims, &bindings])
        .await
        .map_err(|err| db_message(&err))?;
    rows.iter()
        .map(|row| {
            let binding: i64 = row.try_get(0).map_err(|err| db_message(&err))?;
            let id: i64 = row.try_get(1).map_err(|err| db_message(&err))?;
            Ok((u64::try_from(binding).unwrap_or_default(), id))
        })
        .collect()
}

/// Forget this sidecar's subscription rows it no longer serves.
pub async fn sweep(state: &AppState) -> Result<(), String> {
    let client = state.db.get().await.map_err(|err| err.to_string())?;
    client
        .execute(
            SWEEP_SQL,
            &[&state.instance, &state.changes.live(), &SWEEP_GRACE],
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(())
}

fn db_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => crate::error::UNABLE_TO_CONNECT.to_owned(),
    }
}
