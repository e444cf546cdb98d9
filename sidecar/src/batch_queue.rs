//! A bounded queue that callers fill without waiting and one task drains in batches (the
//! publisher's and the unsubscriber's).
//!
//! Invariants:
//! * [`BatchQueue::offer`] never waits: a full queue refuses the item, and the caller says what
//!   that loss means.
//! * The draining side is taken once ([`BatchQueue::batches`]) by the task that owns it. It
//!   stops at shutdown or once every sender is gone, then takes what is still queued
//!   ([`Batches::rest`]) for one last flush.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct BatchQueue<T> {
    tx: mpsc::Sender<T>,
    /// Taken once by [`BatchQueue::batches`].
    rx: Mutex<Option<mpsc::Receiver<T>>>,
}

impl<T> BatchQueue<T> {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        BatchQueue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queue `item` without waiting; `false` if the queue is full.
    pub fn offer(&self, item: T) -> bool {
        self.tx.try_send(item).is_ok()
    }

    /// The draining side, in batches of at most `max`; `None` once taken.
    pub fn batches(&self, max: usize) -> Option<Batches<T>> {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        rx.map(|rx| Batches { rx, max })
    }

    /// The items queued so far (taking them), without taking the draining side.
    #[cfg(test)]
    pub fn queued(&self) -> Vec<T> {
        let mut rx = self.rx.lock().expect("lock");
        let rx = rx.as_mut().expect("receiver");
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }
}

pub struct Batches<T> {
    rx: mpsc::Receiver<T>,
    max: usize,
}

impl<T> Batches<T> {
    /// Wait for the next items and append them to `batch`; `false` at shutdown or once every
    /// sender is gone.
    pub async fn next(&mut self, shutdown: &CancellationToken, batch: &mut Vec<T>) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            n = self.rx.recv_many(batch, self.max) => n > 0,
        }
    }

    /// Close the queue; what is still in it.
    pub fn rest(mut self) -> Vec<T> {
        self.rx.close();
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}
