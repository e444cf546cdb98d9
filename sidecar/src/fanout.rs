//! Topic registry and per-connection outbound queues.
//!
//! Ownership and lifecycle:
//! * Each WebSocket owns one [`ConnHandle`]: a *bounded* queue of encoded frames (drained by the
//!   connection's writer through its [`Outbox`]) and a kill token (a child of the server's
//!   shutdown token). The handle is shared with the registry for as long as the connection has
//!   channels joined.
//! * [`Registry`] maps a (sub-topic, private) key to the channel instances subscribed to it.
//!   Public and private channels of the same name are separate keys, so they never see each
//!   other's messages. Subscriptions are added before a join is acknowledged and removed by the
//!   connection's session (leave, duplicate join, close).
//!
//! Invariants:
//! * [`Registry::publish`] never blocks and never awaits: it serializes the message at most once
//!   per serializer for the whole topic and hands every subscriber a clone of the same bytes.
//! * What a connection makes the server hold is bounded twice: in frames (`CLIENT_QUEUE_FRAMES`)
//!   and in bytes (`CLIENT_QUEUE_BYTES`). Every frame's length counts against the budget of each
//!   connection it is queued for, even when the bytes are shared, because each queue keeps them
//!   alive; the bytes are released when the writer takes the frame. Counting is one atomic add
//!   and one subtract per frame. A frame is accepted whatever its size when the connection holds
//!   nothing, so a message larger than the budget still reaches a client that keeps up; a
//!   connection thus holds at most its budget or one frame, whichever is larger, plus the frame
//!   its writer is sending.
//! * A subscriber whose queue is full, in frames or in bytes, is closed with
//!   [`CloseReason::SlowClient`] instead of being waited for, so one slow reader never delays
//!   anyone else.
//! * The registry lock is a plain `RwLock` held only for map operations and non-blocking
//!   `try_send`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use flume::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, Broadcast, Frame, Vsn};
use crate::error::CloseReason;

/// How much one connection may have waiting to be sent.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames in the queue (`CLIENT_QUEUE_FRAMES`).
    pub frames: usize,
    /// Bytes charged and not yet taken by the writer (`CLIENT_QUEUE_BYTES`).
    pub bytes: usize,
}

/// The sending side of one WebSocket connection.
pub struct ConnHandle {
    pub id: u64,
    pub vsn: Vsn,
    tx: flume::Sender<Frame>,
    /// Bytes charged against `budget` and not yet taken by the writer (shared with the
    /// [`Outbox`]). Relaxed ordering suffices: a frame's charge is sequenced before its send
    /// and the channel orders the send before the receive that releases it, so the counter
    /// never goes below what is held.
    held: Arc<AtomicUsize>,
    budget: usize,
    kill: CancellationToken,
    reason: OnceLock<CloseReason>,
}

/// The receiving side of a connection's queue, drained by its writer: taking a frame releases
/// its bytes from the connection's budget.
pub struct Outbox {
    rx: flume::Receiver<Frame>,
    held: Arc<AtomicUsize>,
}

impl Outbox {
    /// The next frame; `None` once every sender is gone.
    pub async fn recv(&self) -> Option<Frame> {
        self.rx.recv_async().await.ok().map(|f| self.taken(f))
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Option<Frame> {
        self.rx.try_recv().ok().map(|f| self.taken(f))
    }

    fn taken(&self, frame: Frame) -> Frame {
        self.held.fetch_sub(frame.len(), Ordering::Relaxed);
        frame
    }
}

impl ConnHandle {
    /// Returns the handle and the outbox its writer drains. `parent` cancellation (server
    /// shutdown) also kills the connection.
    pub fn new(
        id: u64,
        vsn: Vsn,
        limits: QueueLimits,
        parent: &CancellationToken,
    ) -> (Arc<Self>, Outbox) {
        let (tx, rx) = flume::bounded(limits.frames);
        let held = Arc::new(AtomicUsize::new(0));
        let handle = ConnHandle {
            id,
            vsn,
            tx,
            held: held.clone(),
            budget: limits.bytes,
            kill: parent.child_token(),
            reason: OnceLock::new(),
        };
        (Arc::new(handle), Outbox { rx, held })
    }

    /// Queue a frame without waiting. A full queue (in frames or bytes) closes the connection
    /// as too slow.
    pub fn push(&self, frame: Frame) -> bool {
        self.charge(frame.len()) && self.push_charged(frame)
    }

