//! The queue reader: one tokio-postgres connection that moves committed messages from
//! `realtime.queue` to the fan-out (contract in docs/architecture.md).
//!
//! Protocol, per database session:
//! 1. `LISTEN realtime_wakeup` — before any poll, so a wake-up sent after our last empty poll
//!    cannot be missed;
//! 2. on the very first session only, `SELECT epoch, head FROM realtime._position()`: a fresh
//!    sidecar starts at the head;
//! 3. `realtime._poll(epoch, after, max_rows)` in a loop: after a full batch poll again at once;
//!    after a partial batch linger `POLL_LINGER_MS` first, so that under load each read collects
//!    what committed meanwhile (fewer, larger reads, and no wake-ups while the queue stays busy);
//!    after an empty poll (which declares the reader idle) wait for a notification or the
//!    fallback timer, whichever first.
//!
//! Invariants:
//! * The position `(epoch, after)` lives in this task across reconnects: after a database
//!   restart the reader continues from its own position, so nothing committed meanwhile is
//!   missed. A row with another epoch (the unlogged queue was emptied by crash recovery) is
//!   logged and the reader continues in the new epoch from that row.
//! * The connection is driven by this task itself (`Connection::poll_message`, raced against the
//!   poll loop): notifications only set a [`Notify`] permit, so any number of them coalesce into
//!   one extra poll and a notification that arrives mid-poll is not lost.
//! * Rows whose `origin` is this sidecar are skipped: it delivered them to its own clients when
//!   they were sent (`publisher`).
//! * Delivery is a non-blocking registry publish: a slow client never stalls the reader. The
//!   reader yields every `YIELD_EVERY` rows so connection writers drain during large bursts.
//! * The task ends only when the server's shutdown token is cancelled; connection loss (an
//!   error, the socket closing, or a query running past 30 s) means reconnecting with
//!   exponential backoff (250 ms doubling to 5 s, reset once connected).

use std::future::{poll_fn, Future};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Row, Socket};

use crate::app::AppState;
use crate::codec::{Broadcast, UserBroadcast, UserPayload};
use crate::error::QueueError;
use crate::fanout::TopicKey;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Rows published between two yields to the scheduler. A poll batch can be larger than a
/// client's queue: yielding lets the writers drain while a burst is published, so only clients
/// that really cannot keep up are closed as slow.
const YIELD_EVERY: usize = 32;
/// Longest a single query may take before the connection is presumed dead.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_SQL: &str =
    "SELECT epoch, seq, topic, private, event, payload, binary_payload, msg_id, \
                        origin, extension FROM realtime._poll($1, $2, $3)";

/// Where the reader is in the queue.
struct Position {
    epoch: String,
    /// Highest seq already delivered.
    after: i64,
}

/// Run until `state.shutdown` is cancelled.
pub async fn run(state: Arc<AppState>) {
    let mut position = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let outcome = tokio::select! {
            () = state.shutdown.cancelled() => break,
            outcome = session(&state, &mut position, &mut backoff) => outcome,
        };
        state.db_connected.store(false, Ordering::Relaxed);
        let Err(err) = outcome;
        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "queue reader disconnected");
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    state.db_connected.store(false, Ordering::Relaxed);
    tracing::info!("queue reader stopped");
}

/// One database session; returns only on failure.
async fn session(
    state: &AppState,
    position: &mut Option<Position>,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, QueueError> {
    let mut config: tokio_postgres::Config = state.config.database_url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("pg-realtime-sidecar");
    }
    // Keepalives catch a dead peer while idle; QUERY_TIMEOUT catches it mid-query.
    config
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let (client, connection) = config.connect(NoTls).await?;
    let wakeup = Notify::new();
    tokio::select! {
        err = drive(connection, &wakeup) => Err(err),
        result = poll_loop(state, &client, position, &wakeup, backoff) => result,
    }
}

/// Drive the connection; every notification (we LISTEN on one channel only) is a wake-up.
async fn drive(mut connection: Connection<Socket, NoTlsStream>, wakeup: &Notify) -> QueueError {
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => wakeup.notify_one(),
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(notice = notice.message(), "database notice")
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return QueueError::Db(err),
            None => return QueueError::ConnectionClosed,
        }
    }
}

