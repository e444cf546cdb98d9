//! Deletes a channel's Postgres Changes subscription rows as soon as the channel ends (leave,
//! server close, socket close, re-subscription), instead of leaving them to the sweep: every
//! row is work for every write to its table until it is gone.
//!
//! Ownership and invariants:
//! * [`Unsubscriber`] (in `AppState`) is a bounded queue of id lists; [`Unsubscriber::forget`]
//!   never waits. A full queue leaves the rows to the sweep (`changes::sweep`, run by the
//!   presence heartbeat), which stays the backstop for whatever is lost here.
//! * One task ([`run`], owned by `main`, stopped by the shutdown token) drains the queue, one
//!   `realtime._unsubscribe` statement for everything queued meanwhile. Best effort: a failed
//!   statement is logged and its ids are left to the sweep. At shutdown, what is queued is
//!   deleted once, briefly.

use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::batch_queue::BatchQueue;

/// Id lists (one per ended channel) waiting at most.
pub const QUEUE_CAPACITY: usize = 4096;
/// Id lists deleted by one statement at most.
const BATCH: usize = 256;
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
const UNSUBSCRIBE_SQL: &str = "SELECT realtime._unsubscribe($1::text::uuid, $2)";

pub struct Unsubscriber {
    /// Drained by [`run`].
    queue: BatchQueue<Vec<i64>>,
}

impl Unsubscriber {
    pub fn new(capacity: usize) -> Self {
        Unsubscriber {
            queue: BatchQueue::new(capacity),
        }
    }

    /// Queue the deletion of subscription rows `ids` without waiting.
    pub fn forget(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        if !self.queue.offer(ids.to_vec()) {
            tracing::debug!(
                n = ids.len(),
                "unsubscribe queue full; the sweep deletes these subscriptions"
            );
        }
    }
}

#[cfg(test)]
impl Unsubscriber {
    /// The id lists queued so far (taking them).
    pub fn queued(&self) -> Vec<Vec<i64>> {
        self.queue.queued()
    }
}

/// Delete queued subscriptions until shutdown.
pub async fn run(state: Arc<AppState>) {
    let Some(mut queue) = state.unsubscriber.queue.batches(BATCH) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    while queue.next(&state.shutdown, &mut batch).await {
        let ids: Vec<i64> = batch.drain(..).flatten().collect();
        if let Err(err) = unsubscribe(&state, &ids).await {
            tracing::info!(error = %err, n = ids.len(), "deleting subscriptions failed; the sweep will");
        }
    }
    let ids: Vec<i64> = queue.rest().into_iter().flatten().collect();
    if !ids.is_empty() {
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, unsubscribe(&state, &ids)).await;
    }
}

async fn unsubscribe(state: &AppState, ids: &[i64]) -> Result<(), String> {
    let client = state.db.get().await.map_err(|err| err.to_string())?;
    client
        .execute(UNSUBSCRIBE_SQL, &[&state.instance, &ids])
        .await
        .map_err(|err| err.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_never_waits() {
        let u = Unsubscriber::new(1);
        u.forget(&[]);
        u.forget(&[1, 2]);
        u.forget(&[3]); // full: left to the sweep
        assert_eq!(u.queued(), [vec![1, 2]]);
    }
}
