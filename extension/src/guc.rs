//! Settings (`pg_realtime.*`). `database` is fixed at server start; the queue limits reload on
//! SIGHUP (the notifier prunes with them) and a superuser may override them per session, as
//! the subscription caps (read by `realtime._subscribe` in the sidecar's session).
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Database the notifier connects to (NOTIFY is per database). The extension is used there.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Messages older than this many seconds are pruned.
pub static QUEUE_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Upper bound on the span of sequence numbers kept in the queue.
pub static QUEUE_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);
/// Postgres Changes caps, read by `realtime._subscribe` (a client cannot impose an unbounded
/// cost on writers): conditions per subscription, subscriptions per table and in the database.
pub static MAX_FILTER_CONDITIONS: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static MAX_SUBSCRIPTIONS_PER_TABLE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static MAX_SUBSCRIPTIONS: GucSetting<i32> = GucSetting::<i32>::new(100_000);
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
        c"pg_realtime.max_filter_conditions",
        c"Most filter conditions one Postgres Changes subscription may have.",
        c"Each condition is evaluated in every writing statement on the table.",
        &MAX_FILTER_CONDITIONS,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_realtime.max_subscriptions_per_table",
        c"Most Postgres Changes subscriptions on one table.",
        c"Bounds the work one writing statement on the table does for its subscribers.",
        &MAX_SUBSCRIPTIONS_PER_TABLE,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_realtime.max_subscriptions",
        c"Most Postgres Changes subscriptions in the database.",
        c"",
        &MAX_SUBSCRIPTIONS,
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
