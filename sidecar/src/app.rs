//! Shared state and the HTTP router, kept apart from `main` so tests can serve [`app`] on an
//! ephemeral port without a database.
//!
//! Lifecycle: [`AppState`] lives behind one `Arc` for the life of the process. Its `shutdown`
//! token is cancelled exactly once (by `main` on SIGTERM/SIGINT); every connection's kill token
//! and the queue reader derive from it. `connections` tracks every upgraded WebSocket task so
//! `main` can wait for them to finish closing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::auth::Auth;
use crate::changes::Changes;
use crate::config::Config;
use crate::db;
use crate::fanout::Registry;
use crate::limits::PerSecond;
use crate::presence::Presence;
use crate::publisher::{self, Publisher};
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
    pub registry: Registry,
    /// Whether the queue reader currently holds a working database connection.
    pub db_connected: AtomicBool,
    pub shutdown: CancellationToken,
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
            changes: Changes::default(),
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

async fn healthcheck(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "db_connected": state.db_connected.load(Ordering::Relaxed),
        "connections": state.connections.len(),
    }))
}
