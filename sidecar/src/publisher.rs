//! Hands what clients send (broadcasts) to Postgres, so that every other sidecar on the same
//! database delivers it too. This sidecar has already delivered it to its own clients; the rows
//! carry its instance id as `origin` and its queue reader skips them.
//!
//! Ownership and invariants:
//! * [`Publisher`] (in `AppState`) is the bounded entry: `publish` never waits. A full queue
//!   means the database cannot keep up; the message then reaches this sidecar's clients only and
//!   the loss is logged and counted (`dropped`).
//! * One task ([`run`], owned by `main`, stopped by the shutdown token) drains the queue in
//!   batches, one `realtime._publish` statement per batch, strictly one batch after another: what
//!   one client sends reaches the other sidecars in the order it was sent.
//! * A batch that cannot be written is retried with backoff for `RETRY_FOR`, then dropped: these
//!   are live messages, worthless minutes later. At shutdown the queue is flushed once.
//! * A batch the database refuses (a data error, not an outage) never loses the messages it
//!   could store: it is written again one message at a time, in order, and only the refused
//!   ones are dropped, each with a log line. (Input is validated where it enters, so this is
//!   the second line of defence: one client's bad message must not cost others theirs.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::batch_queue::BatchQueue;
use crate::codec::UserPayload;
use crate::fanout::TopicKey;

/// Messages waiting for the database at most.
pub const QUEUE_CAPACITY: usize = 8192;
/// Messages written by one `realtime._publish` call at most.
const BATCH: usize = 512;
/// How long a failing batch is retried before it is dropped.
const RETRY_FOR: Duration = Duration::from_secs(5);
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

const PUBLISH_SQL: &str = "SELECT realtime._publish($1::text::uuid, $2, $3, $4, $5, \
                           $6::text[]::jsonb[], $7)";

/// One message for the other sidecars.
#[derive(Debug)]
pub struct Outgoing {
    pub key: TopicKey,
    /// `realtime.queue.extension`: `broadcast` or `presence`.
    pub extension: &'static str,
    pub event: String,
    pub payload: UserPayload,
}

pub struct Publisher {
    /// Drained by [`run`].
    queue: BatchQueue<Outgoing>,
    dropped: AtomicU64,
}

impl Publisher {
    pub fn new(capacity: usize) -> Self {
        Publisher {
            queue: BatchQueue::new(capacity),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queue `msg` for the other sidecars without waiting.
    pub fn publish(&self, msg: Outgoing) {
        if !self.queue.offer(msg) {
            self.count_dropped(1, "publish queue full");
        }
    }

    fn count_dropped(&self, n: u64, why: &str) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        // The first loss, then one line per thousand: a stalled database must not flood the log.
        if before == 0 || before / 1000 != (before + n) / 1000 {
            tracing::warn!(
                why,
                dropped_total = before + n,
                "messages not handed to other sidecars"
            );
        }
    }
}

/// Drain the publish queue into the database until shutdown.
pub async fn run(state: Arc<AppState>) {
    let Some(mut queue) = state.publisher.queue.batches(BATCH) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    while queue.next(&state.shutdown, &mut batch).await {
        publish_batch(&state, &batch).await;
        batch.clear();
    }
    // Flush what is already queued, once and briefly.
    for chunk in queue.rest().chunks(BATCH) {
        if !matches!(
            tokio::time::timeout(SHUTDOWN_FLUSH, write(&state, chunk)).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
}

/// Why a write failed.
#[derive(Debug)]
enum WriteError {
    /// The database could not be reached or is busy: worth retrying.
    Unavailable(String),
    /// The database refused the statement (for instance a data error): retrying the same
    /// batch would fail again.
    Refused(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Unavailable(e) | WriteError::Refused(e) => f.write_str(e),
        }
    }
}

impl From<tokio_postgres::Error> for WriteError {
    /// Connection loss, transaction conflicts, resource exhaustion, operator intervention and
    /// system errors (SQLSTATE classes 08, 40, 53, 57, 58) are transient; any other error the
    /// server reports is a refusal of this statement.
    fn from(err: tokio_postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) if !matches!(&db.code().code()[..2], "08" | "40" | "53" | "57" | "58") => {
                WriteError::Refused(format!("{} ({})", db.message(), db.code().code()))
            }
            _ => WriteError::Unavailable(err.to_string()),
        }
    }
}

/// Write one batch; if the database refuses it, write its messages one by one so that only the
/// refused ones are lost.
async fn publish_batch(state: &AppState, batch: &[Outgoing]) {
    let give_up = tokio::time::Instant::now() + RETRY_FOR;
    let Err(err) = write_with_retry(state, batch, give_up).await else {
        return;
    };
    if batch.len() > 1 {
        tracing::info!(error = %err, messages = batch.len(),
            "the database refused a batch; writing its messages one by one");
    }
    for msg in batch {
        if let Err(err) = write_with_retry(state, std::slice::from_ref(msg), give_up).await {
            tracing::warn!(error = %err, topic = %msg.key.sub_topic, event = %msg.event,
                extension = msg.extension, "the database refused a message; dropped");
            state.publisher.count_dropped(1, "refused by the database");
        }
    }
}

/// Write `batch`, retrying while the database is unavailable until `give_up`; `Err` is a
/// refusal (an outage past `give_up` is counted as dropped here).
async fn write_with_retry(
    state: &AppState,
    batch: &[Outgoing],
    give_up: tokio::time::Instant,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match write(state, batch).await {
            Ok(()) => return Ok(()),
            Err(WriteError::Refused(err)) => return Err(err),
            Err(err) if tokio::time::Instant::now() + backoff < give_up => {
                tracing::debug!(error = %err, "publishing to other sidecars failed, retrying");
                tokio::select! {
                    () = state.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(err) => {
                tracing::warn!(error = %err, "publishing to other sidecars failed");
                state
                    .publisher
                    .count_dropped(batch.len() as u64, "database unavailable");
                return Ok(());
            }
        }
    }
}

async fn write(state: &AppState, batch: &[Outgoing]) -> Result<(), WriteError> {
    let client = state
        .db
        .get()
        .await
        .map_err(|err| WriteError::Unavailable(err.to_string()))?;
    let statement = client.prepare_cached(PUBLISH_SQL).await?;
    let topics: Vec<&str> = batch.iter().map(|m| m.key.sub_topic.as_str()).collect();
    let privates: Vec<bool> = batch.iter().map(|m| m.key.private).collect();
    let extensions: Vec<&str> = batch.iter().map(|m| m.extension).collect();
    let events: Vec<&str> = batch.iter().map(|m| m.event.as_str()).collect();
    let json: Vec<Option<&str>> = batch
        .iter()
        .map(|m| match &m.payload {
            UserPayload::Json(raw) => Some(raw.get()),
            UserPayload::Binary(_) => None,
        })
        .collect();
    let binary: Vec<Option<&[u8]>> = batch
        .iter()
        .map(|m| match &m.payload {
            UserPayload::Json(_) => None,
            UserPayload::Binary(bytes) => Some(bytes.as_ref()),
        })
        .collect();
    client
        .execute(
            &statement,
            &[
                &state.instance,
                &topics,
                &privates,
                &extensions,
                &events,
                &json,
                &binary,
            ],
        )
        .await?;
    Ok(())
}
