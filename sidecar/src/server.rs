//! The HTTP server: the accept loop, connection admission and HTTP/1.1 with upgrades (hyper),
//! in place of `axum::serve`, which offers neither a header-read timeout nor connection caps.
//!
//! Ownership and invariants:
//! * Each accepted socket carries its [`Slot`] inside its I/O object, so it stays counted until
//!   the socket closes — for a WebSocket, until the upgraded stream is dropped.
//! * A connection over the caps is answered 429 (`Too many connected users`, or `Too many
//!   connections from this address`) with `Connection: close`; `/healthcheck` is still answered
//!   on it, so a saturated server is not taken for a dead one. Beyond the refusals `admission`
//!   allows, sockets are closed unread.
//! * A client has `HEADER_READ_TIMEOUT_MS` to send each request head — the first one and every
//!   one after an idle keep-alive — or hyper closes the connection: trickling clients cannot
//!   hold sockets.
//! * Connection tasks are owned by a [`TaskTracker`]: on `shutdown` the loop stops accepting,
//!   every connection is asked to finish its current request, and [`serve`] returns once all
//!   have ended (callers bound the wait). WebSockets have their own shutdown path (`ws`).
//! * HTTP/1.1 only: realtime-js, the other Realtime clients and REST callers speak it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admit, Slot};
use crate::app::{app, refusal_app, AppState};
use crate::error::ConnectError;

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serve `listener` until `shutdown` is cancelled and every connection has ended.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let routers = Routers {
        app: app(state.clone()),
        too_many: refusal_app(state.clone(), ConnectError::TooManyConnections),
        too_many_from_address: refusal_app(state.clone(), ConnectError::TooManyFromAddress),
    };
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout());
    let tasks = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let Some((slot, router)) = admit(&state, &routers, peer) else {
            continue;
        };
        // Replies go out as soon as they are ready: with Nagle, a reply written while the
        // client's ACK of the previous one is delayed waits ~40 ms.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(Counted { tcp, _slot: slot });
        let conn = http
            .serve_connection(io, TowerToHyperService::new(router))
            .with_upgrades();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

struct Routers {
    app: Router,
    too_many: Router,
    too_many_from_address: Router,
}

/// The router a new connection gets, with its slot; `None`: close it unread.
fn admit(state: &AppState, routers: &Routers, peer: SocketAddr) -> Option<(Slot, Router)> {
    match state.admission.admit(peer.ip()) {
        Admit::Serve(slot) => Some((slot, routers.app.clone())),
        Admit::Refuse(slot, why) => {
            tracing::debug!(%peer, reason = %why, "connection refused");
            let router = match why {
                ConnectError::TooManyFromAddress => routers.too_many_from_address.clone(),
                _ => routers.too_many.clone(),
            };
            Some((slot, router))
        }
        Admit::Drop => {
            tracing::debug!(%peer, "connection closed unread: too many refusals pending");
            None
        }
    }
}

/// A TCP stream that holds its admission slot until it is dropped.
struct Counted {
    tcp: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    use super::*;
    use crate::app::tests::test_state;

    async fn start(extra: &[&str]) -> (Arc<AppState>, SocketAddr) {
        let state = test_state(extra);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = state.shutdown.clone();
        tokio::spawn(serve(listener, state.clone(), shutdown));
        (state, addr)
    }

    async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        let source: std::net::IpAddr = source.parse().expect("source");
        socket.bind(SocketAddr::new(source, 0)).expect("bind");
        socket.connect(addr).await.expect("connect")
    }

    /// One request; the status code and the body.
    async fn get(tcp: &mut TcpStream, path: &str) -> (u16, String) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
            .await
            .expect("response in time")
            .expect("read");
        let status = response[9..12].parse().expect("status");
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn a_trickling_request_head_is_cut_off() {
        let (_state, addr) = start(&["--header-read-timeout-ms=300"]).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthcheck HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Keep trickling: each byte alone would not extend the deadline.
                if slow.write_all(b"x").await.is_err() {
                    return 0;
                }
                match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                    Ok(Ok(n)) => return n,
                    Ok(Err(_)) => return 0,
                    Err(_) => {}
                }
            }
        })
        .await;
        assert_eq!(read.ok(), Some(0), "the server closed the connection");
        let mut fresh = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            get(&mut fresh, "/healthcheck").await.0,
            503,
            "still serving"
        );
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let (_state, addr) = start(&["--header-read-timeout-ms=300"]).await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /healthcheck HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            seen.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        assert!(ended.is_ok(), "the idle connection was closed");
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_answered_429() {
        let (state, addr) = start(&["--max-connections=3", "--max-connections-per-ip=2"]).await;
        let _a = connect_from("127.0.0.1", addr).await;
        let _b = connect_from("127.0.0.1", addr).await;
        let mut c = connect_from("127.0.0.1", addr).await;
        let (status, body) = get(&mut c, "/realtime/v1/websocket").await;
        assert_eq!(status, 429);
        assert_eq!(
            body,
            r#"{"error":"Too many connections from this address"}"#
        );
        let _d = connect_from("127.0.0.2", addr).await;
        let mut e = connect_from("127.0.0.3", addr).await;
        let (status, body) = get(&mut e, "/api/broadcast").await;
        assert_eq!(status, 429);
        assert_eq!(body, r#"{"error":"Too many connected users"}"#);
        // Probes still get an answer from a saturated server.
        let mut probe = connect_from("127.0.0.4", addr).await;
        assert_eq!(get(&mut probe, "/healthcheck").await.0, 503);
        tokio::time::timeout(Duration::from_secs(5), async {
            while state.admission.open() != 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("three served connections");
    }
}
