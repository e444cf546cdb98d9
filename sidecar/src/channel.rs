//! Per-connection channel table and the rules for reading a `phx_join` (docs/protocol.md §3).
//!
//! Invariants:
//! * At most one channel instance per Phoenix topic per connection; a second join replaces the
//!   first (the session closes the old instance first).
//! * Every entry holds a live registry subscription; whoever removes an entry from the table
//!   must unsubscribe it (the session does, including when the connection ends).
//! * Join payloads are read leniently, like Realtime: unknown keys are ignored, booleans may be
//!   JSON booleans or `"true"`/`"false"` strings in any case, and an invalid payload means
//!   defaults, never a failed join.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::auth::Claims;
use crate::fanout::{SubId, TopicKey};
use crate::policies::Permissions;

const TOPIC_PREFIX: &str = "realtime:";

/// The sub-topic of a Realtime topic (`realtime:room1` → `room1`); `None` for other topics,
/// which no channel handles. An empty sub-topic is returned as `Some("")` (a join error).
pub fn sub_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix(TOPIC_PREFIX)
}

/// Longest sub-topic that keeps the Phoenix topic within `max_topic_bytes`.
pub fn max_sub_topic_bytes(max_topic_bytes: u32) -> usize {
    (max_topic_bytes as usize).saturating_sub(TOPIC_PREFIX.len())
}

/// What a join asks for.
#[derive(Debug, Default, PartialEq)]
pub struct JoinConfig {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub presence_enabled: bool,
    /// `config.presence.key`; empty or absent: the server picks one.
    pub presence_key: Option<String>,
    pub private: bool,
    /// `config.postgres_changes` object entries, exactly as sent.
    pub postgres_changes: Vec<Map<String, Value>>,
    /// `config.postgres_changes_options.wait`: hold the join reply until the subscriptions are
    /// live, at most this long (the client's `timeout`, clamped to 1–20 s; default 15 s).
    pub changes_wait: Option<Duration>,
}

impl JoinConfig {
    pub fn parse(payload: &Value) -> Self {
        let config = payload.get("config");
        let at = |path: &[&str]| path.iter().try_fold(config?, |v, key| v.get(key));
        JoinConfig {
            broadcast_self: flexible_bool(at(&["broadcast", "self"])),
            broadcast_ack: flexible_bool(at(&["broadcast", "ack"])),
            presence_enabled: flexible_bool(at(&["presence", "enabled"])),
            presence_key: at(&["presence", "key"])
                .and_then(Value::as_str)
                .filter(|key| !key.is_empty())
                .map(str::to_owned),
            private: flexible_bool(at(&["private"])),
            postgres_changes: at(&["postgres_changes"])
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|e| e.as_object().cloned())
                        .collect()
                })
                .unwrap_or_default(),
            changes_wait: flexible_bool(at(&["postgres_changes_options", "wait"])).then(|| {
                let ms = at(&["postgres_changes_options", "timeout"])
                    .and_then(Value::as_u64)
                    .unwrap_or(15_000);
                Duration::from_millis(ms.clamp(1_000, 20_000))
            }),
        }
    }
}

/// Realtime's `FlexibleBoolean`: `true` or a string equal to "true" ignoring case.
fn flexible_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The token a join is authorized with (Realtime `assign_access_token`): an `sb_…` opaque key
/// means "use the connection token"; otherwise `user_token` (legacy), then `access_token`, then
/// the connection token.
pub fn join_token<'a>(payload: &'a Value, conn_token: &'a str) -> &'a str {
    let field = |name| payload.get(name).and_then(Value::as_str);
    let first = field("access_token").or_else(|| field("user_token"));
    if first.is_some_and(|t| t.starts_with("sb_")) {
        return conn_token;
    }
    field("user_token")
        .or_else(|| field("access_token"))
        .unwrap_or(conn_token)
}

