//! Messages queued by the current transaction, waiting for its commit.
//!
//! Owned by one backend. Payload datums are flat copies in `TopTransactionContext`, so the list
//! must be cleared at every transaction end (the memory goes away with it). Each entry remembers
//! the subtransaction level that queued it: an aborted subtransaction drops its entries, a
//! committed one hands them to its parent.
use pgrx::prelude::*;
use std::cell::RefCell;

pub struct Message {
    pub topic: String,
    pub event: String,
    pub private: bool,
    /// Flat copy of a jsonb or bytea value, valid until the transaction ends.
    pub payload: pg_sys::Datum,
    pub binary: bool,
    pub msg_id: Option<pgrx::Uuid>,
    pub origin: Option<pgrx::Uuid>,
    pub extension: Extension,
    level: i32,
}

/// What a queued message carries (`realtime.queue.extension`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    Broadcast,
    Presence,
    PostgresChanges,
}

impl Extension {
    pub fn parse(name: &str) -> Option<Extension> {
        match name {
            "broadcast" => Some(Extension::Broadcast),
            "presence" => Some(Extension::Presence),
            "postgres_changes" => Some(Extension::PostgresChanges),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
            Extension::PostgresChanges => "postgres_changes",
        }
    }
}

/// Where a message comes from and what it is, besides its topic and payload.
pub struct Envelope {
    pub private: bool,
    pub msg_id: Option<pgrx::Uuid>,
    pub origin: Option<pgrx::Uuid>,
    pub extension: Extension,
}

thread_local! {
    static PENDING: RefCell<Vec<Message>> = const { RefCell::new(Vec::new()) };
}

pub fn push(topic: &str, event: &str, payload: pg_sys::Datum, binary: bool, envelope: Envelope) {
    // SAFETY: the callers (the send functions, capture's trigger) run inside a transaction, so
    // TopTransactionContext exists, and pass a non-null jsonb or bytea datum: a varlena, which
    // is what pg_detoast_datum_copy takes. The previous context is switched back before any Rust code
    // runs; an ERROR in between leaves the switch to transaction abort, which resets it.
    let payload = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);
        let copy = pg_sys::pg_detoast_datum_copy(payload.cast_mut_ptr());
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::Datum::from(copy)
    };
    // SAFETY: a read of the current transaction state, inside a transaction.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with_borrow_mut(|p| {
        let Envelope {
            private,
            msg_id,
            origin,
            extension,
        } = envelope;
        p.push(Message {
            topic: topic.into(),
            event: event.into(),
            private,
            payload,
            binary,
            msg_id,
            origin,
            extension,
            level,
        })
    });
}

pub fn len() -> usize {
    PENDING.with_borrow(|p| p.len())
}

pub fn take() -> Vec<Message> {
    PENDING.with_borrow_mut(std::mem::take)
}

pub fn clear() {
    PENDING.with_borrow_mut(|p| p.clear());
}

/// A subtransaction at `level` aborted: forget what it (and its children) queued.
pub fn abort_subxact(level: i32) {
    PENDING.with_borrow_mut(|p| p.retain(|m| m.level < level));
}

/// A subtransaction at `level` committed: its messages now belong to the parent.
pub fn commit_subxact(level: i32) {
    PENDING.with_borrow_mut(|p| {
        p.iter_mut()
            .filter(|m| m.level >= level)
            .for_each(|m| m.level = level - 1)
    });
}
