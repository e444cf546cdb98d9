//! Shared state and the HTTP routers, kept apart from `main` so tests can serve [`app`] on an
//! ephemeral port without a database.
//!
//! `/healthcheck` answers 200 only while the queue reader holds a database connection (without
//! one no message is delivered): 503 with the reason otherwise.
//!
//! Lifecycle: [`AppState`] lives behind one `Arc` for the life of the process. Its `shutdown`
//! token is cancelled exactly once (by `main` on SIGTERM/SIGINT); every connection's kill token
//! and the queue reader derive from it. `connections` tracks every upgraded WebSocket task so
//! `main` can wait for them to finish closing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::changes::Changes;
use crate::config::Config;
use crate::db;
use crate::error::{ConnectError, NO_QUEUE_CONNECTION};
use crate::fanout::Registry;
use crate::limits::PerSecond;
use crate::presence::Presence;
use crate::publisher::{self, Publisher};
use crate::unsubscriber::{self, Unsubscriber};
use crate::{rest, ws};

/// Upper bound for a plain HTTP request (the refused-upgrade backoff included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AppState {
    pub config: Config,
    pub auth: Auth,
    /// Connections for queries on a client's behalf (private-channel policies, publishing).
    pub db: Pool,
    /// This process's id among the sidecars on the database (`realtime.queue.origin`).
    pub instance: String,
    /// Client messages on their way to the other sidecars.
    pub publisher: Publisher,
    /// This sidecar's presences and presence subscribers.
    pub presence: Presence,
    /// Client events per second, for `MAX_EVENTS_PER_SECOND`.
    pub events: PerSecond,
    /// Where the Postgres Changes routed to this sidecar go.
    pub changes: Changes,
    /// Subscription rows of ended channels, on their way out of the database.
    pub unsubscriber: Unsubscriber,
    pub registry: Registry,
    /// Whether the queue reader currently holds a working database connection.
    pub db_connected: AtomicBool,
    pub shutdown: CancellationToken,
    /// Open TCP connections against `MAX_CONNECTIONS` / `MAX_CONNECTIONS_PER_IP`.
    pub admission: Admission,
    pub connections: TaskTracker,
    next_conn_id: AtomicU64,
}

impl AppState {
    /// The state for `config`; `Err` is a startup error message (bad JWT keys, bad URL).
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        Ok(Arc::new(AppState {
            auth: Auth::from_config(&config)?,
            db: db::pool(&config)?,
            instance: uuid::Uuid::new_v4().to_string(),
            publisher: Publisher::new(publisher::QUEUE_CAPACITY),
            presence: Presence::default(),
            events: PerSecond::default(),
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            changes: Changes::default(),
            unsubscriber: Unsubscriber::new(unsubscriber::QUEUE_CAPACITY),
            config,
            registry: Registry::default(),
            db_connected: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
        }))
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    // REST bodies are bounded like WebSocket messages (413 beyond).
    let body_limit = DefaultBodyLimit::max(state.config.max_frame_bytes as usize);
    let batch = || post(rest::batch).layer(body_limit);
    let single = || post(rest::single).layer(body_limit);
    Router::new()
        .route("/realtime/v1/websocket", get(ws::upgrade))
        .route("/socket/websocket", get(ws::upgrade))
        .route("/api/broadcast", batch())
        .route("/realtime/v1/api/broadcast", batch())
        .route("/api/broadcast/{topic}/events/{event}", single())
        .route(
            "/realtime/v1/api/broadcast/{topic}/events/{event}",
            single(),
        )
        .route("/healthcheck", get(healthcheck))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// The router of a connection over the connection caps: `why` to every request, then the
/// connection closes; `/healthcheck` is answered as usual.
pub fn refusal_app(state: Arc<AppState>, why: ConnectError) -> Router {
    let refuse = move || {
        let mut response = why.clone().into_response();
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        async move { response }
    };
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .fallback(refuse)
        .with_state(state)
}

async fn healthcheck(State(state): State<Arc<AppState>>) -> Response {
    let db_connected = state.db_connected.load(Ordering::Relaxed);
    let mut body = json!({
        "status": if db_connected { "ok" } else { "unavailable" },
        "db_connected": db_connected,
        "connections": state.connections.len(),
    });
    if db_connected {
        return Json(body).into_response();
    }
    body["reason"] = NO_QUEUE_CONNECTION.into();
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;
    use crate::auth::tests::SECRET;

    /// State for unit tests: the test JWT secret, the database unreachable (port 1), then `args`.
    pub fn test_state(args: &[&str]) -> Arc<AppState> {
        let secret = format!("--jwt-secret={SECRET}");
        let mut argv = vec![
            "test",
            "--database-url=postgres://postgres@127.0.0.1:1/postgres",
            &secret,
        ];
        argv.extend_from_slice(args);
        AppState::new(Config::try_parse_from(argv).expect("test config")).expect("test state")
    }
}
