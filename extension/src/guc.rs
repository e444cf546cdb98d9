//! Settings (`pg_realtime.*`). `database` is fixed at server start; the queue limits reload on
//! SIGHUP (the notifier prunes with them) and a superuser may override them per session.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Database the notifier connects to (NOTIFY is per database). The extension is used there.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Messages older than this many seconds are pruned.
pub static QUEUE_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Upper bound on the span of sequence numbers kept in the queue.
pub static QUEUE_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);
/// How often the notifier prunes, in milliseconds.
pub static PRUNE_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"pg_realtime.database",
        c"Database in which pg_realtime's notifier runs.",
        c"NOTIFY is per database, so the extension is used in exactly this database.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_realtime.queue_retention",
        c"How long delivered messages stay in realtime.queue for replay.",
        c"",
        &QUEUE_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_realtime.queue_max_rows",
        c"Maximum span of sequence numbers kept in realtime.queue.",
        c"Bounds the queue even when no sidecar reads it.",
        &QUEUE_MAX_ROWS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_realtime.prune_interval",
        c"How often the notifier prunes realtime.queue.",
        c"",
        &PRUNE_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}
