//! The pool of database connections for short queries on a client's behalf (private-channel
//! policies today), separate from the queue reader's single long-lived connection.
//!
//! Ownership and lifecycle: one [`Pool`] in `AppState`, created at start-up without connecting;
//! connections open on first use, are reused across queries and are dropped with the pool at
//! exit. Every session on these connections is configured at startup (not per query):
//! * `synchronous_commit = off`: authorization transactions write nothing that must survive
//!   (their probe rows are rolled back), so they must not wait for a WAL flush;
//! * `statement_timeout`: a slow or stuck policy fails one join instead of holding a
//!   connection forever.
//!
//! Waiting for a free connection is bounded by `POOL_WAIT`; a caller that times out is told to
//! raise `DB_POOL_SIZE` (Supabase's `IncreaseConnectionPool`).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::Config;

/// Longest a query waits for a free connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// Longest one statement on a pool connection may run.
const STATEMENT_TIMEOUT_MS: u32 = 5_000;

pub fn pool(config: &Config) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = config
        .database_url
        .parse()
        .map_err(|err| format!("DATABASE_URL: {err}"))?;
    if pg.get_application_name().is_none() {
        pg.application_name("pg-realtime-sidecar (authorization)");
    }
    pg.connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .options(format!(
            "-c synchronous_commit=off -c statement_timeout={STATEMENT_TIMEOUT_MS} \
             -c default_transaction_isolation=read\\ committed"
        ));
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.db_pool_size as usize)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|err| format!("database pool: {err}"))
}