    /// Count `len` bytes against the connection's budget before holding them, for a frame to
    /// be queued now or kept to be queued later ([`ConnHandle::push_charged`]). Over the budget
    /// the connection is closed as too slow and nothing is counted. Accepted whatever its size
    /// when nothing is held.
    pub fn charge(&self, len: usize) -> bool {
        let held = self.held.fetch_add(len, Ordering::Relaxed);
        if held == 0 || held.saturating_add(len) <= self.budget {
            return true;
        }
        self.held.fetch_sub(len, Ordering::Relaxed);
        self.close_slow("outbound bytes over CLIENT_QUEUE_BYTES");
        false
    }

    /// Queue a frame whose bytes [`ConnHandle::charge`] already counted, without waiting.
    pub fn push_charged(&self, frame: Frame) -> bool {
        let len = frame.len();
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(err) => {
                self.held.fetch_sub(len, Ordering::Relaxed);
                if let TrySendError::Full(_) = err {
                    self.close_slow("outbound queue over CLIENT_QUEUE_FRAMES");
                }
                false
            }
        }
    }

    fn close_slow(&self, why: &'static str) {
        if !self.kill.is_cancelled() {
            tracing::warn!(conn = self.id, why, "closing slow client");
        }
        self.close(CloseReason::SlowClient);
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
impl QueueLimits {
    /// A queue bounded in frames only.
    pub fn frames(frames: usize) -> Self {
        QueueLimits {
            frames,
            bytes: usize::MAX,
        }
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

    fn binary(len: usize) -> Frame {
        Frame::Binary(bytes::Bytes::from(vec![0u8; len]))
    }

    /// A v2 connection with room for 8 frames and `bytes` bytes.
    fn budgeted(bytes: usize) -> (Arc<ConnHandle>, Outbox) {
        let limits = QueueLimits { frames: 8, bytes };
        ConnHandle::new(1, Vsn::V2, limits, &CancellationToken::new())
    }

    fn held(conn: &ConnHandle) -> usize {
        conn.held.load(Ordering::Relaxed)
    }

    #[test]
    fn publishes_to_matching_namespace_and_excludes_sender() {
        let root = CancellationToken::new();
        let reg = Registry::default();
        let (a, rx_a) = ConnHandle::new(1, Vsn::V2, QueueLimits::frames(8), &root);
        let (b, rx_b) = ConnHandle::new(2, Vsn::V1, QueueLimits::frames(8), &root);
        let (c, rx_c) = ConnHandle::new(3, Vsn::V2, QueueLimits::frames(8), &root);
        let sa = reg.subscribe(key("room", false), a);
        reg.subscribe(key("room", false), b);
        let sc = reg.subscribe(key("room", true), c);

        assert_eq!(
            reg.publish(&key("room", false), &json(r#"{"x":1}"#), Some(sa)),
            1
        );
        assert!(rx_a.try_recv().is_none());
        assert!(matches!(rx_b.try_recv(), Some(Frame::Text(_))));
        assert!(
            rx_c.try_recv().is_none(),
            "private subscriber must not see public messages"
        );

        assert_eq!(reg.publish(&key("room", true), &json("{}"), None), 1);
        assert!(rx_c.try_recv().is_some());
        reg.unsubscribe(&key("room", true), sc);
        assert_eq!(reg.publish(&key("room", true), &json("{}"), None), 0);
        assert_eq!(reg.publish(&key("nobody", false), &json("{}"), None), 0);
    }

    #[test]
    fn full_queue_closes_only_the_slow_client() {
        let root = CancellationToken::new();
        let reg = Registry::default();
        let (slow, _rx_slow) = ConnHandle::new(1, Vsn::V2, QueueLimits::frames(1), &root);
        let (fast, rx_fast) = ConnHandle::new(2, Vsn::V2, QueueLimits::frames(8), &root);
        reg.subscribe(key("t", false), slow.clone());
        reg.subscribe(key("t", false), fast.clone());
        reg.publish(&key("t", false), &json("{}"), None);
        reg.publish(&key("t", false), &json("{}"), None);
        assert!(slow.kill_token().is_cancelled());
        assert_eq!(slow.close_reason(), CloseReason::SlowClient);
        assert!(!fast.kill_token().is_cancelled());
        assert_eq!(
            (rx_fast.try_recv().is_some(), rx_fast.try_recv().is_some()),
            (true, true)
        );
    }

    #[test]
    fn bytes_are_held_until_the_writer_takes_them() {
        let (conn, outbox) = budgeted(100);
        assert!(conn.push(binary(60)));
        assert!(conn.push(binary(40)));
        assert_eq!(held(&conn), 100, "exactly the budget is allowed");
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(60));
        assert_eq!(held(&conn), 40);
        assert!(conn.push(binary(60)));
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(40));
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(60));
        assert_eq!(held(&conn), 0);
        assert!(!conn.kill_token().is_cancelled());
    }

    #[test]
    fn over_budget_closes_as_slow_and_counts_nothing() {
        let (conn, outbox) = budgeted(100);
        assert!(conn.push(binary(60)));
        assert!(!conn.push(binary(41)));
        assert_eq!(conn.close_reason(), CloseReason::SlowClient);
        assert_eq!(held(&conn), 60, "the refused frame is not counted");
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(60));
        assert!(outbox.try_recv().is_none());
        assert_eq!(held(&conn), 0);
    }

    #[test]
    fn a_frame_larger_than_the_budget_passes_an_empty_queue_only() {
        let (conn, outbox) = budgeted(100);
        assert!(conn.push(binary(1000)), "nothing held: a large frame goes");
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(1000));
        assert!(conn.push(binary(1000)), "again, once the writer took it");
        assert!(
            !conn.push(binary(1)),
            "anything more waits on a client that does not read"
        );
        assert_eq!(conn.close_reason(), CloseReason::SlowClient);
    }

