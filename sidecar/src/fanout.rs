//! Topic registry and per-connection outbound queues.
//!
//! Ownership and lifecycle:
//! * Each WebSocket owns one [`ConnHandle`]: a *bounded* queue of encoded frames (drained by the
//!   connection's writer) and a kill token (a child of the server's shutdown token). The handle
//!   is shared with the registry for as long as the connection has channels joined.
//! * [`Registry`] maps a (sub-topic, private) key to the channel instances subscribed to it.
//!   Public and private channels of the same name are separate keys, so they never see each
//!   other's messages. Subscriptions are added before a join is acknowledged and removed by the
//!   connection's session (leave, duplicate join, close).
//!
//! Invariants:
//! * [`Registry::publish`] never blocks and never awaits: it serializes the message at most once
//!   per serializer for the whole topic and hands every subscriber a clone of the same bytes.
//! * A subscriber whose queue is full is closed with [`CloseReason::SlowClient`] instead of being
//!   waited for, so one slow reader never delays anyone else.
//! * The registry lock is a plain `RwLock` held only for map operations and non-blocking
//!   `try_send`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use flume::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, Broadcast, Frame, Vsn};
use crate::error::CloseReason;

/// The sending side of one WebSocket connection.
pub struct ConnHandle {
    pub id: u64,
    pub vsn: Vsn,
    tx: flume::Sender<Frame>,
    kill: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl ConnHandle {
    /// Returns the handle and the receiver its writer drains. `parent` cancellation (server
    /// shutdown) also kills the connection.
    pub fn new(
        id: u64,
        vsn: Vsn,
        capacity: usize,
        parent: &CancellationToken,
    ) -> (Arc<Self>, flume::Receiver<Frame>) {
        let (tx, rx) = flume::bounded(capacity);
        let handle = ConnHandle {
            id,
            vsn,
            tx,
            kill: parent.child_token(),
            reason: OnceLock::new(),
        };
        (Arc::new(handle), rx)
    }

    /// Queue a frame without waiting. A full queue closes the connection as too slow.
    pub fn push(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    tracing::warn!(conn = self.id, "outbound queue full, closing slow client");
                }
                self.close(CloseReason::SlowClient);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Ask the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.kill.cancel();
    }

    pub fn kill_token(&self) -> &CancellationToken {
        &self.kill
    }

    /// Why the connection ended; a kill without an explicit reason came from server shutdown.
    pub fn close_reason(&self) -> CloseReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ServerShutdown)
    }
}

/// Registry key: a sub-topic (without `realtime:`) in the public or the private namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub sub_topic: String,
    pub private: bool,
}

impl TopicKey {
    /// The Phoenix topic written in frames (the same for both namespaces).
    pub fn phoenix_topic(&self) -> String {
        format!("realtime:{}", self.sub_topic)
    }
}

/// Identifies one channel instance (one successful join) in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubId(u64);

#[derive(Default)]
pub struct Registry {
    topics: RwLock<HashMap<TopicKey, HashMap<SubId, Arc<ConnHandle>>>>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn subscribe(&self, key: TopicKey, conn: Arc<ConnHandle>) -> SubId {
        let id = SubId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        topics.entry(key).or_default().insert(id, conn);
        id
    }

    pub fn unsubscribe(&self, key: &TopicKey, id: SubId) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subs) = topics.get_mut(key) {
            subs.remove(&id);
            if subs.is_empty() {
                topics.remove(key);
            }
        }
    }

    /// Deliver a broadcast to every subscriber of `key` except `exclude`; returns how many
    /// subscribers it was queued for.
    pub fn publish(&self, key: &TopicKey, msg: &Broadcast, exclude: Option<SubId>) -> usize {
        self.publish_with(key, exclude, |vsn, topic| {
            codec::encode_broadcast(vsn, topic, msg)
        })
    }

    /// Deliver the frame `encode` builds (at most once per serializer) to every subscriber of
    /// `key` except `exclude`; `None` from `encode` skips that serializer's subscribers.
    pub fn publish_with(
        &self,
        key: &TopicKey,
        exclude: Option<SubId>,
        encode: impl Fn(Vsn, &str) -> Option<Frame>,
    ) -> usize {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let Some(subs) = topics.get(key) else {
            return 0;
        };
        let topic = key.phoenix_topic();
        let (mut v1, mut v2) = (None, None);
        let mut delivered = 0;
        for (id, conn) in subs {
            if Some(*id) == exclude {
                continue;
            }
            let slot = match conn.vsn {
                Vsn::V1 => &mut v1,
                Vsn::V2 => &mut v2,
            };
            let frame = slot.get_or_insert_with(|| encode(conn.vsn, &topic));
            if let Some(frame) = frame {
                delivered += usize::from(conn.push(frame.clone()));
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn json(s: &str) -> Broadcast {
        Broadcast::Json(RawValue::from_string(s.to_owned()).expect("json"))
    }

    fn key(sub: &str, private: bool) -> TopicKey {
        TopicKey {
            sub_topic: sub.into(),
            private,
        }
    }

    #[test]
    fn publishes_to_matching_namespace_and_excludes_sender() {
        let root = CancellationToken::new();
        let reg = Registry::default();
        let (a, rx_a) = ConnHandle::new(1, Vsn::V2, 8, &root);
        let (b, rx_b) = ConnHandle::new(2, Vsn::V1, 8, &root);
        let (c, rx_c) = ConnHandle::new(3, Vsn::V2, 8, &root);
        let sa = reg.subscribe(key("room", false), a);
        reg.subscribe(key("room", false), b);
        let sc = reg.subscribe(key("room", true), c);

        assert_eq!(
            reg.publish(&key("room", false), &json(r#"{"x":1}"#), Some(sa)),
            1
        );
        assert!(rx_a.try_recv().is_err());
        assert!(matches!(rx_b.try_recv(), Ok(Frame::Text(_))));
        assert!(
            rx_c.try_recv().is_err(),
            "private subscriber must not see public messages"
        );

        assert_eq!(reg.publish(&key("room", true), &json("{}"), None), 1);
        assert!(rx_c.try_recv().is_ok());
        reg.unsubscribe(&key("room", true), sc);
        assert_eq!(reg.publish(&key("room", true), &json("{}"), None), 0);
        assert_eq!(reg.publish(&key("nobody", false), &json("{}"), None), 0);
    }

    #[test]
    fn full_queue_closes_only_the_slow_client() {
        let root = CancellationToken::new();
        let reg = Registry::default();
        let (slow, _rx_slow) = ConnHandle::new(1, Vsn::V2, 1, &root);
        let (fast, rx_fast) = ConnHandle::new(2, Vsn::V2, 8, &root);
        reg.subscribe(key("t", false), slow.clone());
        reg.subscribe(key("t", false), fast.clone());
        reg.publish(&key("t", false), &json("{}"), None);
        reg.publish(&key("t", false), &json("{}"), None);
        assert!(slow.kill_token().is_cancelled());
        assert_eq!(slow.close_reason(), CloseReason::SlowClient);
        assert!(!fast.kill_token().is_cancelled());
        assert_eq!(
            (rx_fast.try_recv().is_ok(), rx_fast.try_recv().is_ok()),
            (true, true)
        );
    }

    #[test]
    fn shutdown_kills_connections() {
        let root = CancellationToken::new();
        let (conn, _rx) = ConnHandle::new(1, Vsn::V1, 1, &root);
        root.cancel();
        assert!(conn.kill_token().is_cancelled());
        assert_eq!(conn.close_reason(), CloseReason::ServerShutdown);
    }
}