async fn poll_loop(
    state: &AppState,
    client: &Client,
    position: &mut Option<Position>,
    wakeup: &Notify,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, QueueError> {
    // `_poll` refuses snapshot isolation; do not inherit a stricter database default.
    bounded(client.batch_execute(
        "SET default_transaction_isolation = 'read committed'; LISTEN realtime_wakeup",
    ))
    .await?;
    let pos = match position {
        Some(pos) => pos,
        None => {
            let sql = "SELECT epoch, head FROM realtime._position()";
            let row = bounded(client.query_one(sql, &[])).await?;
            position.insert(Position {
                epoch: row.try_get(0)?,
                after: row.try_get(1)?,
            })
        }
    };
    let poll = bounded(client.prepare(POLL_SQL)).await?;
    state.db_connected.store(true, Ordering::Relaxed);
    *backoff = MIN_BACKOFF;
    tracing::info!(epoch = %pos.epoch, after = pos.after, "queue reader connected");
    let linger = state.config.poll_linger();
    loop {
        let params: [&(dyn ToSql + Sync); 3] = [&pos.epoch, &pos.after, &state.config.poll_batch];
        let rows = bounded(client.query(&poll, &params)).await?;
        if rows.is_empty() {
            tokio::select! {
                () = wakeup.notified() => {}
                () = tokio::time::sleep(state.config.poll_fallback()) => {}
            }
            continue;
        }
        tracing::trace!(rows = rows.len(), "polled");
        for (i, row) in rows.iter().enumerate() {
            let epoch: &str = row.try_get("epoch")?;
            let seq: i64 = row.try_get("seq")?;
            if epoch != pos.epoch {
                tracing::warn!(old = %pos.epoch, new = epoch, seq,
                    "queue epoch changed (crash recovery emptied the queue); continuing in the new epoch");
                pos.epoch = epoch.to_owned();
            }
            pos.after = seq;
            deliver(state, row, seq)?;
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        }
        if rows.len() < state.config.poll_batch as usize && !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
    }
}

/// Hand one queue row to the fan-out, unless this sidecar published it (its clients have it).
fn deliver(state: &AppState, row: &Row, seq: i64) -> Result<(), QueueError> {
    if row.try_get::<_, Option<&str>>("origin")? == Some(state.instance.as_str()) {
        return Ok(());
    }
    match row.try_get::<_, &str>("extension")? {
        "broadcast" => match broadcast_of(row) {
            Ok((key, msg)) => {
                state.registry.publish(&key, &msg, None);
            }
            Err(err) => tracing::warn!(seq, error = %err, "queue row skipped"),
        },
        "postgres_changes" => {
            // Routed to one sidecar (`topic`); the others skip it.
            if row.try_get::<_, &str>("topic")? == state.instance {
                let payload: Option<&str> = row.try_get("payload")?;
                if let Err(err) = state.changes.deliver(payload.unwrap_or("null")) {
                    tracing::warn!(seq, error = %err, "queue row skipped");
                }
            }
        }
        "presence" => match presence_of(row) {
            Ok((key, diff)) => state.presence.deliver(&key, &diff),
            Err(err) => tracing::warn!(seq, error = %err, "queue row skipped"),
        },
        other => tracing::debug!(
            seq,
            extension = other,
            "queue row of another extension skipped"
        ),
    }
    Ok(())
}

/// A database round trip that gives up after `QUERY_TIMEOUT`.
async fn bounded<T>(
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(QueueError::Timeout),
    }
}

/// A queue row as a `presence_diff` payload for `realtime:<topic>` in its namespace.
fn presence_of(row: &Row) -> Result<(TopicKey, Box<RawValue>), QueueError> {
    let key = TopicKey {
        sub_topic: row.try_get("topic")?,
        private: row.try_get("private")?,
    };
    let json: Option<String> = row.try_get("payload")?;
    let diff = RawValue::from_string(json.ok_or(QueueError::BadPayload)?)
        .map_err(|_| QueueError::BadPayload)?;
    Ok((key, diff))
}

/// A queue row as a user broadcast to `realtime:<topic>` in its namespace.
fn broadcast_of(row: &Row) -> Result<(TopicKey, Broadcast), QueueError> {
    let key = TopicKey {
        sub_topic: row.try_get("topic")?,
        private: row.try_get("private")?,
    };
    let binary: Option<Vec<u8>> = row.try_get("binary_payload")?;
    let json: Option<String> = row.try_get("payload")?;
    let payload = match (binary, json) {
        (Some(bytes), _) => UserPayload::Binary(Bytes::from(bytes)),
        // jsonb::text is always valid JSON; a failure here means a broken contract.
        (None, Some(text)) => {
            UserPayload::Json(RawValue::from_string(text).map_err(|_| QueueError::BadPayload)?)
        }
        (None, None) => UserPayload::Json(RawValue::NULL.to_owned()),
    };
    let msg = UserBroadcast {
        event: row.try_get("event")?,
        payload,
        meta_id: row.try_get("msg_id")?,
    };
    Ok((key, Broadcast::User(msg)))
}