    #[test]
    fn shared_frames_count_against_each_queue() {
        let reg = Registry::default();
        let (reader, rx_reader) = budgeted(250);
        let (idle, _rx_idle) = budgeted(250);
        reg.subscribe(key("t", false), reader.clone());
        reg.subscribe(key("t", false), idle.clone());
        let payload = format!(r#"{{"s":"{}"}}"#, "x".repeat(80));
        let len = codec::encode_broadcast(Vsn::V2, "realtime:t", &json(&payload))
            .expect("frame")
            .len();
        assert!(len > 250 / 3 && len <= 250 / 2, "{len}");
        for _ in 0..2 {
            assert_eq!(reg.publish(&key("t", false), &json(&payload), None), 2);
            assert!(rx_reader.try_recv().is_some());
        }
        assert_eq!((held(&reader), held(&idle)), (0, 2 * len));
        // The third frame is over the idle connection's budget only.
        assert_eq!(reg.publish(&key("t", false), &json(&payload), None), 1);
        assert_eq!(idle.close_reason(), CloseReason::SlowClient);
        assert!(!reader.kill_token().is_cancelled());
        assert!(rx_reader.try_recv().is_some());
    }

    #[test]
    fn frames_kept_for_later_are_charged_once() {
        let (conn, outbox) = budgeted(100);
        assert!(conn.charge(70), "a reply kept for later");
        assert!(conn.push(binary(30)));
        assert!(
            conn.push_charged(binary(70)),
            "queued later, not counted again"
        );
        assert_eq!(held(&conn), 100);
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(30));
        assert_eq!(outbox.try_recv().map(|f| f.len()), Some(70));
        assert_eq!(held(&conn), 0);
        assert!(!conn.kill_token().is_cancelled());

        let (conn, _outbox) = budgeted(100);
        assert!(conn.charge(70));
        assert!(!conn.push(binary(31)), "the kept bytes count");
        assert_eq!(conn.close_reason(), CloseReason::SlowClient);
    }

    #[test]
    fn a_closed_outbox_releases_what_could_not_be_queued() {
        let (conn, outbox) = budgeted(usize::MAX);
        drop(outbox);
        assert!(!conn.push(binary(10)));
        assert_eq!(held(&conn), 0);
        assert!(
            !conn.kill_token().is_cancelled(),
            "a gone writer is not a slow client"
        );
    }

    #[test]
    fn shutdown_kills_connections() {
        let root = CancellationToken::new();
        let (conn, _rx) = ConnHandle::new(1, Vsn::V1, QueueLimits::frames(1), &root);
        root.cancel();
        assert!(conn.kill_token().is_cancelled());
        assert_eq!(conn.close_reason(), CloseReason::ServerShutdown);
    }
}
