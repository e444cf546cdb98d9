//! The notifier background worker: the only process that NOTIFYs, and the queue's pruner.
//!
//! Lifecycle: started by the postmaster (restarted 1 s after a failure), stops on SIGTERM or
//! postmaster death. It publishes its latch in shared memory; a committing writer that finds a
//! reader idle sets that latch. One wake-up → one `NOTIFY realtime_wakeup`, however many
//! writers committed meanwhile, so writers never take NOTIFY's cluster-wide commit lock.
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

use crate::{guc, horizon, queue};

pub fn register() {
    BackgroundWorkerBuilder::new("pg_realtime notifier")
        .set_type("pg_realtime notifier")
        .set_library("pg_realtime")
        .set_function("pg_realtime_notifier_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_realtime_notifier_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned());
    BackgroundWorker::connect_worker_to_spi(database.as_deref(), None);
    // SAFETY: a plain read; by now InitProcess has pointed MyLatch at this worker's PGPROC latch,
    // in shared memory, which is what other backends may set.
    horizon::publish_notifier_latch(unsafe { pg_sys::MyLatch });

    // Wake whoever went idle while no notifier was running.
    BackgroundWorker::transaction(|| Spi::run("notify realtime_wakeup").expect("NOTIFY failed"));
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        let interval = Duration::from_millis(guc::PRUNE_INTERVAL_MS.get() as u64);
        let until_prune = interval.saturating_sub(last_prune.elapsed());
        if !BackgroundWorker::wait_latch(Some(until_prune.max(Duration::from_millis(1)))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: what every PostgreSQL process does on SIGHUP, from its main loop, outside
            // any transaction (each BackgroundWorker::transaction has ended before the loop
            // comes back here).
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if horizon::take_wake_request() {
            BackgroundWorker::transaction(|| {
                Spi::run("notify realtime_wakeup").expect("NOTIFY failed")
            });
        }
        if last_prune.elapsed() >= interval {
            last_prune = Instant::now();
            BackgroundWorker::transaction(|| {
                if extension_installed() {
                    queue::prune();
                }
            });
        }
    }
    horizon::publish_notifier_latch(std::ptr::null_mut());
}

fn extension_installed() -> bool {
    Spi::get_one::<bool>("select to_regclass('realtime.queue') is not null")
        .ok()
        .flatten()
        .unwrap_or(false)
}
