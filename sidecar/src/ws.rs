//! WebSocket transport: connect-time checks, the upgrade, and the two halves of a connection.
//!
//! Lifecycle of one connection (all on the task axum spawns for the upgrade, which holds a
//! [`TaskTracker`](tokio_util::task::TaskTracker) token so shutdown can wait for it):
//! * the **reader** decodes client frames and feeds the [`Session`]; it also runs the session's
//!   timers and the 60 s idle timeout;
//! * the **writer** drains the connection's bounded queue into the socket, batching queued frames
//!   into one flush;
//! * both watch the connection's kill token. Whoever stops first records a [`CloseReason`] and
//!   cancels it; the writer then sends the close frame (bounded by `CLOSE_GRACE`) and the session
//!   is dropped, which unsubscribes its channels.
//!
//! Buffer sizes are deliberate: tungstenite allocates its read buffer up front, and 4 KiB
//! instead of the default 128 KiB cuts an idle connection's memory by more than 10×.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use crate::app::AppState;
use crate::codec::{self, Vsn};
use crate::error::{CloseReason, ConnectError};
use crate::fanout::{ConnHandle, Outbox};
use crate::session::Session;

/// Phoenix's websocket timeout: the client heartbeats every 25 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the writer may take to deliver the close frame once a connection is ending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are written to the socket once this much is buffered (or on flush).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// `GET /realtime/v1/websocket` and `/socket/websocket`.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let vsn = match params.get("vsn").map(String::as_str) {
        None | Some("1.0.0") => Vsn::V1,
        Some("2.0.0") => Vsn::V2,
        Some(other) => {
            tracing::info!(
                vsn = other,
                "connection refused: unsupported serializer version"
            );
            return ConnectError::UnsupportedVsn.into_response();
        }
    };
    let token = match connect_token(&state, &params, &headers) {
        Ok(token) => token,
        Err(err) => {
            tracing::info!(error = %err, "connection refused");
            tokio::time::sleep(state.config.connect_error_backoff()).await;
            return err.into_response();
        }
    };
    let headers = headers_json(&headers);
    let max = state.config.max_frame_bytes as usize;
    let tracked = state.connections.token();
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|err| tracing::info!(error = %err, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            serve(socket, state, vsn, token, headers).await;
        })
}

/// The connection token (`x-api-key` header, else `apikey` query parameter), verified.
fn connect_token(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<String, ConnectError> {
    let token = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("apikey").map(String::as_str))
        .ok_or(ConnectError::MissingApiKey)?;
    state.auth.verify(token)?;
    Ok(token.to_owned())
}

/// The request headers as a JSON object (names lower-case; a repeated header keeps its last
/// value), as Realtime hands them to policies in `request.headers`.
pub(crate) fn headers_json(headers: &HeaderMap) -> Arc<str> {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value.into())
        })
        .collect();
    serde_json::Value::Object(map).to_string().into()
}

async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    vsn: Vsn,
    token: String,
    headers: Arc<str>,
) {
    let limits = state.config.queue_limits();
    let (conn, outbox) = ConnHandle::new(state.next_conn_id(), vsn, limits, &state.shutdown);
    tracing::info!(conn = conn.id, ?vsn, "connected");
    let mut session = Session::new(state, conn.clone(), token.into(), headers);
    let (sink, stream) = socket.split();
    let writer = write_loop(sink, outbox, conn.clone());
    tokio::pin!(writer);
    let reader_stopped_first = tokio::select! {
        () = read_loop(stream, &mut session, &conn) => true,
        () = &mut writer => false,
    };
    if reader_stopped_first {
        // The reader has recorded a close reason, so the writer is already finishing.
        let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
    }
    drop(session);
    tracing::info!(
        conn = conn.id,
        reason = conn.close_reason().text(),
        "disconnected"
    );
}

