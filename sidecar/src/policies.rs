//! What a user may do on a private channel, as decided by the `realtime.messages` policies in the
//! database (docs/protocol.md §9.4; SQL in sql/authorization.sql).
//!
//! One evaluation is one round trip: `realtime._authorize` runs every probe as the user's role
//! with their claims, the topic and the request headers set, and rolls all of it back. The
//! verdicts are cached in the channel until its token changes (refresh) or the periodic re-check
//! runs; nothing here keeps state.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};

use crate::auth::Claims;
use crate::error::PolicyError;

const AUTHORIZE_SQL: &str =
    "SELECT broadcast_read, broadcast_write, presence_read, presence_write \
     FROM realtime._authorize($1, $2::text::jsonb, $3, $4::text::jsonb)";
/// Upper bound for one evaluation, pool wait included (the statement timeout is lower).
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The verdicts of a channel's read (SELECT) and write (INSERT) policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    pub broadcast_read: bool,
    pub broadcast_write: bool,
    pub presence_read: bool,
    pub presence_write: bool,
}

impl Permissions {
    /// Everything allowed: what a public channel may do.
    pub const PUBLIC: Permissions = Permissions {
        broadcast_read: true,
        broadcast_write: true,
        presence_read: true,
        presence_write: true,
    };

    /// A channel may be joined (and stay joined) with read access to broadcasts, or to
    /// presence if it uses presence (docs/protocol.md §3.3).
    pub fn can_read(&self, presence_enabled: bool) -> bool {
        self.broadcast_read || (presence_enabled && self.presence_read)
    }
}

/// Who asks, for which channel.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The JWT `role`, the database role the policies run as.
    pub role: String,
    /// The JWT claims as JSON text (`request.jwt.claims`).
    pub claims: String,
    /// The sub-topic (`realtime.topic()`).
    pub topic: String,
    /// The WebSocket upgrade request's headers as a JSON object (`request.headers`).
    pub headers: Arc<str>,
}

impl Subject {
    pub fn new(claims: &Claims, topic: &str, headers: Arc<str>) -> Self {
        Subject {
            role: claims.role.clone(),
            claims: claims.json.to_string(),
            topic: topic.to_owned(),
            headers,
        }
    }
}

/// Evaluate the policies for `subject` on a pool connection.
pub async fn evaluate(pool: Pool, subject: Subject) -> Result<Permissions, PolicyError> {
    match tokio::time::timeout(EVALUATION_TIMEOUT, query(&pool, &subject)).await {
        Ok(result) => result,
        Err(_) => Err(PolicyError::Unavailable("authorization timed out".into())),
    }
}

async fn query(pool: &Pool, subject: &Subject) -> Result<Permissions, PolicyError> {
    let client = pool.get().await.map_err(|err| match err {
        PoolError::Timeout(_) => PolicyError::PoolExhausted,
        other => PolicyError::Unavailable(other.to_string()),
    })?;
    let statement = client
        .prepare_cached(AUTHORIZE_SQL)
        .await
        .map_err(|err| db_error(err, subject))?;
    let headers: &str = &subject.headers;
    let row = client
        .query_one(
            &statement,
            &[&subject.role, &subject.claims, &subject.topic, &headers],
        )
        .await
        .map_err(|err| db_error(err, subject))?;
    let verdict = |i| {
        row.try_get::<_, bool>(i)
            .map_err(|err| db_error(err, subject))
    };
    Ok(Permissions {
        broadcast_read: verdict(0)?,
        broadcast_write: verdict(1)?,
        presence_read: verdict(2)?,
        presence_write: verdict(3)?,
    })
}

fn db_error(err: tokio_postgres::Error, subject: &Subject) -> PolicyError {
    let Some(db) = err.as_db_error() else {
        return PolicyError::Unavailable(err.to_string());
    };
    if *db.code() == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        return PolicyError::UnknownRole(subject.role.clone());
    }
    PolicyError::Policy(format!("{} ({})", db.message(), db.code().code()))
}