/// Join-reply echo of one `postgres_changes` entry: the entry as sent plus a numeric `id`
/// (Realtime uses `:erlang.phash2(params)`, a non-negative integer below 2^27).
pub fn postgres_change_echo(entry: &Map<String, Value>) -> Value {
    let mut hasher = DefaultHasher::new();
    Value::Object(entry.clone()).to_string().hash(&mut hasher);
    let mut echoed = entry.clone();
    echoed.insert("id".to_owned(), Value::from(hasher.finish() % (1 << 27)));
    Value::Object(echoed)
}

/// One joined channel instance.
#[derive(Debug)]
pub struct Channel {
    pub join_ref: Option<String>,
    pub key: TopicKey,
    /// The registry subscription delivering broadcasts; `None` while the channel may not read
    /// them (a private channel whose policies allow presence only).
    pub sub_id: Option<SubId>,
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub presence_enabled: bool,
    /// The key this channel's presence is tracked under.
    pub presence_key: String,
    /// The subscription delivering presence diffs (presence enabled, or tracking, and readable).
    pub presence_sub: Option<SubId>,
    /// The meta currently tracked (with its `phx_ref`).
    pub tracked: Option<Map<String, Value>>,
    /// What the channel may do: everything on a public channel, its policies' verdicts on a
    /// private one.
    pub permissions: Permissions,
    /// Token the channel is authorized with (to ignore identical `access_token` refreshes).
    pub token: Arc<str>,
    pub claims: Claims,
    /// Local deadline of the token's `exp` (`None`: beyond any timer).
    pub expires_at: Option<Instant>,
    /// Next periodic re-evaluation of a private channel's policies.
    pub recheck_at: Option<Instant>,
    /// This channel instance among all channels with Postgres Changes (`changes::Changes`).
    pub registration: u64,
    /// The `_subscribe` form of its `postgres_changes` bindings (`None`: none, or refused).
    pub bindings: Option<Arc<str>>,
    /// How many `postgres_changes` entries `bindings` holds (0 when `None`).
    pub binding_count: usize,
    /// Its live subscription ids, and the latest subscribe started (stale results are dropped).
    pub change_subs: Vec<i64>,
    pub changes_ticket: u64,
    /// With `postgres_changes_options.wait`: the join reply, held until the subscriptions are live.
    pub held_reply: Option<HeldReply>,
    /// Ticket of the latest policy evaluation started for this channel.
    pub ticket: u64,
    /// The evaluation running for this channel, if any; `reevaluate_again`: the token changed
    /// meanwhile, so its verdict is stale and another round follows.
    pub reevaluating: Option<Reevaluation>,
    pub reevaluate_again: bool,
}

/// A join reply waiting for the channel's Postgres Changes subscriptions.
#[derive(Debug)]
pub struct HeldReply {
    pub msg_ref: Option<String>,
    pub echo: Vec<Value>,
}

/// Why a joined channel's policies are evaluated again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reevaluation {
    /// The client sent a new `access_token`.
    Refresh,
    /// The periodic re-check (`POLICY_RECHECK_SECS`).
    Periodic,
}

/// Local deadline of a Unix `exp`, seen from `now_unix`.
pub fn deadline(exp: i64, now_unix: i64) -> Option<Instant> {
    let secs = u64::try_from(exp.saturating_sub(now_unix)).unwrap_or(0);
    Instant::now().checked_add(Duration::from_secs(secs))
}

#[derive(Default)]
pub struct ChannelTable {
    /// Boxed: a table sized for one channel then holds pointers, not several large entries.
    channels: HashMap<String, Box<Channel>>,
}

