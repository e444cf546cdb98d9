//! Presence (docs/protocol.md §5), cluster-wide through Postgres (sql/presence.sql).
//!
//! Ownership and invariants:
//! * Each sidecar owns its clients' presences, in memory here ([`Presence`]); a change is
//!   recorded, delivered to this sidecar's presence subscribers and handed to the `publisher`
//!   under one lock, so a channel that subscribes (and snapshots the local presences) under the
//!   same lock misses nothing and sees nothing twice.
//! * Other sidecars learn a change from the queue (a `presence` row, delivered by
//!   [`Presence::deliver`]); a joining channel learns the current state from
//!   `realtime.presence_entries` (other sidecars' rows) plus the local snapshot. Diffs that cross
//!   a state are harmless: clients merge joins by `phx_ref` and remove leaves by `phx_ref`.
//! * [`run`] (owned by `main`) heartbeats `realtime.sidecars`; a sidecar that stops beating for
//!   `PRESENCE_TTL` has its presences removed, with leave diffs, by the next beat of any other.
//!   After a beat that finds this sidecar unregistered (first beat, or a crash emptied the
//!   unlogged tables) every local presence is announced again. At shutdown this sidecar's
//!   presences leave at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::app::AppState;
use crate::codec::{self, UserPayload};
use crate::fanout::{ConnHandle, Registry, SubId, TopicKey};
use crate::limits::PerSecond;
use crate::publisher::{Outgoing, Publisher};

/// How often each sidecar says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a sidecar counts as dead: its presences leave within TTL + HEARTBEAT.
const PRESENCE_TTL: &str = "6 seconds";
const HEARTBEAT_SQL: &str =
    "SELECT realtime._presence_heartbeat($1::text::uuid, $2::text::interval)";

const STATE_SQL: &str = "SELECT key, meta::text FROM realtime.presence_entries \
                         WHERE topic = $1 AND private = $2 AND sidecar <> $3::text::uuid \
                         ORDER BY since";

/// One presence: a key and its meta (the tracked object plus `phx_ref`).
pub type Meta = (String, Map<String, Value>);

/// A presence change: metas that joined and metas that left, by key.
#[derive(Debug, Default)]
pub struct Diff {
    pub joins: Vec<Meta>,
    pub leaves: Vec<Meta>,
}

#[derive(Serialize)]
struct Metas<'a> {
    metas: Vec<&'a Map<String, Value>>,
}

/// `{key: {"metas": [...]}, ...}`, keys in first-seen order.
fn by_key(metas: &[Meta]) -> Map<String, Value> {
    let mut grouped: Vec<(&str, Vec<&Map<String, Value>>)> = Vec::new();
    for (key, meta) in metas {
        match grouped.iter_mut().find(|(k, _)| k == key) {
            Some((_, list)) => list.push(meta),
            None => grouped.push((key, vec![meta])),
        }
    }
    grouped
        .into_iter()
        .map(|(key, metas)| (key.to_owned(), serde_json::json!(Metas { metas })))
        .collect()
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload.
    pub fn to_json(&self) -> Box<RawValue> {
        let value = serde_json::json!({
            "joins": by_key(&self.joins),
            "leaves": by_key(&self.leaves),
        });
        RawValue::from_string(value.to_string()).unwrap_or_else(|_| RawValue::NULL.to_owned())
    }
}

