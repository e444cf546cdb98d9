//! The per-connection protocol state machine: routes each decoded client message (heartbeat,
//! join, leave, broadcast, access_token) and owns the connection's channel table.
//!
//! It is transport-free: output goes to the connection's bounded queue ([`ConnHandle::push`]),
//! time comes in through [`Session::on_timer`], so tests drive it without sockets.
//!
//! Invariants:
//! * A channel is subscribed in the registry *before* its join is acknowledged.
//! * Replies on a joined channel carry that channel's current `join_ref` (clients drop frames
//!   with a stale non-null `join_ref`); incoming `join_ref`s are not checked (Realtime's
//!   leniency, PROTOCOL.md §1.9).
//! * Join errors are answered after `CHANNEL_ERROR_BACKOFF_MS` without blocking the socket: the
//!   replies wait in `delayed` (one fixed delay, so the queue is ordered by deadline).
//! * Dropping the session unsubscribes every channel it still holds.
//!
//! Later issues plug in here: presence (`presence` events), Postgres Changes (join echo and
//! `system` messages), private-channel RLS (`authorize`).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::{unix_now, Claims};
use crate::channel::{self, Channel, ChannelTable, JoinConfig};
use crate::codec::{self, Broadcast, Frame, InPayload, Inbound, Reply};
use crate::error::{AuthError, JoinError, POSTGRES_CHANGES_DISABLED, UNMATCHED_TOPIC};
use crate::fanout::{ConnHandle, TopicKey};

pub struct Session {
    state: Arc<AppState>,
    conn: Arc<ConnHandle>,
    /// The verified connection token, used by joins that bring no `access_token`.
    conn_token: String,
    channels: ChannelTable,
    delayed: VecDeque<(Instant, Frame)>,
}

/// What a successful join is granted with.
struct Grant {
    config: JoinConfig,
    /// The token the channel is authorized with and its verified claims.
    token: String,
    claims: Claims,
}

/// `system` push payload (PROTOCOL.md §7.3).
#[derive(Serialize)]
struct System<'a> {
    extension: &'a str,
    status: &'a str,
    message: &'a str,
    channel: &'a str,
}

