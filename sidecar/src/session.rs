//! The per-connection protocol state machine: routes each decoded client message (heartbeat,
//! join, leave, broadcast, access_token) and owns the connection's channel table.
//!
//! It is transport-free: output goes to the connection's bounded queue ([`ConnHandle::push`]),
//! time comes in through [`Session::on_timer`] and finished database work (policy evaluations,
//! presence states) through [`Session::on_db_done`], so tests drive it without sockets.
//!
//! Invariants:
//! * A channel is subscribed in the registry *before* its join is acknowledged, and only while
//!   it may read broadcasts (public, or a private channel whose SELECT policy allows
//!   `broadcast`).
//! * Replies on a joined channel carry that channel's current `join_ref` (clients drop frames
//!   with a stale non-null `join_ref`); incoming `join_ref`s are not checked (Realtime's
//!   leniency, docs/protocol.md §1.9).
//! * Join errors are answered after `CHANNEL_ERROR_BACKOFF_MS` without blocking the socket: the
//!   replies wait in `delayed` (one fixed delay, so the queue is ordered by deadline), at most
//!   `MAX_PENDING_JOIN_ERRORS` of them: one more closes the connection. Their bytes count
//!   against the connection's `CLIENT_QUEUE_BYTES` from the moment they are encoded.
//! * A `ref` or `join_ref` over `validate::MAX_REF_BYTES` closes the connection before anything
//!   echoes it.
//! * Input is checked before it is used (topic and event lengths, storability: `validate`), so
//!   nothing this connection sends can fail a statement shared with other clients.
//! * Presence's per-channel rate limit counts per topic for the life of the connection, so
//!   leaving and re-joining does not reset it.
//! * A channel's Postgres Changes subscriptions are bounded (entries per channel and per
//!   connection, conditions per filter) and deleted from the database when the channel ends.
//! * Private channels are authorized by the database (`policies`). The evaluations run as
//!   futures owned by the session (dropped with it); each carries a ticket, and an outcome whose
//!   ticket is no longer current (the join was superseded or left, the channel re-joined) is
//!   discarded. A channel has at most one evaluation running: a token refresh meanwhile asks
//!   for one more round once it finishes.
//! * Presence: a channel's tracked meta leaves (a `presence_diff` everywhere) whenever the
//!   channel ends, however it ends. `presence_state` is sent after the join reply, once the
//!   other sidecars' presences are loaded; diffs that arrive first are buffered by the client.
//! * Dropping the session unsubscribes every channel it still holds.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::{unix_now, Claims};
use crate::changes::{self, SubscribeFailure};
use crate::channel::{self, Channel, ChannelTable, HeldReply, JoinConfig, Reevaluation};
use crate::codec::{self, Broadcast, Frame, InPayload, Inbound, Reply, UserPayload};
use crate::config::Config;
use crate::error::{
    event_too_long, read_revoked, write_denied, AuthError, CloseReason, FilterError, JoinError,
    PolicyError, PAYLOAD_SIZE_EXCEEDED, PRESENCE_NOT_A_MAP, PRESENCE_RATE_LIMITED,
    PRESENCE_TOO_LARGE, PRESENCE_TOO_MANY, SUBSCRIBED_TO_POSTGRES, TOO_MANY_MESSAGES,
    UNMATCHED_TOPIC, UNSTORABLE,
};
use crate::fanout::{ConnHandle, TopicKey};
use crate::filter;
use crate::policies::{self, Permissions, Subject};
use crate::presence::{self, Diff, Meta};
use crate::publisher::Outgoing;
use crate::validate;

pub struct Session {
    state: Arc<AppState>,
    conn: Arc<ConnHandle>,
    /// The verified connection token, used by joins that bring no `access_token`.
    conn_token: Arc<str>,
    /// The upgrade request's headers as a JSON object, for policies (`request.headers`).
    headers: Arc<str>,
    channels: ChannelTable,
    delayed: VecDeque<(Instant, Frame)>,
    /// Database work for this connection, owned here: dropped with the session.
    db_work: FuturesUnordered<BoxFuture<'static, DbDone>>,
    /// Policy evaluations in flight (part of `db_work`).
    evaluations: usize,
    /// Private joins waiting for their policies, by Phoenix topic.
    joining: HashMap<String, PendingJoin>,
    last_ticket: u64,
    /// Recent presence track/untrack calls by Phoenix topic, for the per-channel rate limit;
    /// kept across re-joins of the topic.
    presence_calls: HashMap<String, VecDeque<Instant>>,
}

/// What a successful join is granted with.
struct Grant {
    config: JoinConfig,
    /// The token the channel is authorized with and its verified claims.
    token: Arc<str>,
    claims: Claims,
}

/// Finished database work.
pub enum DbDone {
    Policies(Evaluated),
    PresenceState(PresenceState),
    Subscribed(Subscribed),
}

/// A channel's Postgres Changes subscriptions, created (or not) in the database.
pub struct Subscribed {
    topic: String,
    registration: u64,
    ticket: u64,
    result: Result<Vec<(u64, i64)>, SubscribeFailure>,
}

/// Other sidecars' presences on a channel's topic, loaded for its `presence_state`.
pub struct PresenceState {
    topic: String,
    /// The join the state is for (a re-joined channel gets its own).
    join_ref: Option<String>,
    /// This sidecar's presences, snapshot when the channel subscribed.
    local: Vec<Meta>,
    remote: Result<Vec<Meta>, String>,
}

/// A finished policy evaluation: for a pending join or a joined channel, told apart by ticket.
pub struct Evaluated {
    topic: String,
    ticket: u64,
    result: Result<Permissions, PolicyError>,
}

struct PendingJoin {
    ticket: u64,
    join_ref: Option<String>,
    msg_ref: Option<String>,
    grant: Grant,
}

/// `system` push payload (docs/protocol.md §7.3).
#[derive(Serialize)]
struct System<'a> {
    extension: &'a str,
    status: &'a str,
    message: &'a str,
    channel: &'a str,
}

impl Session {
    pub fn new(
        state: Arc<AppState>,
        conn: Arc<ConnHandle>,
        conn_token: Arc<str>,
        headers: Arc<str>,
    ) -> Self {
        Session {
            state,
            conn,
            conn_token,
            headers,
            channels: ChannelTable::default(),
            delayed: VecDeque::new(),
            db_work: FuturesUnordered::new(),
            evaluations: 0,
            joining: HashMap::new(),
            last_ticket: 0,
            presence_calls: HashMap::new(),
        }
    }

    pub fn handle(&mut self, msg: Inbound) {
        if !validate::refs_fit(&msg) {
            tracing::info!(
                conn = self.conn.id,
                "ref over MAX_REF_BYTES, closing the connection"
            );
            return self.conn.close(CloseReason::RefTooLong);
        }
        let topic = msg.topic.as_str();
        if topic == "phoenix" && msg.event == "heartbeat" {
            return self.reply(None, msg.msg_ref.as_deref(), topic, "ok", json!({}));
        }
        if msg.event == "phx_join" {
            return self.join(msg);
        }
        if self.channels.get(topic).is_none() {
            return if msg.event == "phx_leave" {
                // A join still being authorized is abandoned; its verdict will be discarded.
                self.joining.remove(topic);
                // Phoenix answers a leave for a topic it no longer has with ok.
                self.reply(
                    msg.join_ref.as_deref(),
                    msg.msg_ref.as_deref(),
                    topic,
                    "ok",
                    json!({}),
                )
            } else {
                self.reply(
                    None,
                    msg.msg_ref.as_deref(),
                    topic,
                    "error",
                    json!({ "reason": UNMATCHED_TOPIC }),
                )
            };
        }
        if matches!(msg.event.as_str(), "broadcast" | "presence") && !self.admit_event() {
            return self.shutdown_channel(&msg.topic, TOO_MANY_MESSAGES);
        }
        match msg.event.as_str() {
            "phx_leave" => self.leave(&msg.topic, msg.msg_ref.as_deref()),
            "broadcast" => self.broadcast(&msg.topic, msg.msg_ref.as_deref(), msg.payload),
            "access_token" => self.refresh_token(&msg.topic, msg.payload),
            "presence" => self.presence(&msg.topic, msg.msg_ref.as_deref(), msg.payload),
            // Realtime ignores unknown events on a joined channel (the client push times out).
            other => tracing::debug!(conn = self.conn.id, topic, event = other, "ignored event"),
        }
    }

    /// Count a client event against `MAX_EVENTS_PER_SECOND` (0: no limit).
    fn admit_event(&self) -> bool {
        let max = self.state.config.max_events_per_second;
        max == 0 || self.state.events.admit(max, Instant::now())
    }