/// The `presence_state` payload for `metas`.
pub fn state_json(metas: &[Meta]) -> Box<RawValue> {
    let value = Value::Object(by_key(metas));
    RawValue::from_string(value.to_string()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// A new `phx_ref`: base64 of 8 random bytes, as Phoenix makes them.
pub fn new_ref() -> String {
    STANDARD.encode(rand::random::<[u8; 8]>())
}

#[derive(Default)]
pub struct Presence {
    /// Channels that receive presence diffs (presence enabled and readable).
    subs: Registry,
    /// This sidecar's presences by topic, then by `phx_ref`.
    local: Mutex<HashMap<TopicKey, HashMap<String, Meta>>>,
    /// Presence changes per second, for `MAX_PRESENCE_EVENTS_PER_SECOND`.
    pub rate: PerSecond,
}

impl Presence {
    /// Start delivering diffs of `key` to `conn`; returns the subscription and this sidecar's
    /// current presences on `key`.
    pub fn subscribe(&self, key: &TopicKey, conn: Arc<ConnHandle>) -> (SubId, Vec<Meta>) {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let id = self.subs.subscribe(key.clone(), conn);
        let snapshot = local
            .get(key)
            .map(|metas| metas.values().cloned().collect())
            .unwrap_or_default();
        (id, snapshot)
    }

    pub fn unsubscribe(&self, key: &TopicKey, id: SubId) {
        self.subs.unsubscribe(key, id);
    }

    /// A change made by one of this sidecar's clients: record it, deliver it here, and hand it
    /// to the other sidecars.
    pub fn change(&self, publisher: &Publisher, key: &TopicKey, diff: &Diff) {
        if diff.is_empty() {
            return;
        }
        let payload = diff.to_json();
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let metas = local.entry(key.clone()).or_default();
        for (_, meta) in &diff.leaves {
            if let Some(phx_ref) = meta.get("phx_ref").and_then(Value::as_str) {
                metas.remove(phx_ref);
            }
        }
        for (k, meta) in &diff.joins {
            if let Some(phx_ref) = meta.get("phx_ref").and_then(Value::as_str) {
                let mut stored = meta.clone();
                stored.remove("phx_ref_prev");
                metas.insert(phx_ref.to_owned(), (k.clone(), stored));
            }
        }
        if metas.is_empty() {
            local.remove(key);
        }
        self.deliver(key, &payload);
        publisher.publish(Outgoing {
            key: key.clone(),
            extension: "presence",
            event: "presence_diff".to_owned(),
            payload: UserPayload::Json(payload),
        });
    }

    /// Deliver a `presence_diff` to this sidecar's presence subscribers of `key`.
    pub fn deliver(&self, key: &TopicKey, payload: &RawValue) {
        self.subs.publish_with(key, None, |vsn, topic| {
            Some(codec::encode(
                vsn,
                None,
                None,
                topic,
                "presence_diff",
                payload,
            ))
        });
    }

    /// Every local presence as joins per topic (to announce them again).
    fn all_local(&self) -> Vec<(TopicKey, Diff)> {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local
            .iter()
            .map(|(key, metas)| {
                let joins = metas.values().cloned().collect();
                (
                    key.clone(),
                    Diff {
                        joins,
                        leaves: Vec::new(),
                    },
                )
            })
            .collect()
    }
}

/// Other sidecars' presences on `key`, from the database.
pub async fn remote_state(state: &AppState, key: &TopicKey) -> Result<Vec<Meta>, String> {
    let client = state.db.get().await.map_err(|err| err.to_string())?;
    let statement = client
        .prepare_cached(STATE_SQL)
        .await
        .map_err(|err| err.to_string())?;
    let rows = client
        .query(&statement, &[&key.sub_topic, &key.private, &state.instance])
        .await
        .map_err(|err| err.to_string())?;
    let mut metas = Vec::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get(0).map_err(|err| err.to_string())?;
        let meta: &str = row.try_get(1).map_err(|err| err.to_string())?;
        if let Ok(Value::Object(meta)) = serde_json::from_str(meta) {
            metas.push((key, meta));
        }
    }
    Ok(metas)
}

/// Heartbeat this sidecar until shutdown, then make its presences leave everywhere.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match heartbeat(&state).await {
            Ok(true) => {
                for (key, diff) in state.presence.all_local() {
                    state.publisher.publish(Outgoing {
                        key,
                        extension: "presence",
                        event: "presence_diff".to_owned(),
                        payload: UserPayload::Json(diff.to_json()),
                    });
                }
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "presence heartbeat failed"),
        }
        if let Err(err) = crate::changes::sweep(&state).await {
            tracing::warn!(error = %err, "sweeping postgres_changes subscriptions failed");
        }
    }
    let leave = async {
        let client = state.db.get().await.map_err(|err| err.to_string())?;
        client
            .execute(
                "SELECT realtime._presence_remove(ARRAY[$1::text::uuid])",
                &[&state.instance],
            )
            .await
            .map_err(|err| err.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), leave).await {
        Ok(Ok(_)) => tracing::info!("presences removed"),
        Ok(Err(err)) => tracing::warn!(error = %err, "could not remove presences at shutdown"),
        Err(_) => tracing::warn!("removing presences at shutdown timed out"),
    }
}

/// One beat; true when this sidecar was not registered before it.
async fn heartbeat(state: &AppState) -> Result<bool, String> {
    let client = state.db.get().await.map_err(|err| err.to_string())?;
    let row = client
        .query_one(HEARTBEAT_SQL, &[&state.instance, &PRESENCE_TTL])
        .await
        .map_err(|err| err.to_string())?;
    row.try_get(0).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn diff_and_state_group_metas_by_key() {
        let diff = Diff {
            joins: vec![
                ("a".into(), meta(json!({"phx_ref": "1", "x": 1}))),
                ("b".into(), meta(json!({"phx_ref": "2"}))),
                ("a".into(), meta(json!({"phx_ref": "3"}))),
            ],
            leaves: vec![],
        };
        let value: Value = serde_json::from_str(diff.to_json().get()).expect("json");
        assert_eq!(
            value,
            json!({"joins": {"a": {"metas": [{"phx_ref": "1", "x": 1}, {"phx_ref": "3"}]},
                             "b": {"metas": [{"phx_ref": "2"}]}},
                   "leaves": {}})
        );
        let state: Value = serde_json::from_str(state_json(&diff.joins).get()).expect("json");
        assert_eq!(state, value["joins"]);
        assert_eq!(state_json(&[]).get(), "{}");
    }

    #[test]
    fn refs_are_unique_base64_of_8_bytes() {
        let (a, b) = (new_ref(), new_ref());
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(&a).map(|bytes| bytes.len()).ok(), Some(8));
    }

    #[test]
    fn local_presences_follow_diffs() {
        let presence = Presence::default();
        let publisher = Publisher::new(8);
        let key = TopicKey {
            sub_topic: "room".into(),
            private: false,
        };
        let joined = meta(json!({"phx_ref": "r1", "s": 1}));
        let join = Diff {
            joins: vec![("k".into(), joined.clone())],
            leaves: vec![],
        };
        presence.change(&publisher, &key, &join);
        let root = tokio_util::sync::CancellationToken::new();
        let (conn, _rx) = ConnHandle::new(
            1,
            codec::Vsn::V2,
            crate::fanout::QueueLimits::frames(4),
            &root,
        );
        let (_, snapshot) = presence.subscribe(&key, conn);
        assert_eq!(snapshot, vec![("k".to_owned(), joined.clone())]);
        let leave = Diff {
            joins: vec![],
            leaves: vec![("k".into(), joined)],
        };
        presence.change(&publisher, &key, &leave);
        assert!(presence.all_local().is_empty());
    }
}
