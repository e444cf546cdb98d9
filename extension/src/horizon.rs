//! Shared-memory commit-order registry.
//!
//! Invariants:
//! - `next_seq` and the in-flight slots change together under one LWLock, so a reader that
//!   computes the horizon (lowest seq still owned by an unfinished transaction, else
//!   `next_seq`) never misses a reservation.
//! - A backend owns at most one slot (indexed by `pgprocno`) between its pre-commit and the end
//!   of its transaction; `XACT_EVENT_COMMIT` fires after the transaction is visible, so every
//!   seq below the horizon is either visible to a new snapshot or was aborted.
//! - `idle` is set by a reader that found nothing and cleared by the first writer to finish
//!   after that; the writer then sets the notifier's latch. Writer: clear slot, then read
//!   `idle`; reader: set `idle`, then read the horizon again. One of the two sees the other.
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::RealtimeError;

/// Slots are indexed by `pgprocno`, which is below MaxBackends + auxiliary + prepared.
pub const MAX_SLOTS: usize = 4096;
const FREE: i64 = 0;

#[derive(Copy, Clone)]
pub struct Registry {
    initialized: bool,
    next_seq: i64,
    inflight: [i64; MAX_SLOTS],
}

// SAFETY: plain old data (a flag, a counter, an array of i64): no pointers, no heap, no
// per-process state, so the same bytes mean the same thing in every backend that maps them.
unsafe impl PGRXSharedMemory for Registry {}

impl Registry {
    const fn new() -> Self {
        Self {
            initialized: false,
            next_seq: 1,
            inflight: [FREE; MAX_SLOTS],
        }
    }

    fn horizon(&self) -> i64 {
        // Only slots of PGPROCs that exist can be taken: scan those, not the whole array (the
        // scan runs under the shared lock that writers wait on).
        // SAFETY: ProcGlobal points to shared memory set up by the postmaster before any
        // backend runs, and allProcCount never changes after that.
        let procs = unsafe { (*pg_sys::ProcGlobal).allProcCount as usize }.min(MAX_SLOTS);
        self.inflight[..procs]
            .iter()
            .copied()
            .filter(|&s| s != FREE)
            .min()
            .unwrap_or(self.next_seq)
    }
}

// SAFETY: a name no other shared-memory object uses (the extension's prefix, once each);
// allocated by pg_shmem_init! in _PG_init, at server start.
static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pg_realtime_registry") };
// SAFETY: as REGISTRY: a name of its own, allocated in _PG_init.
static IDLE: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_realtime_idle") };
// SAFETY: as REGISTRY: a name of its own, allocated in _PG_init.
static WAKE_REQUESTED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_realtime_wake") };
/// Address of the notifier's latch (shared memory is mapped at the same address everywhere).
// SAFETY: as REGISTRY: a name of its own, allocated in _PG_init.
static NOTIFIER_LATCH: PgAtomic<AtomicUsize> = unsafe { PgAtomic::new(c"pg_realtime_latch") };

pub fn init_shmem() {
    pg_shmem_init!(REGISTRY = Registry::new());
    pg_shmem_init!(IDLE = AtomicBool::new(false));
    pg_shmem_init!(WAKE_REQUESTED = AtomicBool::new(false));
    pg_shmem_init!(NOTIFIER_LATCH = AtomicUsize::new(0));
}

pub fn is_initialized() -> bool {
    REGISTRY.share().initialized
}

/// Seeds `next_seq` once per server lifetime from what the (possibly surviving) queue holds.
/// `floor` is read before the lock: no seq can be reserved until `initialized` is set.
pub fn initialize(floor: i64) {
    let mut reg = REGISTRY.exclusive();
    if !reg.initialized {
        reg.next_seq = reg.next_seq.max(floor + 1);
        reg.initialized = true;
    }
}

fn my_slot() -> usize {
    // SAFETY: every backend that runs transactions has its PGPROC (InitProcess) before it can
    // reach pre-commit or an end-of-transaction callback, the only callers.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    if procno < 0 || procno as usize >= MAX_SLOTS {
        RealtimeError::TooManyBackends(MAX_SLOTS as i32).report();
    }
    procno as usize
}

/// Reserves `n` consecutive seqs for this backend's committing transaction.
pub fn reserve(n: usize) -> i64 {
    let slot = my_slot();
    let mut reg = REGISTRY.exclusive();
    let first = reg.next_seq;
    reg.next_seq += n as i64;
    reg.inflight[slot] = first;
    first
}

/// Ends this backend's reservation (commit or abort); wakes an idle reader after a commit.
pub fn release(committed: bool) {
    let slot = my_slot();
    REGISTRY.exclusive().inflight[slot] = FREE;
    if committed && IDLE.get().load(Ordering::SeqCst) && IDLE.get().swap(false, Ordering::SeqCst) {
        WAKE_REQUESTED.get().store(true, Ordering::SeqCst);
        let latch = NOTIFIER_LATCH.get().load(Ordering::SeqCst);
        if latch != 0 {
            // SAFETY: a non-zero value is the notifier's MyLatch, which is its PGPROC's latch in
            // the shared PGPROC array (mapped at the same address in every backend, never freed).
            // If the notifier has exited since, the latch is still valid memory: the cost is a
            // spurious wake-up of whoever owns it now.
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }
}

/// Lowest seq that may still become visible; everything below it is final.
pub fn horizon() -> i64 {
    REGISTRY.share().horizon()
}

/// Marks the caller idle; the next committing writer requests a wake-up.
pub fn declare_idle() {
    IDLE.get().store(true, Ordering::SeqCst);
}

/// Called by the notifier: consumes a pending wake-up request.
pub fn take_wake_request() -> bool {
    WAKE_REQUESTED.get().swap(false, Ordering::SeqCst)
}

pub fn publish_notifier_latch(latch: *mut pg_sys::Latch) {
    NOTIFIER_LATCH.get().store(latch as usize, Ordering::SeqCst);
}