impl Session {
    pub fn new(state: Arc<AppState>, conn: Arc<ConnHandle>, conn_token: String) -> Self {
        Session {
            state,
            conn,
            conn_token,
            channels: ChannelTable::default(),
            delayed: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, msg: Inbound) {
        let topic = msg.topic.as_str();
        if topic == "phoenix" && msg.event == "heartbeat" {
            return self.reply(None, msg.msg_ref.as_deref(), topic, "ok", json!({}));
        }
        if msg.event == "phx_join" {
            return self.join(msg);
        }
        if self.channels.get(topic).is_none() {
            return if msg.event == "phx_leave" {
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
        match msg.event.as_str() {
            "phx_leave" => self.leave(&msg.topic, msg.msg_ref.as_deref()),
            "broadcast" => self.broadcast(&msg.topic, msg.msg_ref.as_deref(), msg.payload),
            "access_token" => self.refresh_token(&msg.topic, msg.payload),
            // Realtime ignores unknown events on a joined channel (the client push times out).
            other => tracing::debug!(conn = self.conn.id, topic, event = other, "ignored event"),
        }
    }

    /// The next instant [`Session::on_timer`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let delayed = self.delayed.front().map(|(at, _)| *at);
        [delayed, self.channels.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Send join errors whose backoff has elapsed and close channels whose token expired.
    pub fn on_timer(&mut self, now: Instant) {
        while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, frame)) = self.delayed.pop_front() {
                self.conn.push(frame);
            }
        }
        let now_unix = unix_now();
        for topic in self.channels.expired(now) {
            if let Some(ch) = self.channels.get(&topic) {
                let secs_ago = now_unix.saturating_sub(ch.exp).max(0);
                self.shutdown_channel(&topic, &AuthError::Expired { secs_ago }.to_string());
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
        // A duplicate join closes the old instance first (Phoenix); the client ignores this
        // phx_close because it carries the old join_ref.
        if let Some(old) = self.channels.remove(&topic) {
            self.state.registry.unsubscribe(&old.key, old.sub_id);
            let old_ref = old.join_ref.as_deref();
            self.push(old_ref, old_ref, &topic, "phx_close", &json!({}));
        }
        let payload = match &payload {
            InPayload::Json(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            InPayload::User(_) => Value::Null,
        };
        match self.authorize(&sub, &payload) {
            Ok(grant) => self.accept(topic, sub, join_ref, msg_ref, grant),
            Err(err) => {
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
                let at = Instant::now() + self.state.config.channel_error_backoff();
                self.delayed.push_back((at, frame));
            }
        }
    }

    /// Join checks in Realtime's order of precedence (PROTOCOL.md §3.3).
    fn authorize(&self, sub: &str, payload: &Value) -> Result<Grant, JoinError> {
        if sub.is_empty() {
            return Err(JoinError::TopicNameRequired);
        }
        if self.channels.len() >= self.state.config.max_channels_per_client as usize {
            return Err(JoinError::TooManyChannels);
        }
        let config = JoinConfig::parse(payload);
        let token = channel::join_token(payload, &self.conn_token).to_owned();
        let claims = self.state.auth.verify(&token)?;
        if config.private {
            // RLS authorization of private channels is not implemented yet: refuse, never allow.
            return Err(JoinError::Unauthorized(sub.to_owned()));
        }
        Ok(Grant {
            config,
            token,
            claims,
        })
    }

    fn accept(
        &mut self,
        topic: String,
        sub: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        grant: Grant,
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
        let sub_id = self
            .state
            .registry
            .subscribe(key.clone(), self.conn.clone());
        let echo: Vec<Value> = config
            .postgres_changes
            .iter()
            .map(channel::postgres_change_echo)
            .collect();
        self.channels.insert(
            topic.clone(),
            Channel {
                join_ref: join_ref.clone(),
                key,
                sub_id,
                broadcast_self: config.broadcast_self,
                broadcast_ack: config.broadcast_ack,
                token,
                exp: claims.exp,
                expires_at: channel::deadline(claims.exp, unix_now()),
            },
        );
        tracing::debug!(conn = self.conn.id, topic, "joined");
        let has_changes = !echo.is_empty();
        self.reply(
            join_ref.as_deref(),
            msg_ref.as_deref(),
            &topic,
            "ok",
            json!({ "postgres_changes": echo }),
        );
        if has_changes {
            let system = System {
                extension: "postgres_changes",
                status: "error",
                message: POSTGRES_CHANGES_DISABLED,
                channel: &sub,
            };
            self.push(join_ref.as_deref(), None, &topic, "system", &system);
        }
        if config.presence_enabled {
            self.push(
                join_ref.as_deref(),
                None,
                &topic,
                "presence_state",
                &json!({}),
            );
        }
    }

    fn leave(&mut self, topic: &str, msg_ref: Option<&str>) {
        let Some(ch) = self.channels.remove(topic) else {
            return;
        };
        self.state.registry.unsubscribe(&ch.key, ch.sub_id);
        let join_ref = ch.join_ref.as_deref();
        self.reply(join_ref, msg_ref, topic, "ok", json!({}));
        self.push(join_ref, join_ref, topic, "phx_close", &json!({}));
    }

    fn broadcast(&self, topic: &str, msg_ref: Option<&str>, payload: InPayload) {
        let Some(ch) = self.channels.get(topic) else {
            return;
        };
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
        let exclude = (!ch.broadcast_self).then_some(ch.sub_id);
        self.state.registry.publish(&ch.key, &msg, exclude);
        if ch.broadcast_ack {
            self.reply(ch.join_ref.as_deref(), msg_ref, topic, "ok", json!({}));
        }
    }

    /// `access_token` push: never answered; an invalid token closes the channel (§7.1).
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
        if token.starts_with("sb_") || token == ch.token {
            return;
        }
        match self.state.auth.verify(token) {
            Ok(claims) => {
                ch.token = token.to_owned();
                ch.exp = claims.exp;
                ch.expires_at = channel::deadline(claims.exp, unix_now());
            }
            Err(err) => self.shutdown_channel(topic, &err.refresh_message()),
        }
    }

    /// Server-side channel close: `system` error, then `phx_close` with `ref = join_ref`.
    fn shutdown_channel(&mut self, topic: &str, message: &str) {
        let Some(ch) = self.channels.remove(topic) else {
            return;
        };
        self.state.registry.unsubscribe(&ch.key, ch.sub_id);
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

impl Drop for Session {
    fn drop(&mut self) {
        for (_, ch) in self.channels.drain() {
            self.state.registry.unsubscribe(&ch.key, ch.sub_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::auth::tests::{token, valid_token, SECRET};
    use crate::codec::Vsn;
    use crate::config::Config;

    fn state() -> Arc<AppState> {
        let config = Config::try_parse_from([
            "test",
            "--database-url=postgres://postgres@127.0.0.1:1/postgres",
            &format!("--jwt-secret={SECRET}"),
            "--channel-error-backoff-ms=0",
            "--max-channels-per-client=2",
            "--client-queue-frames=16",
        ])
        .expect("test config");
        AppState::new(config)
    }

    struct Client {
        session: Session,
        rx: mpsc::Receiver<Frame>,
    }

    impl Client {
        fn new(state: &Arc<AppState>) -> Self {
            let (conn, rx) = ConnHandle::new(state.next_conn_id(), Vsn::V2, 16, &state.shutdown);
            let session = Session::new(state.clone(), conn, valid_token());
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
            assert!(self.rx.try_recv().is_err(), "no frame expected");
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
        assert_eq!(
            reason(c.join("realtime:secret", "2", json!({"private": true}))).as_deref(),
            Some(
                "Unauthorized: You do not have permissions to read from this Channel topic: secret"
            )
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

    #[test]
    fn join_error_reply_waits_for_backoff() {
        let state = state();
        let (conn, mut rx) = ConnHandle::new(1, Vsn::V2, 4, &state.shutdown);
        let mut session = Session::new(state.clone(), conn, valid_token());
        session.handle(
            codec::decode_text(Vsn::V2, r#"["1","1","realtime:","phx_join",{}]"#).expect("frame"),
        );
        assert!(rx.try_recv().is_err(), "not before the timer fires");
        let due = session.next_deadline().expect("a delayed reply");
        session.on_timer(due);
        assert!(rx.try_recv().is_ok());
        assert!(session.next_deadline().is_none());
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
        assert_eq!(
            c.recv(),
            json!(["9", null, "realtime:db", "system", {"extension":"postgres_changes","status":"error",
                   "message":"Postgres Changes are not enabled on this server yet","channel":"db"}])
        );
        assert_eq!(
            c.recv(),
            json!(["9", null, "realtime:db", "presence_state", {}])
        );
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
        c.send(r#"["6","9","realtime:room1","presence",{"type":"presence","event":"track"}]"#);
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
