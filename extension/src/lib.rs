//! pg_realtime: the in-database half of the realtime layer.
//!
//! Writers call `realtime.broadcast()` / `realtime.send()`; messages wait in backend memory
//! until their transaction commits, then land in the UNLOGGED `realtime.queue` in commit order
//! (`queue`, `horizon`). The `notifier` background worker wakes idle sidecars with one NOTIFY per
//! idle→busy edge and prunes the queue. The public SQL surface lives in `sql/*.sql`; this crate
//! holds the hot paths only.
//!
//! The library must be in `shared_preload_libraries`: the commit-order registry lives in shared
//! memory and the notifier is a background worker.
use pgrx::prelude::*;

mod changes;
mod error;
mod filter;
mod guc;
mod horizon;
mod identity;
mod notifier;
mod pending;
mod queue;
mod rls;
mod spi;

pgrx::pg_module_magic!();

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/authorization.sql",
    name = "authorization",
    requires = ["schema"]
);
extension_sql_file!(
    "../../sql/presence.sql",
    name = "presence",
    requires = ["schema"]
);
extension_sql_file!(
    "../../sql/changes.sql",
    name = "changes",
    requires = ["schema", _capture, subscriptions_changed]
);
extension_sql_file!("../../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a flag the loading process itself sets; _PG_init runs on its
    // only thread.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        error::RealtimeError::NotPreloaded.report();
    }
    guc::register();
    horizon::init_shmem();
    changes::init_shmem();
    queue::register_callbacks();
    notifier::register();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    // These run inside one transaction that is rolled back, so they cover what can be seen
    // before commit; commit-time behaviour is covered by the SQL regression and isolation tier.

    #[pg_test]
    fn nothing_is_queued_before_commit() {
        Spi::run("select realtime.broadcast('t', 'e', '{\"a\":1}')").unwrap();
        let pending = Spi::get_one::<i64>("select realtime._pending()").unwrap();
        assert_eq!(pending, Some(1));
        let queued = Spi::get_one::<i64>("select count(*) from realtime.queue").unwrap();
        assert_eq!(queued, Some(0));
    }

    #[pg_test]
    fn savepoint_rollback_drops_only_its_messages() {
        Spi::run("select realtime.broadcast('t', 'e', '{}')").unwrap();
        // A subtransaction that errors discards what it queued.
        Spi::run(
            "do $$ begin
               begin
                 perform realtime.broadcast('t', 'e', '{}');
                 perform realtime.broadcast('t', 'e', '{}');
                 raise exception 'boom';
               exception when others then null;
               end;
               perform realtime.broadcast('t', 'e', '{}');
             end $$",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("select realtime._pending()").unwrap(),
            Some(2)
        );
    }

    #[pg_test(error = "payload must be jsonb or bytea, not integer")]
    fn enqueue_rejects_other_payload_types() {
        Spi::run("select realtime._enqueue('t', 'e', 1, false, null)").unwrap();
    }

    #[pg_test(error = "topic must not be empty")]
    fn broadcast_rejects_empty_topic() {
        Spi::run("select realtime.broadcast('', 'e', '{}')").unwrap();
    }

    #[pg_test]
    fn position_reports_an_epoch() {
        let epoch = Spi::get_one::<String>("select epoch from realtime._position()").unwrap();
        assert_eq!(epoch.map(|e| e.len()), Some(36));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries='pg_realtime'"]
    }
}