/// Feed client frames to the session until the client leaves, the connection is killed or it
/// idles out. Always leaves a close reason on `conn` when it returns.
async fn read_loop<S>(mut stream: S, session: &mut Session, conn: &ConnHandle)
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let kill = conn.kill_token().clone();
    let mut idle_deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        let wake = session
            .next_deadline()
            .map_or(idle_deadline, |at| at.min(idle_deadline));
        tokio::select! {
            () = kill.cancelled() => return,
            done = session.db_done() => session.on_db_done(done),
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= idle_deadline {
                    return conn.close(CloseReason::IdleTimeout);
                }
                session.on_timer(now);
            }
            item = stream.next() => {
                let msg = match item {
                    Some(Ok(msg)) => msg,
                    Some(Err(err)) => {
                        tracing::info!(conn = conn.id, error = %err, "websocket read failed");
                        return conn.close(read_failure(err));
                    }
                    None => return conn.close(CloseReason::ClientClosed),
                };
                idle_deadline = Instant::now() + IDLE_TIMEOUT;
                let decoded = match msg {
                    Message::Text(text) => codec::decode_text(conn.vsn, text.as_str()),
                    Message::Binary(data) => codec::decode_binary(conn.vsn, data),
                    // tungstenite answers pings and the close handshake itself; after a close
                    // frame the next read flushes the reply and ends the stream.
                    Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
                };
                match decoded {
                    Ok(inbound) => session.handle(inbound),
                    Err(err) => tracing::warn!(conn = conn.id, error = %err, "malformed message ignored"),
                }
            }
        }
    }
}

/// The close reason for a failed read: 1009 for an oversize message, 1002 otherwise.
fn read_failure(err: axum::Error) -> CloseReason {
    match err.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => CloseReason::MessageTooBig,
        _ => CloseReason::ReadFailed,
    }
}