    /// The next instant [`Session::on_timer`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let delayed = self.delayed.front().map(|(at, _)| *at);
        [delayed, self.channels.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Send join errors whose backoff has elapsed, close channels whose token expired and start
    /// the due policy re-checks.
    pub fn on_timer(&mut self, now: Instant) {
        while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, frame)) = self.delayed.pop_front() {
                self.conn.push_charged(frame);
            }
        }
        let now_unix = unix_now();
        for topic in self.channels.expired(now) {
            if let Some(ch) = self.channels.get(&topic) {
                let secs_ago = now_unix.saturating_sub(ch.claims.exp).max(0);
                self.shutdown_channel(&topic, &AuthError::Expired { secs_ago }.to_string());
            }
        }
        let next = now + self.state.config.policy_recheck();
        for topic in self.channels.due_rechecks(now) {
            if let Some(ch) = self.channels.get_mut(&topic) {
                ch.recheck_at = Some(next);
            }
            self.reevaluate(&topic, Reevaluation::Periodic);
        }
    }

    /// The next finished database work; pending while there is none.
    pub async fn db_done(&mut self) -> DbDone {
        match self.db_work.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    pub fn on_db_done(&mut self, done: DbDone) {
        match done {
            DbDone::Policies(evaluated) => {
                self.evaluations = self.evaluations.saturating_sub(1);
                self.on_evaluated(evaluated)
            }
            DbDone::PresenceState(loaded) => self.on_presence_state(loaded),
            DbDone::Subscribed(subscribed) => self.on_subscribed(subscribed),
        }
    }

    /// Act on a policy verdict: answer the join, or update or close the channel.
    fn on_evaluated(&mut self, done: Evaluated) {
        let Evaluated {
            topic,
            ticket,
            result,
        } = done;
        let sub = channel::sub_topic(&topic).unwrap_or_default().to_owned();
        if let Entry::Occupied(pending) = self.joining.entry(topic.clone()) {
            if pending.get().ticket == ticket {
                let join = pending.remove();
                return self.finish_join(topic, sub, join, result);
            }
        }
        let Some(ch) = self.channels.get_mut(&topic) else {
            return; // left, or a superseded join
        };
        if ch.ticket != ticket {
            return; // the channel was joined again since
        }
        let Some(kind) = ch.reevaluating.take() else {
            return;
        };
        let presence_enabled = ch.presence_enabled;
        if std::mem::take(&mut ch.reevaluate_again) {
            // The token changed while this ran: its verdict is already stale.
            return self.reevaluate(&topic, Reevaluation::Refresh);
        }
        match result {
            Ok(permissions) if permissions.can_read(presence_enabled) => {
                self.grant(&topic, permissions)
            }
            Ok(_) => self.shutdown_channel(&topic, &read_revoked(&sub)),
            Err(err) => {
                self.log_policy_error(&topic, &err);
                // A periodic re-check keeps the channel through a database outage; a refresh
                // reports it, as Realtime does.
                if !(kind == Reevaluation::Periodic && err.is_transient()) {
                    self.shutdown_channel(&topic, &err.close_message(&sub));
                }
            }
        }
    }

    fn finish_join(
        &mut self,
        topic: String,
        sub: String,
        join: PendingJoin,
        result: Result<Permissions, PolicyError>,
    ) {
        let PendingJoin {
            join_ref,
            msg_ref,
            grant,
            ..
        } = join;
        match result {
            Ok(permissions) if permissions.can_read(grant.config.presence_enabled) => {
                self.accept(topic, sub, join_ref, msg_ref, grant, permissions)
            }
            Ok(_) => self.refuse(join_ref, msg_ref, topic, JoinError::Unauthorized(sub)),
            Err(err) => {
                self.log_policy_error(&topic, &err);
                self.refuse(join_ref, msg_ref, topic, err.join_error(&sub))
            }
        }
    }

    fn join(&mut self, msg: Inbound) {
        let Inbound {
            join_ref,
            msg_ref,
            topic,
            payload,
            ..
        } = msg;
        let Some(sub) = channel::sub_topic(&topic).map(str::to_owned) else {
            return self.reply(
                None,
                msg_ref.as_deref(),
                &topic,
                "error",
                json!({ "reason": UNMATCHED_TOPIC }),
            );
        };
        self.joining.remove(&topic);
        // A duplicate join closes the old instance first (Phoenix); the client ignores this
        // phx_close because it carries the old join_ref.
        if let Some(old) = self.channels.remove(&topic) {
            self.release(&old);
            let old_ref = old.join_ref.as_deref();
            self.push(old_ref, old_ref, &topic, "phx_close", &json!({}));
        }
        let payload = match &payload {
            InPayload::Json(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            InPayload::User(_) => Value::Null,
        };
        match self.authorize(&sub, &payload) {
            Ok(grant) if grant.config.private => {
                let subject = Subject::new(&grant.claims, &sub, self.headers.clone());
                let ticket = self.evaluate(&topic, subject);
                let pending = PendingJoin {
                    ticket,
                    join_ref,
                    msg_ref,
                    grant,
                };
                self.joining.insert(topic, pending);
            }
            Ok(grant) => self.accept(topic, sub, join_ref, msg_ref, grant, Permissions::PUBLIC),
            Err(err) => self.refuse(join_ref, msg_ref, topic, err),
        }
    }

    /// Join checks in Realtime's order of precedence (docs/protocol.md §3.3); the policies of a
    /// private channel are evaluated afterwards, asynchronously.
    fn authorize(&self, sub: &str, payload: &Value) -> Result<Grant, JoinError> {
        if sub.is_empty() {
            return Err(JoinError::TopicNameRequired);
        }
        let max_topic = self.state.config.max_topic_bytes;
        if sub.len() > channel::max_sub_topic_bytes(max_topic) {
            return Err(JoinError::TopicTooLong(max_topic));
        }
        if !validate::text_storable(sub) {
            return Err(JoinError::TopicNul);
        }
        // Evaluations in flight count too, so a client cannot pile up database work.
        if self.channels.len() + self.evaluations
            >= self.state.config.max_channels_per_client as usize
        {
            return Err(JoinError::TooManyChannels);
        }
        let config = JoinConfig::parse(payload);
        if config
            .presence_key
            .as_deref()
            .is_some_and(|key| !validate::text_storable(key))
        {
            return Err(JoinError::PresenceKeyNul);
        }
        let token = channel::join_token(payload, &self.conn_token);
        // The connection's token is shared, not copied, by the channels it authorizes.
        let token: Arc<str> = if token == &*self.conn_token {
            self.conn_token.clone()
        } else {
            token.into()
        };
        let claims = self.state.auth.verify(&token)?;
        Ok(Grant {
            config,
            token,
            claims,
        })
    }

    /// Answer a join with an error after the backoff.
    fn refuse(
        &mut self,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        err: JoinError,
    ) {
        tracing::info!(conn = self.conn.id, topic, reason = %err, "join refused");
        let reply = Reply {
            status: "error",
            response: json!({ "reason": err.to_string() }),
        };
        let frame = codec::encode(
            self.conn.vsn,
            join_ref.as_deref(),
            msg_ref.as_deref(),
            &topic,
            "phx_reply",
            &reply,
        );
        if self.delayed.len() >= self.state.config.max_pending_join_errors as usize {
            tracing::info!(
                conn = self.conn.id,
                "too many refused joins pending, closing the connection"
            );
            return self.conn.close(CloseReason::TooManyJoinErrors);
        }
        // The reply echoes the client's topic: it counts against CLIENT_QUEUE_BYTES while it
        // waits.
        if !self.conn.charge(frame.len()) {
            return;
        }
        let at = Instant::now() + self.state.config.channel_error_backoff();
        self.delayed.push_back((at, frame));
    }

    fn accept(
        &mut self,
        topic: String,
        sub: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        grant: Grant,
        permissions: Permissions,
    ) {
        let Grant {
            config,
            token,
            claims,
        } = grant;
        let key = TopicKey {
            sub_topic: sub.clone(),
            private: config.private,
        };
        let sub_id = permissions.broadcast_read.then(|| {
            self.state
                .registry
                .subscribe(key.clone(), self.conn.clone())
        });
        let echo: Vec<Value> = config
            .postgres_changes
            .iter()
            .map(channel::postgres_change_echo)
            .collect();
        let bindings = parse_bindings(
            &self.state.config,
            &config.postgres_changes,
            &echo,
            self.channels.postgres_changes(),
        );
        let binding_count = match &bindings {
            Ok(Some(_)) => echo.len(),
            _ => 0,
        };
        let recheck_at = config
            .private
            .then(|| Instant::now() + self.state.config.policy_recheck());
        self.channels.insert(
            topic.clone(),
            Channel {
                join_ref: join_ref.clone(),
                key,
                sub_id,
                broadcast_self: config.broadcast_self,
                broadcast_ack: config.broadcast_ack,
                presence_enabled: config.presence_enabled,
                presence_key: config
                    .presence_key
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                presence_sub: None,
                tracked: None,
                permissions,
                token,
                expires_at: channel::deadline(claims.exp, unix_now()),
                claims,
                recheck_at,
                registration: self.state.changes.next_channel(),
                bindings: bindings.as_ref().ok().cloned().flatten(),
                binding_count,
                change_subs: Vec::new(),
                changes_ticket: 0,
                held_reply: None,
                ticket: 0,
                reevaluating: None,
                reevaluate_again: false,
            },
        );
        tracing::debug!(conn = self.conn.id, topic, "joined");
        match (bindings, config.changes_wait) {
            (Err(message), Some(_)) => {
                if let Some(ch) = self.channels.remove(&topic) {
                    self.release(&ch);
                }
                return self.refuse(join_ref, msg_ref, topic, JoinError::ChangesRefused(message));
            }
            (Ok(Some(_)), Some(wait)) => {
                if let Some(ch) = self.channels.get_mut(&topic) {
                    ch.held_reply = Some(HeldReply { msg_ref, echo });
                }
                self.subscribe_changes(&topic, Some(wait));
            }
            (bindings, _) => {
                self.reply(
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    &topic,
                    "ok",
                    json!({ "postgres_changes": echo }),
                );
                match bindings {
                    Ok(Some(_)) => self.subscribe_changes(&topic, None),
                    Ok(None) => {}
                    Err(message) => self.changes_status(&topic, "error", &message),
                }
            }
        }
        if config.presence_enabled && permissions.presence_read {
            self.subscribe_presence(&topic, true);
        }
    }

    /// Create (again) a channel's Postgres Changes subscriptions with its current claims.
    fn subscribe_changes(&mut self, topic: &str, wait: Option<Duration>) {
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        let Some(bindings) = ch.bindings.clone() else {
            return;
        };
        ch.changes_ticket += 1;
        let (registration, ticket) = (ch.registration, ch.changes_ticket);
        let claims = ch.claims.json.clone();
        let (state, topic) = (self.state.clone(), topic.to_owned());
        self.db_work.push(Box::pin(async move {
            let result = changes::subscribe(&state, &claims, &bindings, wait).await;
            DbDone::Subscribed(Subscribed {
                topic,
                registration,
                ticket,
                result,
            })
        }));
    }

    fn on_subscribed(&mut self, done: Subscribed) {
        let Subscribed {
            topic,
            registration,
            ticket,
            result,
        } = done;
        let current = self
            .channels
            .get(&topic)
            .is_some_and(|ch| ch.registration == registration && ch.changes_ticket == ticket);
        let Some(ch) = self.channels.get_mut(&topic).filter(|_| current) else {
            // The channel ended or subscribed again meanwhile: these rows serve nobody.
            if let Ok(subs) = &result {
                let ids: Vec<i64> = subs.iter().map(|(_, id)| *id).collect();
                self.state.unsubscriber.forget(&ids);
            }
            return;
        };
        let held = ch.held_reply.take();
        let join_ref = ch.join_ref.clone();
        match result {
            Ok(subs) => {
                self.state.changes.unregister(&ch.change_subs);
                self.state.unsubscriber.forget(&ch.change_subs);
                self.state
                    .changes
                    .register(&self.conn, &topic, registration, &subs);
                ch.change_subs = subs.iter().map(|(_, id)| *id).collect();
                if let Some(HeldReply { msg_ref, echo }) = held {
                    let response = json!({ "postgres_changes": echo });
                    self.reply(
                        join_ref.as_deref(),
                        msg_ref.as_deref(),
                        &topic,
                        "ok",
                        response,
                    );
                }
                self.changes_status(&topic, "ok", SUBSCRIBED_TO_POSTGRES);
            }
            Err(failure) => {
                tracing::info!(
                    conn = self.conn.id,
                    topic,
                    ?failure,
                    "postgres_changes subscription failed"
                );
                if let Some(HeldReply { msg_ref, .. }) = held {
                    if let Some(ch) = self.channels.remove(&topic) {
                        self.release(&ch);
                    }
                    let err = match failure {
                        SubscribeFailure::Refused(message) => JoinError::ChangesRefused(message),
                        SubscribeFailure::Timeout(ms) => JoinError::ChangesTimeout(ms),
                    };
                    return self.refuse(join_ref, msg_ref, topic, err);
                }
                let message = match failure {
                    SubscribeFailure::Refused(message) => message,
                    SubscribeFailure::Timeout(ms) => JoinError::ChangesTimeout(ms).to_string(),
                };
                self.changes_status(&topic, "error", &message);
            }
        }
    }

    /// A `postgres_changes` `system` message on a joined channel (§6.3).
    fn changes_status(&self, topic: &str, status: &str, message: &str) {
        let Some(ch) = self.channels.get(topic) else {
            return;
        };
        let system = System {
            extension: "postgres_changes",
            status,
            message,
            channel: &ch.key.sub_topic,
        };
        self.push(ch.join_ref.as_deref(), None, topic, "system", &system);
    }

    /// Start delivering presence diffs to a joined channel; with `send_state`, also load and
    /// send its `presence_state`.
    fn subscribe_presence(&mut self, topic: &str, send_state: bool) {
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        if ch.presence_sub.is_some() {
            return;
        }
        let (id, local) = self.state.presence.subscribe(&ch.key, self.conn.clone());
        ch.presence_sub = Some(id);
        if !send_state {
            return;
        }
        let (state, key, join_ref) = (self.state.clone(), ch.key.clone(), ch.join_ref.clone());
        let topic = topic.to_owned();
        self.db_work.push(Box::pin(async move {
            let remote = presence::remote_state(&state, &key).await;
            DbDone::PresenceState(PresenceState {
                topic,
                join_ref,
                local,
                remote,
            })
        }));
    }

    fn on_presence_state(&mut self, loaded: PresenceState) {
        let PresenceState {
            topic,
            join_ref,
            local,
            remote,
        } = loaded;
        let Some(ch) = self.channels.get(&topic) else {
            return;
        };
        if ch.join_ref != join_ref || ch.presence_sub.is_none() {
            return;
        }
        let mut metas = remote.unwrap_or_else(|err| {
            // This sidecar's own presences are still right; the diffs will bring the rest.
            tracing::warn!(conn = self.conn.id, topic, error = %err, "presence state incomplete: database unavailable");
            Vec::new()
        });
        metas.extend(local);
        let state = presence::state_json(&metas);
        self.push(join_ref.as_deref(), None, &topic, "presence_state", &state);
    }

    /// Apply a new verdict to a joined channel: (un)subscribe broadcasts to match it.
    fn grant(&mut self, topic: &str, permissions: Permissions) {
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        match (permissions.broadcast_read, ch.sub_id) {
            (true, None) => {
                ch.sub_id = Some(
                    self.state
                        .registry
                        .subscribe(ch.key.clone(), self.conn.clone()),
                )
            }
            (false, Some(id)) => {
                self.state.registry.unsubscribe(&ch.key, id);
                ch.sub_id = None;
            }
            _ => {}
        }
        if let (false, Some(id)) = (permissions.presence_read, ch.presence_sub) {
            self.state.presence.unsubscribe(&ch.key, id);
            ch.presence_sub = None;
        }
        ch.permissions = permissions;
    }

    fn leave(&mut self, topic: &str, msg_ref: Option<&str>) {
        let Some(ch) = self.channels.remove(topic) else {
            return;
        };
        self.release(&ch);
        let join_ref = ch.join_ref.as_deref();
        self.reply(join_ref, msg_ref, topic, "ok", json!({}));
        self.push(join_ref, join_ref, topic, "phx_close", &json!({}));
    }

    fn broadcast(&self, topic: &str, msg_ref: Option<&str>, payload: InPayload) {
        let Some(ch) = self.channels.get(topic) else {
            return;
        };
        if !ch.permissions.broadcast_write {
            tracing::debug!(
                conn = self.conn.id,
                topic,
                "broadcast denied by policy, dropped"
            );
            let reason = write_denied(&ch.key.sub_topic);
            self.ack(ch, topic, msg_ref, "error", json!({ "reason": reason }));
            return;
        }
        let msg = match payload {
            InPayload::User(user) => Broadcast::User(user),
            InPayload::Json(raw) if raw.get().starts_with('{') => Broadcast::Json(raw),
            InPayload::Json(_) => {
                tracing::debug!(
                    conn = self.conn.id,
                    topic,
                    "broadcast payload is not an object, ignored"
                );
                return;
            }
        };
        let remote = msg.user_parts();
        if let Some(reason) = self.refusal(&msg, remote.as_ref()) {
            tracing::debug!(conn = self.conn.id, topic, reason, "broadcast refused");
            self.ack(ch, topic, msg_ref, "error", json!({ "reason": reason }));
            return;
        }
        let size = remote.as_ref().map_or(0, |(_, payload)| payload.len());
        if size > self.state.config.max_payload_bytes as usize {
            tracing::debug!(
                conn = self.conn.id,
                topic,
                size,
                "broadcast payload too large, dropped"
            );
            self.ack(ch, topic, msg_ref, "error", json!(PAYLOAD_SIZE_EXCEEDED));
            return;
        }
        let exclude = ch.sub_id.filter(|_| !ch.broadcast_self);
        self.state.registry.publish(&ch.key, &msg, exclude);
        if let Some((event, payload)) = remote {
            self.state.publisher.publish(Outgoing {
                key: ch.key.clone(),
                extension: "broadcast",
                event,
                payload,
            });
        }
        self.ack(ch, topic, msg_ref, "ok", json!({}));
    }

    /// Answer a broadcast push if the channel asked for acknowledgements (`broadcast.ack`).
    fn ack(
        &self,
        ch: &Channel,
        topic: &str,
        msg_ref: Option<&str>,
        status: &'static str,
        response: Value,
    ) {
        if ch.broadcast_ack {
            self.reply(ch.join_ref.as_deref(), msg_ref, topic, status, response);
        }
    }

    /// Why a broadcast may not be sent: an event name over `MAX_EVENT_BYTES`, or text the
    /// database cannot store (every broadcast also goes to the other sidecars through it).
    fn refusal(&self, msg: &Broadcast, remote: Option<&(String, UserPayload)>) -> Option<String> {
        let max_event = self.state.config.max_event_bytes;
        if remote.is_some_and(|(event, _)| event.len() > max_event as usize) {
            return Some(event_too_long(max_event));
        }
        let storable = match msg {
            Broadcast::Json(raw) => validate::json_storable(raw.get()),
            Broadcast::User(user) => {
                validate::text_storable(&user.event)
                    && match &user.payload {
                        UserPayload::Json(raw) => validate::json_storable(raw.get()),
                        UserPayload::Binary(_) => true,
                    }
            }
        };
        (!storable).then(|| UNSTORABLE.to_owned())
    }

    /// `presence` push: `track` / `untrack` (docs/protocol.md §5.1, limits §5.5).
    fn presence(&mut self, topic: &str, msg_ref: Option<&str>, payload: InPayload) {
        let push: Value = match &payload {
            InPayload::Json(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            InPayload::User(_) => Value::Null,
        };
        let event = push
            .get("event")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        let now = Instant::now();
        let config = &self.state.config;
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        let join_ref = ch.join_ref.clone();
        let outcome = match event.as_deref() {
            _ if !ch.permissions.presence_write => PresenceOutcome::Error(json!({})),
            Some(event @ ("track" | "untrack")) => {
                let calls = count_presence_call(&mut self.presence_calls, config, topic, now);
                if calls > config.presence_max_calls as usize {
                    PresenceOutcome::Close(PRESENCE_RATE_LIMITED)
                } else if !self
                    .state
                    .presence
                    .rate
                    .admit(config.max_presence_events_per_second, now)
                {
                    PresenceOutcome::Close(PRESENCE_TOO_MANY)
                } else if event == "track" {
                    track(ch, push.get("payload"), config.max_payload_bytes as usize)
                } else {
                    let leaves = ch
                        .tracked
                        .take()
                        .map(|meta| (ch.presence_key.clone(), meta));
                    PresenceOutcome::Changed(Diff {
                        joins: Vec::new(),
                        leaves: leaves.into_iter().collect(),
                    })
                }
            }
            _ => PresenceOutcome::Error(json!({})),
        };
        match outcome {
            PresenceOutcome::Changed(diff) => {
                let key = ch.key.clone();
                if ch.permissions.presence_read {
                    // Tracking turns presence on for the channel (without a presence_state), so
                    // it hears its own change too.
                    self.subscribe_presence(topic, false);
                }
                self.reply(join_ref.as_deref(), msg_ref, topic, "ok", json!({}));
                self.state
                    .presence
                    .change(&self.state.publisher, &key, &diff);
            }
            PresenceOutcome::Unchanged => {
                self.reply(join_ref.as_deref(), msg_ref, topic, "ok", json!({}))
            }
            PresenceOutcome::Error(response) => {
                self.reply(join_ref.as_deref(), msg_ref, topic, "error", response)
            }
            PresenceOutcome::Close(message) => self.shutdown_channel(topic, message),
        }
    }

    /// `access_token` push: never answered; an invalid token closes the channel, a valid one
    /// re-evaluates a private channel's policies with the new claims (§7.1).
    fn refresh_token(&mut self, topic: &str, payload: InPayload) {
        let InPayload::Json(raw) = payload else {
            return;
        };
        let Ok(payload) = serde_json::from_str::<Value>(raw.get()) else {
            return;
        };
        let Some(token) = payload.get("access_token").and_then(Value::as_str) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        if token.starts_with("sb_") || token == &*ch.token {
            return;
        }
        match self.state.auth.verify(token) {
            Ok(claims) => {
                ch.token = token.into();
                ch.expires_at = channel::deadline(claims.exp, unix_now());
                ch.claims = claims;
                let private = ch.key.private;
                // Postgres Changes are re-created with the new claims (a new system message).
                self.subscribe_changes(topic, None);
                if private {
                    self.reevaluate(topic, Reevaluation::Refresh);
                }
            }
            Err(err) => self.shutdown_channel(topic, &err.refresh_message()),
        }
    }

    /// Start evaluating a joined channel's policies with its current claims, unless one is
    /// already running (then a refresh asks for one more round when it finishes).
    fn reevaluate(&mut self, topic: &str, kind: Reevaluation) {
        let Some(ch) = self.channels.get_mut(topic) else {
            return;
        };
        if ch.reevaluating.is_some() {
            ch.reevaluate_again |= kind == Reevaluation::Refresh;
            return;
        }
        ch.reevaluating = Some(kind);
        let subject = Subject::new(&ch.claims, &ch.key.sub_topic, self.headers.clone());
        let ticket = self.evaluate(topic, subject);
        if let Some(ch) = self.channels.get_mut(topic) {
            ch.ticket = ticket;
        }
    }

    /// Start a policy evaluation owned by this session; returns its ticket.
    fn evaluate(&mut self, topic: &str, subject: Subject) -> u64 {
        self.last_ticket += 1;
        let (pool, topic, ticket) = (self.state.db.clone(), topic.to_owned(), self.last_ticket);
        self.evaluations += 1;
        self.db_work.push(Box::pin(async move {
            let result = policies::evaluate(pool, subject).await;
            DbDone::Policies(Evaluated {
                topic,
                ticket,
                result,
            })
        }));
        ticket
    }

    fn log_policy_error(&self, topic: &str, err: &PolicyError) {
        tracing::warn!(conn = self.conn.id, topic, error = %err, "private channel policies could not be evaluated");
    }

    /// Server-side channel close: `system` error, then `phx_close` with `ref = join_ref`.
    fn shutdown_channel(&mut self, topic: &str, message: &str) {
        let Some(ch) = self.channels.remove(topic) else {
            return;
        };
        self.release(&ch);
        tracing::info!(
            conn = self.conn.id,
            topic,
            message,
            "channel closed by server"
        );
        let join_ref = ch.join_ref.as_deref();
        let system = System {
            extension: "system",
            status: "error",
            message,
            channel: &ch.key.sub_topic,
        };
        self.push(join_ref, None, topic, "system", &system);
        self.push(join_ref, join_ref, topic, "phx_close", &json!({}));
    }

    /// Drop a removed channel's subscriptions; its tracked presence leaves.
    fn release(&self, ch: &Channel) {
        release(&self.state, ch);
    }

    fn reply(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        status: &'static str,
        response: Value,
    ) {
        self.push(
            join_ref,
            msg_ref,
            topic,
            "phx_reply",
            &Reply { status, response },
        );
    }

    fn push<P: Serialize>(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &P,
    ) {
        self.conn.push(codec::encode(
            self.conn.vsn,
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        ));
    }
}

enum PresenceOutcome {
    Changed(Diff),
    Unchanged,
    Error(Value),
    Close(&'static str),
}

/// Record a presence call on `topic` at `now`; the calls within the window, this one included.
/// Topics without a call in the window are forgotten once the map outgrows a connection's
/// channels, so the map stays as small as the calls the rate limits let through.
fn count_presence_call(
    calls: &mut HashMap<String, VecDeque<Instant>>,
    config: &Config,
    topic: &str,
    now: Instant,
) -> usize {
    let window = config.presence_window();
    let recent = |at: &Instant| now.duration_since(*at) < window;
    if calls.len() > 2 * config.max_channels_per_client as usize {
        calls.retain(|_, list| list.back().is_some_and(recent));
    }
    let list = calls.entry(topic.to_owned()).or_default();
    list.push_back(now);
    while list.front().is_some_and(|at| !recent(at)) {
        list.pop_front();
    }
    list.len()
}

/// A `track` on `ch`: the new meta joins, the one it replaces (if any) leaves.
fn track(ch: &mut Channel, payload: Option<&Value>, max_bytes: usize) -> PresenceOutcome {
    let meta = match payload {
        None => Map::new(),
        Some(Value::Object(meta)) => meta.clone(),
        Some(_) => return PresenceOutcome::Error(json!({ "reason": PRESENCE_NOT_A_MAP })),
    };
    if !meta
        .iter()
        .all(|(k, v)| validate::text_storable(k) && validate::value_storable(v))
    {
        return PresenceOutcome::Error(json!({ "reason": UNSTORABLE }));
    }
    if Value::Object(meta.clone()).to_string().len() > max_bytes {
        return PresenceOutcome::Close(PRESENCE_TOO_LARGE);
    }
    let unchanged = ch.tracked.as_ref().is_some_and(|old| {
        let mut old = old.clone();
        old.remove("phx_ref");
        old == meta
    });
    if unchanged {
        return PresenceOutcome::Unchanged;
    }
    let mut joined = meta;
    joined.insert("phx_ref".into(), presence::new_ref().into());
    let old = ch.tracked.take();
    if let Some(prev) = old.as_ref().and_then(|m| m.get("phx_ref")) {
        joined.insert("phx_ref_prev".into(), prev.clone());
    }
    let mut stored = joined.clone();
    stored.remove("phx_ref_prev");
    ch.tracked = Some(stored);
    let key = ch.presence_key.clone();
    PresenceOutcome::Changed(Diff {
        joins: vec![(key.clone(), joined)],
        leaves: old.map(|meta| (key, meta)).into_iter().collect(),
    })
}

/// The `_subscribe` form of a join's `postgres_changes` entries (`None`: there are none), or the
/// error for the client: too many entries (for the channel, or with the `others` the
/// connection's other channels have), else the first entry's error.
fn parse_bindings(
    config: &Config,
    entries: &[Map<String, Value>],
    echo: &[Value],
    others: usize,
) -> Result<Option<Arc<str>>, String> {
    if entries.is_empty() {
        return Ok(None);
    }
    let per_channel = config.max_postgres_changes_per_channel;
    if entries.len() > per_channel as usize {
        return Err(FilterError::TooManyForChannel(per_channel).to_string());
    }
    let per_client = config.max_postgres_changes_per_client;
    if others + entries.len() > per_client as usize {
        return Err(FilterError::TooManyForClient(per_client).to_string());
    }
    let max_conditions = config.max_filter_conditions;
    let mut bindings = Vec::with_capacity(entries.len());
    for (entry, echoed) in entries.iter().zip(echo) {
        let binding = filter::parse_binding(entry).map_err(|err| err.to_string())?;
        if binding.filters.len() > max_conditions as usize {
            return Err(FilterError::TooManyConditions(max_conditions).to_string());
        }
        bindings.push((echoed["id"].as_u64().unwrap_or_default(), binding));
    }
    Ok(Some(changes::bindings_json(&bindings).into()))
}

fn release(state: &AppState, ch: &Channel) {
    state.changes.unregister(&ch.change_subs);
    state.unsubscriber.forget(&ch.change_subs);
    if let Some(id) = ch.sub_id {
        state.registry.unsubscribe(&ch.key, id);
    }
    if let Some(id) = ch.presence_sub {
        state.presence.unsubscribe(&ch.key, id);
    }
    if let Some(meta) = &ch.tracked {
        let diff = Diff {
            joins: Vec::new(),
            leaves: vec![(ch.presence_key.clone(), meta.clone())],
        };
        state.presence.change(&state.publisher, &ch.key, &diff);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, ch) in self.channels.drain() {
            release(&self.state, &ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::app::tests::test_state;
    use crate::auth::tests::{token, valid_token};
    use crate::codec::Vsn;
    use crate::fanout::{Outbox, QueueLimits};

    fn state() -> Arc<AppState> {
        state_with(&[])
    }

    fn state_with(extra: &[&str]) -> Arc<AppState> {
        let fixed = [
            "--channel-error-backoff-ms=0",
            "--max-channels-per-client=2",
            "--client-queue-frames=16",
        ];
        test_state(&[&fixed[..], extra].concat())
    }

    struct Client {
        session: Session,
        rx: Outbox,
    }

    impl Client {
        fn new(state: &Arc<AppState>) -> Self {
            let limits = state.config.queue_limits();
            let (conn, rx) =
                ConnHandle::new(state.next_conn_id(), Vsn::V2, limits, &state.shutdown);
            let session = Session::new(state.clone(), conn, valid_token().into(), "{}".into());
            Client { session, rx }
        }

        fn send(&mut self, text: &str) {
            let msg = codec::decode_text(Vsn::V2, text).expect("test frame decodes");
            self.session.handle(msg);
            self.session.on_timer(Instant::now());
        }

        fn recv(&mut self) -> Value {
            match self.rx.try_recv().expect("a frame was sent") {
                Frame::Text(t) => serde_json::from_str(t.as_str()).expect("JSON frame"),
                Frame::Binary(b) => json!({ "binary": b.to_vec() }),
            }
        }

        fn assert_silent(&mut self) {
            assert!(self.rx.try_recv().is_none(), "no frame expected");
        }

        fn join(&mut self, topic: &str, join_ref: &str, config: Value) -> Value {
            self.send(
                &json!([join_ref, join_ref, topic, "phx_join", { "config": config }]).to_string(),
            );
            self.recv()
        }
    }

    #[test]
    fn heartbeat_and_unmatched_topic() {
        let state = state();
        let mut c = Client::new(&state);
        c.send(r#"[null,"15","phoenix","heartbeat",{}]"#);
        assert_eq!(
            c.recv(),
            json!([null, "15", "phoenix", "phx_reply", {"status":"ok","response":{}}])
        );
        c.send(r#"["3","16","realtime:nope","broadcast",{}]"#);
        assert_eq!(
            c.recv(),
            json!([null, "16", "realtime:nope", "phx_reply", {"status":"error","response":{"reason":"unmatched topic"}}])
        );
        c.send(r#"["3","17","realtime:nope","phx_leave",{}]"#);
        assert_eq!(
            c.recv(),
            json!(["3", "17", "realtime:nope", "phx_reply", {"status":"ok","response":{}}])
        );
        c.send(r#"["4","4","elsewhere","phx_join",{}]"#);
        assert_eq!(c.recv()[4]["response"]["reason"], "unmatched topic");
    }

    #[test]
    fn join_broadcast_ack_self_and_leave() {
        let state = state();
        let mut a = Client::new(&state);
        let mut b = Client::new(&state);
        let ok = a.join(
            "realtime:room1",
            "6",
            json!({"broadcast":{"self":false,"ack":true}}),
        );
        assert_eq!(
            ok,
            json!(["6", "6", "realtime:room1", "phx_reply", {"status":"ok","response":{"postgres_changes":[]}}])
        );
        b.join("realtime:room1", "1", json!({"broadcast":{"self":true}}));

        let push = json!({"type":"broadcast","event":"cursor","payload":{"x":1}});
        a.send(&json!(["6", "10", "realtime:room1", "broadcast", push]).to_string());
        assert_eq!(
            a.recv(),
            json!(["6", "10", "realtime:room1", "phx_reply", {"status":"ok","response":{}}])
        );
        a.assert_silent(); // self: false
        assert_eq!(
            b.recv(),
            json!([null, null, "realtime:room1", "broadcast", push])
        );

        // b has self: true and no ack; stale join_ref is accepted.
        b.send(&json!(["0", "2", "realtime:room1", "broadcast", push]).to_string());
        assert_eq!(b.recv()[3], "broadcast");
        b.assert_silent();
        assert_eq!(a.recv()[3], "broadcast");

        a.send(r#"["6","11","realtime:room1","phx_leave",{}]"#);
        assert_eq!(
            a.recv(),
            json!(["6", "11", "realtime:room1", "phx_reply", {"status":"ok","response":{}}])
        );
        assert_eq!(
            a.recv(),
            json!(["6", "6", "realtime:room1", "phx_close", {}])
        );
        b.send(&json!(["1", "3", "realtime:room1", "broadcast", push]).to_string());
        b.recv();
        a.assert_silent();
    }

    #[test]
    fn binary_push_fans_out_as_kind4() {
        let state = state();
        let mut a = Client::new(&state);
        let mut b = Client::new(&state);
        a.join("realtime:room1", "6", json!({}));
        b.join("realtime:room1", "7", json!({}));
        let frame = bytes::Bytes::from_static(&[
            0x03, 0x01, 0x02, 0x0e, 0x03, 0x00, 0x00, b'6', b'1', b'1', b'r', b'e', b'a', b'l',
            b't', b'i', b'm', b'e', b':', b'r', b'o', b'o', b'm', b'1', b'b', b'i', b'n', 0x09,
            0x08, 0x07,
        ]);
        a.session
            .handle(codec::decode_binary(Vsn::V2, frame).expect("kind 3"));
        let mut expected = vec![4, 0x0e, 0x03, 0x00, 0x00];
        expected.extend_from_slice(b"realtime:room1bin\x09\x08\x07");
        assert_eq!(b.recv(), json!({ "binary": expected }));
        a.assert_silent();
    }

    #[test]
    fn join_errors() {
        let state = state();
        let mut c = Client::new(&state);
        let reason = |v: Value| v[4]["response"]["reason"].as_str().map(str::to_owned);
        assert_eq!(
            reason(c.join("realtime:", "1", json!({}))).as_deref(),
            Some("TopicNameRequired: You must provide a topic name")
        );
        let expired = token(&json!({"role":"anon","exp": unix_now() - 5}));
        c.send(
            &json!(["3", "3", "realtime:a", "phx_join", {"config": {}, "access_token": expired}])
                .to_string(),
        );
        let r = reason(c.recv()).unwrap_or_default();
        assert!(r.starts_with("InvalidJWTToken: Token has expired "), "{r}");
        c.send(r#"["4","4","realtime:a","phx_join",{"config":{},"access_token":"nope"}]"#);
        assert_eq!(
            reason(c.recv()).as_deref(),
            Some("MalformedJWT: The token provided is not a valid JWT")
        );
        c.join("realtime:a", "5", json!({}));
        c.join("realtime:b", "6", json!({}));
        assert_eq!(
            reason(c.join("realtime:c", "7", json!({}))).as_deref(),
            Some("ChannelRateLimitReached: Too many channels")
        );
    }

    const READ_ONLY: Permissions = Permissions {
        broadcast_read: true,
        broadcast_write: false,
        presence_read: false,
        presence_write: false,
    };

    fn private_key(sub: &str) -> TopicKey {
        TopicKey {
            sub_topic: sub.into(),
            private: true,
        }
    }

    fn empty_broadcast() -> Broadcast {
        Broadcast::Json(serde_json::value::RawValue::from_string("{}".into()).expect("json"))
    }

    impl Client {
        /// Deliver a verdict for the evaluation in flight on `topic` (a join or a joined channel).
        fn verdict(&mut self, topic: &str, result: Result<Permissions, PolicyError>) {
            let ticket = match self.session.joining.get(topic) {
                Some(join) => join.ticket,
                None => self.session.channels.get(topic).expect("channel").ticket,
            };
            // The real evaluations are never polled here; drop them as if they had finished.
            self.session.db_work.clear();
            self.session.evaluations = 0;
            self.session.on_evaluated(Evaluated {
                topic: topic.into(),
                ticket,
                result,
            });
            self.session.on_timer(Instant::now());
        }

        /// A private join granted `permissions`, its reply consumed.
        fn joined_private(&mut self, topic: &str, permissions: Permissions) {
            self.private_join(topic, "1", json!({}));
            self.verdict(topic, Ok(permissions));
            assert_eq!(self.recv()[4]["status"], "ok");
        }

        fn private_join(&mut self, topic: &str, join_ref: &str, config: Value) {
            let mut config = config;
            config["private"] = json!(true);
            self.send(
                &json!([join_ref, join_ref, topic, "phx_join", {"config": config}]).to_string(),
            );
        }
    }

    #[test]
    fn private_join_is_answered_by_its_policies() {
        let state = state();
        let mut c = Client::new(&state);
        c.private_join("realtime:room1", "1", json!({}));
        c.assert_silent(); // waiting for the database
        c.verdict("realtime:room1", Ok(READ_ONLY));
        assert_eq!(c.recv()[4]["status"], "ok");
        assert_eq!(
            state
                .registry
                .publish(&private_key("room1"), &empty_broadcast(), None),
            1
        );
        assert_eq!(c.recv()[3], "broadcast");
        // A public channel of the same name is another namespace.
        assert_eq!(
            state.registry.publish(
                &TopicKey {
                    sub_topic: "room1".into(),
                    private: false
                },
                &empty_broadcast(),
                None
            ),
            0
        );
    }

    #[test]
    fn private_join_refusals() {
        let state = state();
        let mut c = Client::new(&state);
        let reason = |v: Value| v[4]["response"]["reason"].as_str().map(str::to_owned);
        let presence_only = Permissions {
            presence_read: true,
            ..Permissions::default()
        };
        c.private_join("realtime:a", "1", json!({}));
        c.verdict("realtime:a", Ok(presence_only));
        assert_eq!(
            reason(c.recv()).as_deref(),
            Some("Unauthorized: You do not have permissions to read from this Channel topic: a")
        );
        // Presence read is enough when the channel uses presence; no broadcasts then.
        c.private_join("realtime:a", "2", json!({"presence": {"enabled": true}}));
        c.verdict("realtime:a", Ok(presence_only));
        assert_eq!(c.recv()[4]["status"], "ok");
        let ch = c.session.channels.get("realtime:a").expect("joined");
        assert!(ch.presence_sub.is_some(), "receives presence diffs");
        assert_eq!(
            state
                .registry
                .publish(&private_key("a"), &empty_broadcast(), None),
            0
        );

        for (err, expected) in [
            (
                PolicyError::UnknownRole("ghost".into()),
                "Unauthorized: The role \"ghost\" of the token does not exist in the database",
            ),
            (
                PolicyError::PoolExhausted,
                "IncreaseConnectionPool: Please increase your connection pool size",
            ),
            (
                PolicyError::Unavailable("down".into()),
                "UnableToConnectToProject: Realtime was unable to connect to the project database",
            ),
            (
                PolicyError::Policy("division by zero".into()),
                "Unauthorized: You do not have permissions to read from this Channel topic: b",
            ),
        ] {
            c.private_join("realtime:b", "3", json!({}));
            c.verdict("realtime:b", Err(err));
            assert_eq!(reason(c.recv()).as_deref(), Some(expected));
        }
    }

    #[test]
    fn denied_broadcast_is_dropped_and_acked_with_an_error() {
        let state = state();
        let mut reader = Client::new(&state);
        let mut writer = Client::new(&state);
        reader.private_join("realtime:r", "1", json!({"broadcast": {"ack": true}}));
        reader.verdict("realtime:r", Ok(READ_ONLY));
        reader.recv();
        writer.private_join("realtime:r", "1", json!({}));
        writer.verdict("realtime:r", Ok(Permissions::PUBLIC));
        writer.recv();

        let push = json!({"type":"broadcast","event":"e","payload":{}});
        reader.send(&json!(["1", "5", "realtime:r", "broadcast", push]).to_string());
        assert_eq!(
            reader.recv(),
            json!(["1", "5", "realtime:r", "phx_reply", {"status":"error","response":{"reason":
                "Unauthorized: You do not have permissions to write to this Channel topic: r"}}])
        );
        writer.assert_silent();
        writer.send(&json!(["1", "6", "realtime:r", "broadcast", push]).to_string());
        assert_eq!(reader.recv()[3], "broadcast");
    }

    #[test]
    fn refresh_reevaluates_and_revocation_closes() {
        let state = state();
        let mut c = Client::new(&state);
        c.joined_private("realtime:r", READ_ONLY);
        let refresh = |n: u8| {
            let t = token(&json!({"role":"authenticated","sub": n,"exp": unix_now() + 60}));
            json!(["1", null, "realtime:r", "access_token", {"access_token": t}]).to_string()
        };
        c.send(&refresh(1));
        let first = c.session.channels.get("realtime:r").expect("joined").ticket;
        // A second refresh while the first runs: the first verdict is stale, one more round.
        c.send(&refresh(2));
        c.verdict("realtime:r", Ok(Permissions::default()));
        c.assert_silent();
        let second = c
            .session
            .channels
            .get("realtime:r")
            .expect("still joined")
            .ticket;
        assert_ne!(first, second);
        c.verdict("realtime:r", Ok(Permissions::default()));
        assert_eq!(
            c.recv(),
            json!(["1", null, "realtime:r", "system", {"extension":"system","status":"error",
                   "message":"You no longer have permission to read from this Channel topic: r","channel":"r"}])
        );
        assert_eq!(c.recv(), json!(["1", "1", "realtime:r", "phx_close", {}]));
        assert_eq!(
            state
                .registry
                .publish(&private_key("r"), &empty_broadcast(), None),
            0
        );
    }

    #[test]
    fn stale_verdicts_are_ignored() {
        let state = state();
        let mut c = Client::new(&state);
        c.private_join("realtime:s", "1", json!({}));
        let stale = c.session.joining.get("realtime:s").expect("pending").ticket;
        c.send(r#"["1","2","realtime:s","phx_leave",{}]"#);
        assert_eq!(c.recv()[4]["status"], "ok");
        c.session.on_evaluated(Evaluated {
            topic: "realtime:s".into(),
            ticket: stale,
            result: Ok(READ_ONLY),
        });
        c.assert_silent();
        assert!(c.session.channels.get("realtime:s").is_none());
    }

    #[test]
    fn periodic_recheck_survives_a_database_outage_but_not_a_revocation() {
        let state = state();
        let mut c = Client::new(&state);
        c.joined_private("realtime:p", READ_ONLY);
        let due = c
            .session
            .channels
            .get("realtime:p")
            .and_then(|ch| ch.recheck_at);
        c.session.on_timer(due.expect("a re-check is scheduled"));
        c.verdict("realtime:p", Err(PolicyError::Unavailable("down".into())));
        c.assert_silent();
        let due = c.session.next_deadline().expect("next re-check");
        c.session.on_timer(due);
        c.verdict("realtime:p", Ok(Permissions::default()));
        assert_eq!(c.recv()[3], "system");
        assert_eq!(c.recv()[3], "phx_close");
    }

    #[tokio::test]
    async fn private_join_without_a_database_is_a_clear_error() {
        let state = state();
        let mut c = Client::new(&state);
        c.private_join("realtime:x", "1", json!({}));
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), c.session.db_done())
            .await
            .expect("the evaluation ends");
        c.session.on_db_done(done);
        c.session.on_timer(Instant::now());
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "UnableToConnectToProject: Realtime was unable to connect to the project database"
        );
    }

    fn track(c: &mut Client, topic: &str, r: &str, payload: Value) {
        let push = json!({"type": "presence", "event": "track", "payload": payload});
        c.send(&json!(["1", r, topic, "presence", push]).to_string());
    }

    #[test]
    fn presence_track_update_untrack_and_leave() {
        let state = state();
        let mut a = Client::new(&state);
        let mut b = Client::new(&state);
        a.join("realtime:p", "1", json!({"presence": {"key": "alice"}}));
        b.join("realtime:p", "1", json!({"presence": {"enabled": true}}));

        track(&mut a, "realtime:p", "2", json!({"status": "online"}));
        assert_eq!(
            a.recv(),
            json!(["1", "2", "realtime:p", "phx_reply", {"status":"ok","response":{}}])
        );
        let diff = b.recv();
        assert_eq!(diff[3], "presence_diff");
        assert_eq!(diff[0], Value::Null);
        let meta = &diff[4]["joins"]["alice"]["metas"][0];
        assert_eq!(meta["status"], "online");
        let first_ref = meta["phx_ref"].as_str().expect("phx_ref").to_owned();
        assert_eq!(diff[4]["leaves"], json!({}));
        // Tracking turned presence on for a: it hears its own change (no presence_state).
        assert_eq!(a.recv()[3], "presence_diff");

        // Same payload: a no-op. New payload: an update (leave old meta, join new with prev).
        track(&mut a, "realtime:p", "3", json!({"status": "online"}));
        assert_eq!(a.recv()[4]["status"], "ok");
        b.assert_silent();
        track(&mut a, "realtime:p", "4", json!({"status": "away"}));
        assert_eq!(a.recv()[4]["status"], "ok");
        let diff = b.recv();
        assert_eq!(
            diff[4]["joins"]["alice"]["metas"][0]["phx_ref_prev"],
            first_ref.as_str()
        );
        assert_eq!(
            diff[4]["leaves"]["alice"]["metas"][0]["phx_ref"],
            first_ref.as_str()
        );
        a.recv();

        // Leaving the channel makes the presence leave.
        a.send(r#"["1","5","realtime:p","phx_leave",{}]"#);
        let diff = b.recv();
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["status"], "away");
        assert_eq!(diff[4]["joins"], json!({}));

        // Untrack.
        track(&mut b, "realtime:p", "6", json!({}));
        assert_eq!(b.recv()[4]["status"], "ok");
        assert_eq!(b.recv()[3], "presence_diff");
        b.send(r#"["1","7","realtime:p","presence",{"type":"presence","event":"UNTRACK"}]"#);
        assert_eq!(b.recv()[4]["status"], "ok");
        assert_eq!(b.recv()[4]["joins"], json!({}));
    }

    #[test]
    fn presence_errors_and_limits() {
        let state = state();
        let mut c = Client::new(&state);
        c.join("realtime:p", "1", json!({}));
        track(&mut c, "realtime:p", "2", json!("not a map"));
        assert_eq!(
            c.recv()[4],
            json!({"status":"error","response":{"reason":"Presence track payload must be a map"}})
        );
        c.send(r#"["1","3","realtime:p","presence",{"type":"presence","event":"wave"}]"#);
        assert_eq!(c.recv()[4], json!({"status":"error","response":{}}));
        // Five calls per window (the two above counted one), the sixth closes the channel.
        for i in 0..4 {
            track(&mut c, "realtime:p", "4", json!({ "i": i }));
            assert_eq!(c.recv()[4]["status"], "ok");
            c.recv(); // own diff
        }
        track(&mut c, "realtime:p", "5", json!({"i": 9}));
        let system = c.recv();
        assert_eq!(system[4]["message"], "Client presence rate limit exceeded");
        assert_eq!(c.recv()[3], "phx_close");
    }

    #[test]
    fn presence_payload_and_rate_limits_close_the_channel() {
        let state = state_with(&[
            "--max-payload-bytes=50",
            "--max-presence-events-per-second=2",
        ]);
        let mut c = Client::new(&state);
        c.join("realtime:big", "1", json!({}));
        track(
            &mut c,
            "realtime:big",
            "2",
            json!({"blob": "x".repeat(100)}),
        );
        assert_eq!(c.recv()[4]["message"], "Track message size exceeded");
        assert_eq!(c.recv()[3], "phx_close");

        let mut other = Client::new(&state);
        other.join("realtime:busy", "1", json!({}));
        track(&mut other, "realtime:busy", "2", json!({}));
        assert_eq!(other.recv()[4]["status"], "ok");
        other.recv();
        track(&mut other, "realtime:busy", "3", json!({"n": 1}));
        assert_eq!(
            other.recv()[4]["message"],
            "Too many presence messages per second"
        );
    }

    #[test]
    fn events_over_the_limit_close_the_channel() {
        let state = state_with(&["--max-events-per-second=2"]);
        let mut c = Client::new(&state);
        c.join("realtime:r", "1", json!({"broadcast": {"ack": true}}));
        let push = json!({"type":"broadcast","event":"e","payload":{}});
        for r in ["2", "3"] {
            c.send(&json!(["1", r, "realtime:r", "broadcast", push]).to_string());
            assert_eq!(c.recv()[4]["status"], "ok");
        }
        c.send(&json!(["1", "4", "realtime:r", "broadcast", push]).to_string());
        assert_eq!(c.recv()[4]["message"], "Too many messages per second");
        assert_eq!(c.recv()[3], "phx_close");
    }

    #[test]
    fn presence_rate_limit_survives_rejoining() {
        let state = state();
        let mut c = Client::new(&state);
        for round in 0..5 {
            c.join("realtime:p", &round.to_string(), json!({}));
            track(&mut c, "realtime:p", "t", json!({ "round": round }));
            assert_eq!(c.recv()[4]["status"], "ok");
            c.recv(); // own diff
            c.send(&json!([round.to_string(), "l", "realtime:p", "phx_leave", {}]).to_string());
            while c.rx.try_recv().is_some() {}
        }
        c.join("realtime:p", "9", json!({}));
        track(&mut c, "realtime:p", "t", json!({"round": 9}));
        assert_eq!(
            c.recv()[4]["message"],
            "Client presence rate limit exceeded"
        );
        // Another topic has its own window.
        c.join("realtime:q", "10", json!({}));
        track(&mut c, "realtime:q", "t", json!({}));
        assert_eq!(c.recv()[4]["status"], "ok");
    }

    #[test]
    fn unstorable_input_is_refused_at_the_boundary() {
        let state = state();
        let mut c = Client::new(&state);
        c.join("realtime:r", "1", json!({"broadcast": {"ack": true}}));
        let nul = json!({"type":"broadcast","event":"e","payload":{"k":"\u{0}"}});
        let nul_event = json!({"type":"broadcast","event":"e\u{0}","payload":{}});
        let long_event = json!({"type":"broadcast","event":"e".repeat(256),"payload":{}});
        for (r, push) in [("2", &nul), ("3", &nul_event)] {
            c.send(&json!(["1", r, "realtime:r", "broadcast", push]).to_string());
            assert_eq!(
                c.recv()[4],
                json!({"status":"error","response":{"reason": UNSTORABLE}})
            );
        }
        c.send(&json!(["1", "4", "realtime:r", "broadcast", long_event]).to_string());
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "The event name is longer than 255 bytes"
        );
        let kind3 = [
            &[3u8, 1, 1, 10, 1, 0, 1][..],
            b"15realtime:re{\"k\":\"\\u0000\"}",
        ]
        .concat();
        c.session
            .handle(codec::decode_binary(Vsn::V2, kind3.into()).expect("kind 3"));
        assert_eq!(c.recv()[4]["response"]["reason"], UNSTORABLE);
        track(&mut c, "realtime:r", "6", json!({"\u{0}": 1}));
        assert_eq!(c.recv()[4]["response"]["reason"], UNSTORABLE);

        c.send(r#"["7","7","realtime:a\u0000b","phx_join",{}]"#);
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "InvalidTopicName: The topic must not contain \\u0000"
        );
        let long = format!("realtime:{}", "t".repeat(247));
        c.send(&json!(["8", "8", long, "phx_join", {}]).to_string());
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "InvalidTopicName: The topic is longer than 255 bytes"
        );
        c.send(r#"["9","9","realtime:k","phx_join",{"config":{"presence":{"key":"\u0000"}}}]"#);
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "InvalidJoinPayload: The presence key must not contain \\u0000"
        );
    }

    #[test]
    fn refused_joins_pending_are_bounded() {
        let state = state_with(&["--max-pending-join-errors=3"]);
        let (conn, _rx) = ConnHandle::new(1, Vsn::V2, state.config.queue_limits(), &state.shutdown);
        let mut session = Session::new(
            state.clone(),
            conn.clone(),
            valid_token().into(),
            "{}".into(),
        );
        let refused = |r: usize| {
            let frame = json!([r.to_string(), r.to_string(), "realtime:", "phx_join", {}]);
            codec::decode_text(Vsn::V2, &frame.to_string()).expect("frame")
        };
        // Without a timer tick the refusals stay pending.
        for r in 0..3 {
            session.handle(refused(r));
        }
        assert!(!conn.kill_token().is_cancelled());
        session.handle(refused(3));
        assert_eq!(conn.close_reason(), CloseReason::TooManyJoinErrors);
    }

    #[test]
    fn postgres_changes_are_bounded() {
        let state = state_with(&[
            "--max-filter-conditions=2",
            "--max-postgres-changes-per-channel=3",
            "--max-postgres-changes-per-client=4",
        ]);
        let mut c = Client::new(&state);
        let entry =
            |filter: &str| json!({"event":"*","schema":"public","table":"t","filter":filter});
        let refused = |c: &mut Client, entries: Vec<Value>| {
            assert_eq!(
                c.join("realtime:x", "1", json!({ "postgres_changes": entries }))[4]["status"],
                "ok"
            );
            let message = c.recv()[4]["message"].clone();
            c.send(r#"["1","2","realtime:x","phx_leave",{}]"#);
            c.recv();
            c.recv();
            message
        };
        assert_eq!(
            refused(&mut c, vec![entry("a=eq.1,b=eq.2,c=eq.3")]),
            "Error parsing `filter` params: a filter may have at most 2 conditions"
        );
        assert_eq!(
            refused(&mut c, vec![entry("a=eq.1"); 4]),
            "Too many postgres_changes entries: a channel may have at most 3"
        );
        c.join(
            "realtime:a",
            "1",
            json!({ "postgres_changes": vec![entry("a=eq.1,b=eq.2"); 3] }),
        );
        c.assert_silent(); // subscribing
        assert_eq!(
            refused(&mut c, vec![entry("a=eq.1"); 2]),
            "Too many postgres_changes entries: a connection may have at most 4 over all its channels"
        );
        // Leaving frees the channel's share.
        c.send(r#"["1","2","realtime:a","phx_leave",{}]"#);
        c.recv();
        c.recv();
        c.join(
            "realtime:b",
            "3",
            json!({ "postgres_changes": vec![entry("a=eq.1"); 2] }),
        );
        c.assert_silent();
    }

    #[test]
    fn ended_channels_forget_their_subscriptions() {
        let state = state();
        let mut c = Client::new(&state);
        join_todos(&mut c);
        c.recv();
        c.send(r#"["1","2","realtime:db","phx_leave",{}]"#);
        assert_eq!(state.unsubscriber.queued(), [vec![41]]);
    }

    #[test]
    fn private_presence_needs_write_permission() {
        let state = state();
        let mut c = Client::new(&state);
        c.joined_private("realtime:r", READ_ONLY);
        track(&mut c, "realtime:r", "2", json!({}));
        assert_eq!(c.recv()[4], json!({"status":"error","response":{}}));
    }

    #[test]
    fn join_error_reply_waits_for_backoff() {
        let state = state();
        let (conn, rx) = ConnHandle::new(1, Vsn::V2, QueueLimits::frames(4), &state.shutdown);
        let mut session = Session::new(state.clone(), conn, valid_token().into(), "{}".into());
        session.handle(
            codec::decode_text(Vsn::V2, r#"["1","1","realtime:","phx_join",{}]"#).expect("frame"),
        );
        assert!(rx.try_recv().is_none(), "not before the timer fires");
        let due = session.next_deadline().expect("a delayed reply");
        session.on_timer(due);
        assert!(rx.try_recv().is_some());
        assert!(session.next_deadline().is_none());
    }

    #[test]
    fn refused_joins_waiting_count_against_the_byte_budget() {
        let state = state_with(&["--client-queue-bytes=4000"]);
        let (conn, rx) = ConnHandle::new(1, Vsn::V2, state.config.queue_limits(), &state.shutdown);
        let mut session = Session::new(
            state.clone(),
            conn.clone(),
            valid_token().into(),
            "{}".into(),
        );
        // Each refusal echoes a 1000-byte topic (over MAX_TOPIC_BYTES).
        let topic = format!("realtime:{}", "t".repeat(991));
        let join = |r: usize| {
            let frame = json!([r.to_string(), r.to_string(), topic, "phx_join", {}]);
            codec::decode_text(Vsn::V2, &frame.to_string()).expect("frame")
        };
        for r in 0..3 {
            session.handle(join(r));
        }
        assert!(
            !conn.kill_token().is_cancelled(),
            "3 replies fit 4000 bytes"
        );
        session.handle(join(3));
        assert_eq!(conn.close_reason(), CloseReason::SlowClient);
        // The ones kept are still sent (and not charged twice).
        session.on_timer(Instant::now());
        let sent = std::iter::from_fn(|| rx.try_recv()).count();
        assert_eq!(sent, 3);
    }

    #[test]
    fn a_ref_over_64_bytes_closes_the_connection_unanswered() {
        let state = state();
        let mut c = Client::new(&state);
        let fits = "1".repeat(crate::validate::MAX_REF_BYTES);
        c.send(&json!([fits, fits, "phoenix", "heartbeat", {}]).to_string());
        assert_eq!(c.recv()[1], json!(fits));
        let over = "1".repeat(crate::validate::MAX_REF_BYTES + 1);
        for frame in [
            json!([null, over, "phoenix", "heartbeat", {}]),
            json!([over, "1", "realtime:x", "phx_join", {}]),
        ] {
            let mut c = Client::new(&state);
            c.send(&frame.to_string());
            c.assert_silent();
            assert_eq!(
                c.session.conn.close_reason(),
                CloseReason::RefTooLong,
                "{frame}"
            );
        }
    }

    #[test]
    fn duplicate_join_closes_old_instance() {
        let state = state();
        let mut c = Client::new(&state);
        c.join("realtime:room1", "1", json!({}));
        assert_eq!(
            c.join("realtime:room1", "5", json!({})),
            json!(["1", "1", "realtime:room1", "phx_close", {}])
        );
        assert_eq!(c.recv()[4]["status"], "ok");
        // Only one subscription remains.
        let n = state.registry.publish(
            &TopicKey {
                sub_topic: "room1".into(),
                private: false,
            },
            &Broadcast::Json(serde_json::value::RawValue::from_string("{}".into()).expect("json")),
            None,
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn postgres_changes_echo_and_presence_state() {
        let state = state();
        let mut c = Client::new(&state);
        let changes = json!([{"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"},
                             {"event":"DELETE","schema":"public","table":"todos"}]);
        let reply = c.join(
            "realtime:db",
            "9",
            json!({"postgres_changes": changes, "presence": {"enabled": true}}),
        );
        let echoed = &reply[4]["response"]["postgres_changes"];
        for (i, entry) in changes.as_array().into_iter().flatten().enumerate() {
            let mut without_id = echoed[i].clone();
            assert!(without_id["id"].is_u64());
            without_id.as_object_mut().map(|o| o.remove("id"));
            assert_eq!(&without_id, entry);
        }
        // The subscriptions and the presence state are database work that follows the reply.
        c.assert_silent();
        assert_eq!(c.session.db_work.len(), 2);
    }

    /// Finish the subscribe in flight on `topic` with `result`.
    fn subscribed(c: &mut Client, topic: &str, result: Result<Vec<(u64, i64)>, SubscribeFailure>) {
        let ch = c.session.channels.get(topic).expect("joined");
        let done = Subscribed {
            topic: topic.into(),
            registration: ch.registration,
            ticket: ch.changes_ticket,
            result,
        };
        c.session.db_work.clear();
        c.session.on_db_done(DbDone::Subscribed(done));
        c.session.on_timer(Instant::now());
    }

    /// Join `realtime:db` (join_ref "1") for every change to `public.todos`; the database
    /// answers with subscription row 41. The binding's id.
    fn join_todos(c: &mut Client) -> u64 {
        let entry = json!([{"event":"*","schema":"public","table":"todos"}]);
        let reply = c.join("realtime:db", "1", json!({"postgres_changes": entry}));
        let id = reply[4]["response"]["postgres_changes"][0]["id"]
            .as_u64()
            .expect("id");
        subscribed(c, "realtime:db", Ok(vec![(id, 41)]));
        id
    }

    #[test]
    fn postgres_changes_subscription_lifecycle() {
        let state = state();
        let mut c = Client::new(&state);
        let id = join_todos(&mut c);
        assert_eq!(
            c.recv(),
            json!(["1", null, "realtime:db", "system", {"extension":"postgres_changes","status":"ok",
                   "message":"Subscribed to PostgreSQL","channel":"db"}])
        );
        let change = json!({"subscriptions": [41, 99], "data": {"type": "INSERT"}}).to_string();
        state.changes.deliver(&change).expect("routed change");
        assert_eq!(
            c.recv(),
            json!([null, null, "realtime:db", "postgres_changes", {"ids": [id], "data": {"type": "INSERT"}}])
        );
        // After leaving, the channel's subscriptions receive nothing.
        c.send(r#"["1","2","realtime:db","phx_leave",{}]"#);
        c.recv();
        c.recv();
        state.changes.deliver(&change).expect("routed change");
        c.assert_silent();
    }

    #[test]
    fn postgres_changes_errors_and_wait() {
        let state = state();
        let mut c = Client::new(&state);
        let bad = json!([{"event":"*","schema":"public","table":"todos","filter":"id=zz.1"}]);
        c.join("realtime:a", "1", json!({"postgres_changes": bad}));
        let system = c.recv();
        assert_eq!(system[4]["status"], "error");
        assert_eq!(
            system[4]["message"],
            "Error parsing `filter` params: unknown operator `zz`"
        );

        // With wait, a refused binding refuses the join; a held reply follows the subscription.
        let wait = json!({"wait": true, "timeout": 5000});
        let refused = c.join(
            "realtime:b",
            "2",
            json!({"postgres_changes": bad, "postgres_changes_options": wait}),
        );
        assert_eq!(
            refused[4]["response"]["reason"],
            "RealtimeDisabledForConfiguration: Error parsing `filter` params: unknown operator `zz`"
        );
        let good = json!([{"event":"INSERT","table":"todos"}]);
        c.send(
            &json!(["3", "3", "realtime:c", "phx_join",
            {"config": {"postgres_changes": good, "postgres_changes_options": wait}}])
            .to_string(),
        );
        c.assert_silent();
        subscribed(&mut c, "realtime:c", Err(SubscribeFailure::Timeout(5000)));
        assert_eq!(
            c.recv()[4]["response"]["reason"],
            "PostgresChangesSubscribeTimeout: Timed out after 5000ms waiting for the postgres_changes subscription"
        );
        c.send(
            &json!(["4", "4", "realtime:c", "phx_join",
            {"config": {"postgres_changes": good, "postgres_changes_options": wait}}])
            .to_string(),
        );
        c.assert_silent();
        subscribed(&mut c, "realtime:c", Ok(vec![(7, 1)]));
        assert_eq!(c.recv()[4]["status"], "ok");
        assert_eq!(c.recv()[4]["message"], "Subscribed to PostgreSQL");
    }

    #[test]
    fn access_token_refresh() {
        let state = state();
        let mut c = Client::new(&state);
        c.join("realtime:room1", "6", json!({}));
        c.send(
            &json!(["6", "7", "realtime:room1", "access_token", {"access_token": valid_token()}])
                .to_string(),
        );
        c.send(r#"["6","8","realtime:room1","access_token",{"access_token":"sb_publishable_x"}]"#);
        c.send(r#"["6","9","realtime:room1","no_such_event",{}]"#);
        c.assert_silent();
        c.send(r#"["6","10","realtime:room1","access_token",{"access_token":"garbage"}]"#);
        assert_eq!(
            c.recv(),
            json!(["6", null, "realtime:room1", "system", {"extension":"system","status":"error",
                   "message":"The token provided is not a valid JWT","channel":"room1"}])
        );
        assert_eq!(
            c.recv(),
            json!(["6", "6", "realtime:room1", "phx_close", {}])
        );
    }

    #[test]
    fn expired_token_closes_channel() {
        let state = state();
        let mut c = Client::new(&state);
        c.join("realtime:room1", "6", json!({}));
        let soon = token(&json!({"role":"anon","exp": unix_now() + 2}));
        c.send(
            &json!(["6", "7", "realtime:room1", "access_token", {"access_token": soon}])
                .to_string(),
        );
        let due = c.session.next_deadline().expect("expiry timer");
        c.session.on_timer(due);
        assert_eq!(c.recv()[3], "system");
        assert_eq!(c.recv()[3], "phx_close");
    }

    #[test]
    fn dropping_session_unsubscribes() {
        let state = state();
        let key = TopicKey {
            sub_topic: "room1".into(),
            private: false,
        };
        let json = || {
            Broadcast::Json(serde_json::value::RawValue::from_string("{}".into()).expect("json"))
        };
        let mut c = Client::new(&state);
        c.join("realtime:room1", "1", json!({}));
        assert_eq!(state.registry.publish(&key, &json(), None), 1);
        drop(c);
        assert_eq!(state.registry.publish(&key, &json(), None), 0);
    }
}
