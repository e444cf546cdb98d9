//! Process lifecycle. Start: logs, config, listener, queue reader, publisher, presence heartbeat,
//! unsubscriber, HTTP server. Stop (SIGTERM/SIGINT): cancel the shared shutdown token, which
//! stops accepting connections, closes every WebSocket with 1001 and stops the queue reader, the
//! publisher (after one last flush), the heartbeat (which makes this sidecar's presences leave)
//! and the unsubscriber; then wait (bounded) for the HTTP connections, the WebSockets and the
//! tasks.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pg_realtime_sidecar::app::AppState;
use pg_realtime_sidecar::config::Config;
use pg_realtime_sidecar::{presence, publisher, queue, server, unsubscriber};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// How long shutdown waits for connections and each background task to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = Config::parse();
    let addr = (config.host.clone(), config.port);
    let state = match AppState::new(config) {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(error = %err, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };

    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(host = %addr.0, port = addr.1, error = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(host = %addr.0, port = addr.1, "listening");
    let queue = tokio::spawn(queue::run(state.clone()));
    let publisher = tokio::spawn(publisher::run(state.clone()));
    let presence = tokio::spawn(presence::run(state.clone()));
    let unsubscriber = tokio::spawn(unsubscriber::run(state.clone()));
    let server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        state.shutdown.clone(),
    ));

    tokio::select! {
        () = signal() => tracing::info!("shutdown signal received"),
        () = state.shutdown.cancelled() => {}
    }
    state.shutdown.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, server).await.is_err() {
        tracing::warn!("HTTP connections still open at exit");
    }
    state.connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, state.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = state.connections.len(),
            "connections still open at exit"
        );
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, queue).await.is_err() {
        tracing::warn!("queue reader did not stop in time");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, publisher)
        .await
        .is_err()
    {
        tracing::warn!("publisher did not stop in time");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, presence).await.is_err() {
        tracing::warn!("presence heartbeat did not stop in time");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, unsubscriber)
        .await
        .is_err()
    {
        tracing::warn!("unsubscriber did not stop in time");
    }
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