/// Drain the outbound queue into the socket until the connection is killed, then send the
/// close frame for its reason.
async fn write_loop<S>(mut sink: S, outbox: Outbox, conn: Arc<ConnHandle>)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let kill = conn.kill_token().clone();
    loop {
        let first = tokio::select! {
            biased;
            () = kill.cancelled() => break,
            frame = outbox.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let batch = async {
            sink.feed(first.into()).await?;
            for _ in 1..WRITE_BATCH {
                let Some(frame) = outbox.try_recv() else {
                    break;
                };
                sink.feed(frame.into()).await?;
            }
            sink.flush().await
        };
        let written = tokio::select! {
            biased;
            () = kill.cancelled() => break,
            written = batch => written,
        };
        if let Err(err) = written {
            tracing::info!(conn = conn.id, error = %err, "websocket write failed");
            return conn.close(CloseReason::WriteFailed);
        }
    }
    let reason = conn.close_reason();
    if reason != CloseReason::ClientClosed {
        let frame = CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// End-to-end tests over real sockets, without a database.
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::value::RawValue;
    use serde_json::{json, Value};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::{self, Message as Ws};
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use super::*;
    use crate::app::app;
    use crate::app::tests::test_state;
    use crate::auth::tests::{token, valid_token};
    use crate::codec::{Broadcast, UserBroadcast, UserPayload};
    use crate::fanout::TopicKey;

    type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;
    const WAIT: Duration = Duration::from_secs(5);

    async fn start(extra: &[&str]) -> (Arc<AppState>, SocketAddr) {
        let backoffs = [
            "--connect-error-backoff-ms=0",
            "--channel-error-backoff-ms=0",
        ];
        let state = test_state(&[&backoffs[..], extra].concat());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = state.shutdown.clone();
        let server = axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        tokio::spawn(async move { server.await.expect("server") });
        (state, addr)
    }

    async fn connect(addr: SocketAddr, vsn: &str) -> Client {
        let url = format!(
            "ws://{addr}/realtime/v1/websocket?apikey={}&vsn={vsn}",
            valid_token()
        );
        tokio_tungstenite::connect_async(url)
            .await
            .expect("connect")
            .0
    }

    async fn refusal(url: String) -> (u16, Value) {
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                (
                    resp.status().as_u16(),
                    serde_json::from_slice(body).unwrap_or(Value::Null),
                )
            }
            other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
        }
    }

    async fn next(c: &mut Client) -> Ws {
        loop {
            match tokio::time::timeout(WAIT, c.next())
                .await
                .expect("frame in time")
            {
                Some(Ok(Ws::Ping(_) | Ws::Pong(_))) => continue,
                Some(Ok(msg)) => return msg,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    async fn next_json(c: &mut Client) -> Value {
        match next(c).await {
            Ws::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn send(c: &mut Client, v: Value) {
        c.send(Ws::text(v.to_string())).await.expect("send");
    }

    async fn join_v2(c: &mut Client, topic: &str, join_ref: &str) {
        send(c, json!([join_ref, join_ref, topic, "phx_join", {"config": {"broadcast": {"self": false}}}])).await;
        assert_eq!(next_json(c).await[4]["status"], "ok");
    }

    async fn join_v1(c: &mut Client, topic: &str, join_ref: &str) {
        let join = json!({"topic": topic, "event": "phx_join", "payload": {"config": {}}, "ref": join_ref, "join_ref": join_ref});
        send(c, join).await;
        assert_eq!(next_json(c).await["payload"]["status"], "ok");
    }

    async fn heartbeat_v2(c: &mut Client) {
        send(c, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
        assert_eq!(
            next_json(c).await,
            json!([null, "hb", "phoenix", "phx_reply", {"status":"ok","response":{}}])
        );
    }

    #[tokio::test]
    async fn refuses_bad_connections() {
        let (_state, addr) = start(&[]).await;
        let base = format!("ws://{addr}/realtime/v1/websocket");
        assert_eq!(
            refusal(format!("{base}?vsn=2.0.0")).await,
            (401, json!({"error": "API key is missing"}))
        );
        assert_eq!(
            refusal(format!("{base}?apikey=nope")).await,
            (
                401,
                json!({"error": "The token provided is not a valid JWT"})
            )
        );
        let expired = token(&json!({"role": "anon", "exp": 1}));
        assert_eq!(
            refusal(format!("{base}?apikey={expired}")).await,
            (401, json!({"error": "Token has expired"}))
        );
        let no_role = token(&json!({"exp": crate::auth::unix_now() + 60}));
        assert_eq!(
            refusal(format!("{base}?apikey={no_role}")).await,
            (
                401,
                json!({"error": "Fields `role` and `exp` are required in JWT"})
            )
        );
        let (status, _) = refusal(format!("{base}?apikey={}&vsn=3.0.0", valid_token())).await;
        assert_eq!(status, 400);
        // The other mount point and an absent vsn (v1) are accepted.
        let url = format!("ws://{addr}/socket/websocket?apikey={}", valid_token());
        let (mut v1, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("v1 connect");
        send(
            &mut v1,
            json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}),
        )
        .await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"})
        );
    }

    #[tokio::test]
    async fn x_api_key_header_wins_over_apikey_param() {
        use tungstenite::client::IntoClientRequest;
        let (_state, addr) = start(&[]).await;
        let url = format!("ws://{addr}/realtime/v1/websocket?apikey=nope&vsn=2.0.0");
        let mut request = url.clone().into_client_request().expect("request");
        let header = valid_token().parse().expect("header value");
        request.headers_mut().insert("x-api-key", header);
        let (mut c, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("header token accepted");
        heartbeat_v2(&mut c).await;
        assert_eq!(refusal(url).await.0, 401);
    }

    #[tokio::test]
    async fn client_close_is_answered() {
        let (state, addr) = start(&[]).await;
        let mut c = connect(addr, "2.0.0").await;
        c.close(None).await.expect("close");
        assert!(
            matches!(next(&mut c).await, Ws::Close(_)),
            "close handshake completed"
        );
        let drained = tokio::time::timeout(WAIT, async {
            while !state.connections.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(drained.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed_after_60s() {
        let (_state, addr) = start(&[]).await;
        let mut c = connect(addr, "2.0.0").await;
        let started = Instant::now();
        // No timeout here: the paused clock jumps straight to the server's idle deadline.
        match c.next().await {
            Some(Ok(Ws::Close(Some(frame)))) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (1000, "idle timeout")
                );
            }
            other => panic!("expected the idle close, got {other:?}"),
        }
        assert!(started.elapsed() >= IDLE_TIMEOUT);
    }

    #[tokio::test]
    async fn broadcast_between_v1_and_v2_clients() {
        let (_state, addr) = start(&[]).await;
        let mut v2 = connect(addr, "2.0.0").await;
        let mut v1 = connect(addr, "1.0.0").await;
        join_v2(&mut v2, "realtime:room1", "6").await;
        join_v1(&mut v1, "realtime:room1", "3").await;

        // realtime-js v2 `send()` → binary kind 3 (docs/protocol.md §1.7 capture).
        let kind3 = [
            &[3u8, 1, 2, 14, 6, 0, 1][..],
            b"610realtime:room1cursor{\"x\":1}",
        ]
        .concat();
        v2.send(Ws::binary(kind3)).await.expect("send");
        assert_eq!(
            next_json(&mut v1).await,
            json!({"topic":"realtime:room1","event":"broadcast","ref":null,
                   "payload":{"type":"broadcast","event":"cursor","payload":{"x":1}}})
        );

        let push = json!({"type": "broadcast", "event": "json-evt", "payload": {"hello": "json"}});
        send(&mut v1, json!({"topic":"realtime:room1","event":"broadcast","payload":push,"ref":"4","join_ref":"3"})).await;
        assert_eq!(
            next_json(&mut v2).await,
            json!([null, null, "realtime:room1", "broadcast", push])
        );
    }

    #[tokio::test]
    async fn queue_messages_reach_both_serializers_intact() {
        let (state, addr) = start(&[]).await;
        let mut v2 = connect(addr, "2.0.0").await;
        let mut v1 = connect(addr, "1.0.0").await;
        join_v2(&mut v2, "realtime:room1", "6").await;
        join_v1(&mut v1, "realtime:room1", "3").await;

        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200_000));
        let publish = |private: bool, payload: UserPayload| {
            let key = TopicKey {
                sub_topic: "room1".into(),
                private,
            };
            let msg = UserBroadcast {
                event: "ev".into(),
                payload,
                meta_id: Some("id-1".into()),
            };
            state.registry.publish(&key, &Broadcast::User(msg), None)
        };
        // The private namespace is separate: nobody here receives this.
        assert_eq!(
            publish(
                true,
                UserPayload::Json(RawValue::from_string("{}".into()).expect("json"))
            ),
            0
        );
        let raw = RawValue::from_string(big.clone()).expect("json");
        assert_eq!(publish(false, UserPayload::Json(raw)), 2);
        assert_eq!(
            publish(
                false,
                UserPayload::Binary(bytes::Bytes::from_static(&[1, 2, 3]))
            ),
            1
        );

        let Ws::Binary(frame) = next(&mut v2).await else {
            panic!("kind 4 expected")
        };
        let header = [
            &[4u8, 14, 2, 13, 1][..],
            b"realtime:room1ev{\"id\":\"id-1\"}",
        ]
        .concat();
        assert_eq!(&frame[..header.len()], header.as_slice());
        assert_eq!(&frame[header.len()..], big.as_bytes());
        let Ws::Binary(frame) = next(&mut v2).await else {
            panic!("kind 4 expected")
        };
        assert_eq!(frame[4], 0, "raw binary encoding");
        assert_eq!(&frame[frame.len() - 3..], &[1, 2, 3]);

        let msg = next_json(&mut v1).await;
        assert_eq!(msg["payload"]["meta"], json!({"id": "id-1"}));
        assert_eq!(
            msg["payload"]["payload"]["blob"].as_str().map(str::len),
            Some(200_000)
        );
        // The binary message was dropped for v1: the next frame is the heartbeat reply.
        send(
            &mut v1,
            json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "9"}),
        )
        .await;
        assert_eq!(next_json(&mut v1).await["ref"], "9");
    }

    #[tokio::test]
    async fn malformed_frames_are_ignored() {
        let (_state, addr) = start(&[]).await;
        let mut c = connect(addr, "2.0.0").await;
        c.send(Ws::text("garbage")).await.expect("send");
        c.send(Ws::text(r#"{"topic":"phoenix"}"#))
            .await
            .expect("send");
        c.send(Ws::text(r#"[null,"1","phoenix"]"#))
            .await
            .expect("send");
        c.send(Ws::binary(vec![3u8, 255, 255, 255, 255, 255, 1, b'x']))
            .await
            .expect("send");
        c.send(Ws::binary(vec![9u8])).await.expect("send");
        heartbeat_v2(&mut c).await;
    }

    #[tokio::test]
    async fn oversize_frame_closes_only_that_socket() {
        let (_state, addr) = start(&["--max-frame-bytes=1024"]).await;
        let mut big = connect(addr, "2.0.0").await;
        let mut other = connect(addr, "2.0.0").await;
        let _ = big
            .send(Ws::text(format!(
                "[null,null,\"phoenix\",\"heartbeat\",\"{}\"]",
                "x".repeat(2000)
            )))
            .await;
        let code = tokio::time::timeout(WAIT, async {
            loop {
                match big.next().await {
                    Some(Ok(Ws::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Err(_)) | None => break None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert_eq!(
            code.ok(),
            Some(Some(1009)),
            "oversize sender is closed with 1009"
        );
        heartbeat_v2(&mut other).await;
    }

    /// A 1 MiB binary broadcast to the public channel `sub_topic`.
    fn publish_mebibyte(state: &AppState, sub_topic: &str) {
        let key = TopicKey {
            sub_topic: sub_topic.into(),
            private: false,
        };
        let msg = UserBroadcast {
            event: "e".into(),
            payload: UserPayload::Binary(bytes::Bytes::from(vec![7u8; 1 << 20])),
            meta_id: None,
        };
        state.registry.publish(&key, &Broadcast::User(msg), None);
    }

    /// Whether all connections but one are gone within `WAIT`.
    async fn one_connection_left(state: &AppState) -> bool {
        tokio::time::timeout(WAIT, async {
            while state.connections.len() > 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn slow_client_is_closed_without_slowing_others() {
        let (state, addr) = start(&["--client-queue-frames=4"]).await;
        let mut slow = connect(addr, "2.0.0").await;
        let mut fast = connect(addr, "2.0.0").await;
        join_v2(&mut slow, "realtime:load", "1").await;
        join_v2(&mut fast, "realtime:load", "1").await;
        let mut received = 0;
        for _ in 0..64 {
            publish_mebibyte(&state, "load");
            // The fast client keeps up; the slow one never reads.
            assert!(matches!(next(&mut fast).await, Ws::Binary(_)));
            received += 1;
        }
        assert_eq!(received, 64);
        // The slow connection was dropped: only the fast one is still tracked.
        assert!(one_connection_left(&state).await, "slow client closed");
        heartbeat_v2(&mut fast).await;
    }

    #[tokio::test]
    async fn byte_budget_closes_a_client_that_does_not_read() {
        // 1024 frames would hold 1 GiB here; 4 MiB of bytes is the bound that acts.
        let (state, addr) =
            start(&["--client-queue-frames=1024", "--client-queue-bytes=4194304"]).await;
        let mut idle = connect(addr, "2.0.0").await;
        let mut reader = connect(addr, "2.0.0").await;
        join_v2(&mut idle, "realtime:big", "1").await;
        join_v2(&mut reader, "realtime:big", "1").await;
        for _ in 0..64 {
            publish_mebibyte(&state, "big");
            assert!(matches!(next(&mut reader).await, Ws::Binary(_)));
        }
        assert!(
            one_connection_left(&state).await,
            "the idle client was closed"
        );
        heartbeat_v2(&mut reader).await;
        // What reached the idle client before it was closed: under 64 MiB.
        let mut received = 0;
        while let Ok(Some(Ok(Ws::Binary(_)))) = tokio::time::timeout(WAIT, idle.next()).await {
            received += 1;
        }
        assert!(received < 64, "{received} frames");
    }

    #[tokio::test]
    async fn long_ref_closes_with_1008() {
        let (_state, addr) = start(&[]).await;
        let mut c = connect(addr, "2.0.0").await;
        let mut other = connect(addr, "2.0.0").await;
        send(
            &mut c,
            json!([null, "r".repeat(65), "phoenix", "heartbeat", {}]),
        )
        .await;
        match next(&mut c).await {
            Ws::Close(Some(frame)) => assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (1008, "ref or join_ref longer than 64 bytes")
            ),
            other => panic!("expected a close frame, got {other:?}"),
        }
        heartbeat_v2(&mut other).await;
    }

    #[tokio::test]
    async fn shutdown_closes_sockets_with_1001() {
        let (state, addr) = start(&[]).await;
        let mut c = connect(addr, "2.0.0").await;
        heartbeat_v2(&mut c).await;
        state.shutdown.cancel();
        match next(&mut c).await {
            Ws::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