impl ChannelTable {
    pub fn get(&self, topic: &str) -> Option<&Channel> {
        self.channels.get(topic).map(|c| &**c)
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut Channel> {
        self.channels.get_mut(topic).map(|c| &mut **c)
    }

    pub fn insert(&mut self, topic: String, channel: Channel) {
        self.channels.insert(topic, Box::new(channel));
    }

    pub fn remove(&mut self, topic: &str) -> Option<Channel> {
        self.channels.remove(topic).map(|c| *c)
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// `postgres_changes` entries over all channels.
    pub fn postgres_changes(&self) -> usize {
        self.channels.values().map(|c| c.binding_count).sum()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (String, Channel)> + '_ {
        self.channels.drain().map(|(topic, c)| (topic, *c))
    }

    /// The earliest token expiry or policy re-check among joined channels.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.channels
            .values()
            .flat_map(|c| [c.expires_at, c.recheck_at])
            .flatten()
            .min()
    }

    /// Topics whose token has expired at `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.topics_where(|c| c.expires_at.is_some_and(|at| at <= now))
    }

    /// Topics whose policies are due for a re-check at `now`.
    pub fn due_rechecks(&self, now: Instant) -> Vec<String> {
        self.topics_where(|c| c.recheck_at.is_some_and(|at| at <= now))
    }

    fn topics_where(&self, due: impl Fn(&Channel) -> bool) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(_, c)| due(c))
            .map(|(topic, _)| topic.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn topic_rules() {
        assert_eq!(sub_topic("realtime:room1"), Some("room1"));
        assert_eq!(sub_topic("realtime:a:b:c"), Some("a:b:c"));
        assert_eq!(sub_topic("realtime:"), Some(""));
        assert_eq!(sub_topic("phoenix"), None);
        assert_eq!(sub_topic("room1"), None);
        assert_eq!(sub_topic("Realtime:room1"), None);
    }

    #[test]
    fn parses_observed_join_configs() {
        let c = JoinConfig::parse(&json!({"config":{
            "broadcast":{"self":true,"ack":true},
            "presence":{"key":"user-1","enabled":true},
            "postgres_changes":[],"private":false},"access_token":"T"}));
        assert_eq!(
            c,
            JoinConfig {
                broadcast_self: true,
                broadcast_ack: true,
                presence_enabled: true,
                presence_key: Some("user-1".into()),
                ..Default::default()
            }
        );
        let c = JoinConfig::parse(
            &json!({"config":{"private":"TRUE","broadcast":{"self":"false","ack":1},
            "postgres_changes":[{"event":"INSERT","schema":"public"}, null]}}),
        );
        assert!(c.private && !c.broadcast_self && !c.broadcast_ack);
        assert_eq!(c.postgres_changes.len(), 1);
        assert_eq!(JoinConfig::parse(&json!("garbage")), JoinConfig::default());
        assert_eq!(
            JoinConfig::parse(&json!({"config":{"broadcast":7}})),
            JoinConfig::default()
        );
    }

    #[test]
    fn token_selection() {
        let conn = "CONN";
        assert_eq!(join_token(&json!({}), conn), "CONN");
        assert_eq!(join_token(&json!({"access_token":"A"}), conn), "A");
        assert_eq!(
            join_token(&json!({"access_token":"sb_publishable_x"}), conn),
            "CONN"
        );
        assert_eq!(
            join_token(&json!({"access_token":"A","user_token":"U"}), conn),
            "U"
        );
        assert_eq!(join_token(&json!({"user_token":"U"}), conn), "U");
        assert_eq!(join_token(&json!({"access_token":null}), conn), "CONN");
        assert_eq!(join_token(&json!({"access_token":42}), conn), "CONN");
    }

    #[test]
    fn postgres_change_echo_keeps_entry_and_adds_numeric_id() {
        let entry = json!({"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"});
        let Value::Object(map) = entry else {
            unreachable!()
        };
        let echo = postgres_change_echo(&map);
        let keys: Vec<_> = echo
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["event", "schema", "table", "filter", "id"]);
        assert!(echo["id"].as_u64().is_some_and(|id| id < (1 << 27)));
        assert_eq!(echo, postgres_change_echo(&map), "ids are stable");
    }
}
