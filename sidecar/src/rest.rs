//! REST broadcast endpoints (docs/protocol.md §8): `POST /api/broadcast` (batch, the client's
//! `send()` fallback) and `POST /api/broadcast/{topic}/events/{event}` (single, `httpSend`), both
//! also under `/realtime/v1`.
//!
//! Invariants:
//! * Checks run in Realtime's order and nothing is queued unless all pass: content type (415),
//!   token (401), body size (413), body syntax (400) and fields (422), write policy (single: 403;
//!   batch: denied private messages are skipped silently). A database that cannot be reached,
//!   for the policy check or the enqueue, is 503; a statement it refuses otherwise, 500.
//! * Nothing is delivered from here: accepted messages are handed to `realtime._enqueue` in one
//!   statement, hence one transaction, per request, so every sidecar on the database delivers
//!   them, in request order, once it commits. `_enqueue` gets exactly 5 positional arguments.
//! * Topics, events, payloads and ids reach SQL only as bind parameters.
//! * Private topics are authorized by the caller's `realtime.messages` INSERT policies, evaluated
//!   once per distinct topic per request, with the request headers as `request.headers`.
//! * Topics, events and payloads are checked to be storable (no U+0000) and topics and events
//!   to be within `MAX_TOPIC_BYTES` / `MAX_EVENT_BYTES` (the socket's limits) before the
//!   database sees them, so bad input is a 4xx, never a failed statement.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use deadpool_postgres::PoolError;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use crate::app::AppState;
use crate::auth::Claims;
use crate::channel;
use crate::config::Config;
use crate::error::{
    field_too_long, AuthError, PolicyError, RestError, FIELD_BLANK, FIELD_INVALID, FIELD_NUL,
};
use crate::policies::{self, Subject};
use crate::validate;
use crate::ws::headers_json;

/// Queues messages in array order (ordinality), one `_enqueue` call each. Payloads and ids
/// travel as text and are cast here: they were validated as JSON objects and UUIDs already.
const ENQUEUE_JSON_SQL: &str =
    "SELECT realtime._enqueue(m.topic, m.event, m.payload::jsonb, m.private, m.id::uuid) \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[]) \
          WITH ORDINALITY AS m(topic, event, payload, private, id, n) \
     ORDER BY m.n";
const ENQUEUE_BINARY_SQL: &str = "SELECT realtime._enqueue($1, $2, $3::bytea, $4, NULL::uuid)";
/// Upper bound for queueing one request, pool wait included (the statement timeout is lower).
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(15);

/// Ecto-style field errors: field name → list of messages.
type FieldErrors = Map<String, Value>;
/// One field error message.
type FieldError = Cow<'static, str>;

/// Longest topic and event accepted, in bytes: the socket's limits (a REST topic has no
/// `realtime:` prefix).
#[derive(Debug, Clone, Copy)]
struct Names {
    topic: usize,
    event: usize,
}

impl Names {
    fn of(config: &Config) -> Self {
        Names {
            topic: channel::max_sub_topic_bytes(config.max_topic_bytes),
            event: config.max_event_bytes as usize,
        }
    }
}

/// A validated batch message (or a JSON single one), ready for `ENQUEUE_JSON_SQL`.
#[derive(Debug, PartialEq)]
struct Message {
    topic: String,
    event: String,
    /// The payload as JSON text.
    payload: String,
    private: bool,
    /// `meta.id` on delivery: a UUID in lower case.
    id: Option<String>,
}

/// How the single endpoint's body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Binary,
}

/// `POST /api/broadcast`: `{"messages": [{topic, event, payload, private?, id?}, ...]}` → 202.
pub async fn batch(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<StatusCode, RestError> {
    let outcome = async {
        if body_kind(request.headers())? != BodyKind::Json {
            return Err(RestError::UnsupportedBatchMediaType);
        }
        let claims = authenticate(&state, request.headers())?;
        let headers = headers_json(request.headers());
        let names = Names::of(&state.config);
        let messages = parse_batch(names, &read_body(&state, request).await?)?;
        let mut verdicts: HashMap<String, bool> = HashMap::new();
        let mut deliver = Vec::with_capacity(messages.len());
        for msg in messages {
            if msg.private {
                let allowed = match verdicts.get(&msg.topic) {
                    Some(&allowed) => allowed,
                    None => {
                        let allowed =
                            batch_verdict(may_write(&state, &claims, &msg.topic, &headers).await)?;
                        verdicts.insert(msg.topic.clone(), allowed);
                        allowed
                    }
                };
                if !allowed {
                    continue;
                }
            }
            deliver.push(msg);
        }
        enqueue_json(&state, &deliver).await
    };
    respond("batch", outcome.await)
}

/// `POST /api/broadcast/{topic}/events/{event}[?private=true]`: the body is the user payload,
/// JSON or raw bytes → 202.
pub async fn single(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    request: Request,
) -> Result<StatusCode, RestError> {
    let outcome = async {
        let kind = body_kind(request.headers())?;
        let claims = authenticate(&state, request.headers())?;
        let Path((topic, event)) = path.map_err(path_error)?;
        // Realtime's `parse_private`: only the literal `true` makes a channel private.
        let private = query.is_ok_and(|Query(q)| q.get("private").is_some_and(|v| v == "true"));
        let headers = headers_json(request.headers());
        let body = read_body(&state, request).await?;
        // The body is the payload: the same limit as a broadcast sent over the socket.
        let max_payload = state.config.max_payload_bytes as usize;
        if body.len() > max_payload {
            return Err(RestError::PayloadTooLarge(max_payload));
        }
        let payload = check_single(Names::of(&state.config), &topic, &event, kind, body)?;
        if private {
            single_verdict(may_write(&state, &claims, &topic, &headers).await)?;
        }
        match payload {
            SinglePayload::Json(payload) => {
                let msg = Message {
                    topic,
                    event,
                    payload,
                    private,
                    id: None,
                };
                enqueue_json(&state, &[msg]).await
            }
            SinglePayload::Binary(bytes) => {
                enqueue_binary(&state, &topic, &event, &bytes, private).await
            }
        }
    };
    respond("single", outcome.await)
}

/// 202 with an empty body, or the refusal (logged: the client may not show it anywhere).
fn respond(
    endpoint: &'static str,
    outcome: Result<(), RestError>,
) -> Result<StatusCode, RestError> {
    match outcome {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(err) => {
            let status = err.status().as_u16();
            if status >= 500 {
                tracing::warn!(endpoint, status, error = %err, "broadcast request failed");
            } else {
                tracing::info!(endpoint, status, error = %err, "broadcast request refused");
            }
            Err(err)
        }
    }
}

/// The body's media type. A missing `Content-Type` means JSON (Realtime allows it for callers
/// that never set one); parameters such as `; charset=utf-8` are ignored.
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, RestError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(BodyKind::Json),
        Some(t) if t.eq_ignore_ascii_case("application/octet-stream") => Ok(BodyKind::Binary),
        _ => Err(RestError::UnsupportedMediaType),
    }
}

/// The request's token, as Realtime's `AuthTenant` picks it: `Authorization: Bearer <jwt>` wins
/// over the `apikey` header. An `Authorization` header of another scheme does not count.
fn request_token(headers: &HeaderMap) -> Option<&str> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = text(AUTHORIZATION.as_str()).and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    bearer.or_else(|| text("apikey").filter(|t| !t.is_empty()))
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, RestError> {
    let token = request_token(headers).ok_or(RestError::Unauthorized)?;
    state.auth.verify(token).map_err(|err| {
        tracing::debug!(error = %err, "broadcast token refused");
        match err {
            AuthError::RoleNotAllowed { .. } => RestError::RoleNotAllowed(err),
            _ => RestError::Unauthorized,
        }
    })
}

/// A path segment that is not UTF-8 once percent-decoded is an invalid field; nothing else can
/// fail for two `String` captures.
fn path_error(rejection: PathRejection) -> RestError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(err) => match err.into_kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => invalid(&key, FIELD_INVALID),
            other => {
                tracing::error!(error = %other, "unexpected path rejection");
                RestError::Internal
            }
        },
        other => {
            tracing::error!(error = %other, "unexpected path rejection");
            RestError::Internal
        }
    }
}

/// The body, bounded by `DefaultBodyLimit` (`MAX_FRAME_BYTES`, set on the routes).
async fn read_body(state: &Arc<AppState>, request: Request) -> Result<Bytes, RestError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RestError::PayloadTooLarge(state.config.max_frame_bytes as usize)
            } else {
                RestError::UnreadableBody
            }
        })
}

fn parse_json(body: &[u8]) -> Result<Value, RestError> {
    serde_json::from_slice(body).map_err(|err| RestError::MalformedJson(err.to_string()))
}

fn invalid(field: &str, message: &'static str) -> RestError {
    let mut errors = FieldErrors::new();
    errors.insert(field.to_owned(), Value::from([message]));
    RestError::Invalid(errors)
}

/// Parse and validate a batch body. Errors follow Ecto's `traverse_errors` for Realtime's
/// `embeds_many :messages`: `{"messages": ["can't be blank"]}`, or one object per message
/// (`{}` for a valid one) when any message has field errors.
fn parse_batch(names: Names, body: &[u8]) -> Result<Vec<Message>, RestError> {
    let doc = parse_json(body)?;
    let list = match doc.get("messages") {
        None | Some(Value::Null) => return Err(invalid("messages", FIELD_BLANK)),
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(invalid("messages", FIELD_BLANK))
        }
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("messages", FIELD_INVALID)),
    };
    let mut messages = Vec::with_capacity(list.len());
    let mut reports = Vec::with_capacity(list.len());
    for item in list {
        let Value::Object(fields) = item else {
            return Err(invalid("messages", FIELD_INVALID));
        };
        match parse_message(names, fields) {
            Ok(msg) => {
                messages.push(msg);
                reports.push(Value::Object(FieldErrors::new()));
            }
            Err(errors) => reports.push(Value::Object(errors)),
        }
    }
    if messages.len() < reports.len() {
        let mut errors = FieldErrors::new();
        errors.insert("messages".to_owned(), Value::Array(reports));
        return Err(RestError::Invalid(errors));
    }
    Ok(messages)
}

fn parse_message(names: Names, fields: &Map<String, Value>) -> Result<Message, FieldErrors> {
    let mut errors = FieldErrors::new();
    let text = |name, max| match fields.get(name) {
        None | Some(Value::Null) => Err(FIELD_BLANK.into()),
        Some(Value::String(s)) => check_name(s, max).map(|()| s.clone()),
        Some(_) => Err(FIELD_INVALID.into()),
    };
    let topic = field(&mut errors, "topic", text("topic", names.topic));
    let event = field(&mut errors, "event", text("event", names.event));
    let payload = match fields.get("payload") {
        None | Some(Value::Null) => Err(FIELD_BLANK),
        Some(object @ Value::Object(_)) => check_storable(object).map(|()| object.to_string()),
        Some(_) => Err(FIELD_INVALID),
    };
    let payload = field(&mut errors, "payload", payload);
    let private = match fields.get("private") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(FIELD_INVALID),
    };
    let private = field(&mut errors, "private", private);
    let id = match fields.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if is_uuid(s) => Ok(Some(s.to_ascii_lowercase())),
        Some(_) => Err(FIELD_INVALID),
    };
    let id = field(&mut errors, "id", id);
    match (topic, event, payload, private, id) {
        (Some(topic), Some(event), Some(payload), Some(private), Some(id)) => Ok(Message {
            topic,
            event,
            payload,
            private,
            id,
        }),
        _ => Err(errors),
    }
}

/// The value of a valid field; an invalid one's message is recorded under `name`.
fn field<T>(
    errors: &mut FieldErrors,
    name: &str,
    result: Result<T, impl Into<FieldError>>,
) -> Option<T> {
    result
        .map_err(|message| errors.insert(name.to_owned(), Value::from([message.into()])))
        .ok()
}

/// Topics and events must not be blank (Ecto's `validate_required`: empty or whitespace only),
/// must be storable as text and at most `max` bytes long.
fn check_name(name: &str, max: usize) -> Result<(), FieldError> {
    if name.trim().is_empty() {
        Err(FIELD_BLANK.into())
    } else if !validate::text_storable(name) {
        Err(FIELD_NUL.into())
    } else if name.len() > max {
        Err(field_too_long(max).into())
    } else {
        Ok(())
    }
}

/// jsonb (the queue's payload type) cannot hold U+0000 in a string or key.
fn check_storable(value: &Value) -> Result<(), &'static str> {
    if validate::value_storable(value) {
        Ok(())
    } else {
        Err(FIELD_NUL)
    }
}

/// A UUID in its canonical 8-4-4-4-12 hex form (either case), as Ecto's `binary_id` casts it.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[derive(Debug)]
enum SinglePayload {
    /// JSON text of any JSON value.
    Json(String),
    Binary(Bytes),
}

/// Validate the single endpoint's topic, event and body together, so one 422 names every bad
/// field. A raw body may be empty; a JSON body may be any JSON value but not nothing.
fn check_single(
    names: Names,
    topic: &str,
    event: &str,
    kind: BodyKind,
    body: Bytes,
) -> Result<SinglePayload, RestError> {
    let mut errors = FieldErrors::new();
    field(&mut errors, "topic", check_name(topic, names.topic));
    field(&mut errors, "event", check_name(event, names.event));
    let payload = match kind {
        BodyKind::Binary => Ok(SinglePayload::Binary(body)),
        BodyKind::Json if body.iter().all(u8::is_ascii_whitespace) => Err(FIELD_BLANK),
        BodyKind::Json => {
            let value = parse_json(&body)?;
            check_storable(&value).map(|()| SinglePayload::Json(value.to_string()))
        }
    };
    match field(&mut errors, "payload", payload) {
        Some(payload) if errors.is_empty() => Ok(payload),
        _ => Err(RestError::Invalid(errors)),
    }
}

/// Whether the caller's INSERT policies let them broadcast on private `topic`.
async fn may_write(
    state: &AppState,
    claims: &Claims,
    topic: &str,
    headers: &Arc<str>,
) -> Result<bool, PolicyError> {
    let subject = Subject::new(claims, topic, headers.clone());
    policies::evaluate(state.db.clone(), subject)
        .await
        .map(|p| p.broadcast_write)
}

/// Single endpoint: a denied write is refused (403).
fn single_verdict(verdict: Result<bool, PolicyError>) -> Result<(), RestError> {
    match verdict {
        Ok(true) => Ok(()),
        Ok(false) => Err(RestError::WriteDenied),
        Err(PolicyError::UnknownRole(role)) => Err(RestError::UnknownRole(role)),
        // A policy that raises denies, as at join time; the detail is for the operator.
        Err(err @ PolicyError::Policy(_)) => {
            tracing::warn!(error = %err, "broadcast policy check failed");
            Err(RestError::WriteDenied)
        }
        Err(err) => Err(unavailable(err)),
    }
}

/// Batch endpoint: a denied (or unevaluable) topic is skipped silently, as in Realtime; only a
/// database that cannot be reached fails the request, since nothing could be queued anyway.
fn batch_verdict(verdict: Result<bool, PolicyError>) -> Result<bool, RestError> {
    match verdict {
        Ok(allowed) => Ok(allowed),
        Err(err) if err.is_transient() => Err(unavailable(err)),
        Err(err) => {
            tracing::info!(error = %err, "private batch messages skipped: policy check failed");
            Ok(false)
        }
    }
}

/// A policy check that could not reach the database.
fn unavailable(err: PolicyError) -> RestError {
    tracing::warn!(error = %err, "broadcast policy check failed");
    match err {
        PolicyError::PoolExhausted => RestError::PoolExhausted,
        _ => RestError::DatabaseUnavailable,
    }
}

async fn enqueue_json(state: &AppState, messages: &[Message]) -> Result<(), RestError> {
    if messages.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Message) -> &str| messages.iter().map(f).collect::<Vec<_>>();
    let topics = column(|m| &m.topic);
    let events = column(|m| &m.event);
    let payloads = column(|m| &m.payload);
    let private: Vec<bool> = messages.iter().map(|m| m.private).collect();
    let ids: Vec<Option<&str>> = messages.iter().map(|m| m.id.as_deref()).collect();
    enqueue(
        state,
        ENQUEUE_JSON_SQL,
        &[&topics, &events, &payloads, &private, &ids],
    )
    .await
}

async fn enqueue_binary(
    state: &AppState,
    topic: &str,
    event: &str,
    payload: &[u8],
    private: bool,
) -> Result<(), RestError> {
    enqueue(
        state,
        ENQUEUE_BINARY_SQL,
        &[&topic, &event, &payload, &private],
    )
    .await
}

/// Run one enqueue statement (an implicit transaction: the messages are published when it
/// commits) on a pool connection.
async fn enqueue(
    state: &AppState,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), RestError> {
    let run = async {
        let client = state.db.get().await.map_err(|err| match err {
            PoolError::Timeout(_) => RestError::PoolExhausted,
            other => {
                tracing::warn!(error = %other, "broadcast: no database connection");
                RestError::DatabaseUnavailable
            }
        })?;
        let statement = client.prepare_cached(sql).await.map_err(statement_error)?;
        client
            .execute(&statement, params)
            .await
            .map_err(statement_error)?;
        Ok(())
    };
    match tokio::time::timeout(ENQUEUE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("broadcast: queueing timed out");
            Err(RestError::DatabaseUnavailable)
        }
    }
}

/// Connection loss, resource exhaustion and cancellation (statement timeout, shutdown) are the
/// database being unavailable; anything else is a broken contract with the extension.
fn statement_error(err: tokio_postgres::Error) -> RestError {
    let class = err.as_db_error().map(|db| &db.code().code()[..2]);
    match class {
        None | Some("08" | "53" | "57") => {
            tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "broadcast: database unavailable");
            RestError::DatabaseUnavailable
        }
        Some(_) => {
            tracing::error!(error = ?err, "broadcast: queueing failed");
            RestError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::http::HeaderValue;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::app::app;
    use crate::app::tests::test_state;
    use crate::auth::tests::{token, valid_token};

    /// The default limits: a 255-byte Phoenix topic, a 255-byte event.
    const NAMES: Names = Names {
        topic: 246,
        event: 255,
    };

    /// The router on an ephemeral port, its database unreachable (port 1).
    async fn serve() -> SocketAddr {
        let state = test_state(&["--max-frame-bytes=100"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app(state)).await.expect("server") });
        addr
    }

    /// One HTTP/1.1 POST; the status and the body as JSON (`null` when empty).
    async fn post(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8(response).expect("UTF-8 response");
        let status = text[9..12].parse().expect("status code");
        let (_, body) = text.split_once("\r\n\r\n").expect("head/body");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn http_refusals_in_order() {
        let addr = serve().await;
        let key = valid_token();
        let bearer = format!("Bearer {key}");
        let auth = [("authorization", bearer.as_str())];
        let unauthorized = (401, json!({"message": "Unauthorized"}));
        for path in [
            "/api/broadcast",
            "/realtime/v1/api/broadcast/room/events/e?apikey=x&vsn=2.0.0",
        ] {
            assert_eq!(post(addr, path, &[], b"{}").await, unauthorized, "{path}");
            assert_eq!(
                post(addr, path, &[("apikey", "nope")], b"{}").await,
                unauthorized,
                "{path}"
            );
            let expired = token(&json!({"role": "anon", "exp": 1}));
            assert_eq!(
                post(addr, path, &[("apikey", &expired)], b"{}").await,
                unauthorized,
                "{path}"
            );
            // A bad bearer token is not rescued by a good apikey.
            let both = [("authorization", "Bearer nope"), ("apikey", key.as_str())];
            assert_eq!(post(addr, path, &both, b"{}").await, unauthorized, "{path}");
        }
        // The media type is checked first, as in Realtime.
        let single = "/api/broadcast/room/events/e";
        assert_eq!(
            post(addr, single, &[("content-type", "text/plain")], b"x").await,
            (
                415,
                json!({"error": "Unsupported Media Type. Use application/json or application/octet-stream"})
            )
        );
        assert_eq!(
            post(
                addr,
                "/api/broadcast",
                &[("content-type", "application/octet-stream")],
                b"x"
            )
            .await,
            (
                415,
                json!({"error": "Unsupported Media Type. Use application/json"})
            )
        );
        let (status, body) = post(addr, single, &auth, &[b'1'; 101]).await;
        assert_eq!(
            (
                status,
                body["message"].as_str().map(|m| m.contains("100 bytes"))
            ),
            (413, Some(true))
        );
        assert_eq!(post(addr, single, &auth, b"[").await.0, 400);
        // Path segments are percent-decoded before validation.
        assert_eq!(
            post(addr, "/api/broadcast/%20/events/%09", &auth, b"{}").await,
            (
                422,
                json!({"errors": {"topic": ["can't be blank"], "event": ["can't be blank"]}})
            )
        );
        // An empty topic segment still routes here (an empty last segment does not: 404).
        assert_eq!(
            post(addr, "/api/broadcast//events/e", &auth, b"{}").await,
            (422, json!({"errors": {"topic": ["can't be blank"]}}))
        );
        assert_eq!(
            post(addr, "/api/broadcast/room/events/%FF", &auth, b"{}").await,
            (422, json!({"errors": {"event": ["is invalid"]}}))
        );
        assert_eq!(
            post(
                addr,
                "/api/broadcast",
                &auth,
                br#"{"messages":[{"topic":"t","event":"e"}]}"#
            )
            .await,
            (
                422,
                json!({"errors": {"messages": [{"payload": ["can't be blank"]}]}})
            )
        );
        // Valid requests reach the database, which is down here.
        let down = (
            503,
            json!({"message": "Realtime was unable to connect to the project database"}),
        );
        assert_eq!(
            post(
                addr,
                "/realtime/v1/api/broadcast/room%201%2Fx/events/e",
                &auth,
                b"{}"
            )
            .await,
            down
        );
        let batch = br#"{"messages":[{"topic":"t","event":"e","payload":{}}]}"#;
        assert_eq!(
            post(addr, "/api/broadcast?apikey=x", &auth, batch).await,
            down
        );
        // Nothing to queue (every message private, its policy unevaluable): also the database.
        let private = br#"{"messages":[{"topic":"t","event":"e","payload":{},"private":true}]}"#;
        assert_eq!(post(addr, "/api/broadcast", &auth, private).await, down);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn errors(result: Result<impl std::fmt::Debug, RestError>) -> Value {
        match result {
            Err(RestError::Invalid(errors)) => Value::Object(errors),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    fn batch(body: Value) -> Result<Vec<Message>, RestError> {
        parse_batch(NAMES, body.to_string().as_bytes())
    }

    #[test]
    fn bearer_wins_over_apikey() {
        let h = headers(&[("authorization", "Bearer user.jwt"), ("apikey", "anon.key")]);
        assert_eq!(request_token(&h), Some("user.jwt"));
        let h = headers(&[
            ("authorization", "bearer  user.jwt "),
            ("apikey", "anon.key"),
        ]);
        assert_eq!(request_token(&h), Some("user.jwt"));
        // Another scheme, or a bearer without a token, falls back to the apikey header.
        let h = headers(&[
            ("authorization", "Basic dXNlcjpwdw=="),
            ("apikey", "anon.key"),
        ]);
        assert_eq!(request_token(&h), Some("anon.key"));
        let h = headers(&[("authorization", "Bearer "), ("apikey", "anon.key")]);
        assert_eq!(request_token(&h), Some("anon.key"));
        assert_eq!(
            request_token(&headers(&[("apikey", "anon.key")])),
            Some("anon.key")
        );
        assert_eq!(request_token(&headers(&[("apikey", "")])), None);
        assert_eq!(request_token(&HeaderMap::new()), None);
        // The query string's apikey is not a header: not used.
        assert_eq!(request_token(&headers(&[("x-api-key", "k")])), None);
    }

    #[test]
    fn content_types() {
        let kind = |ct: &str| body_kind(&headers(&[("content-type", ct)]));
        assert_eq!(body_kind(&HeaderMap::new()).ok(), Some(BodyKind::Json));
        assert_eq!(kind("application/json").ok(), Some(BodyKind::Json));
        assert_eq!(
            kind("Application/JSON; charset=utf-8").ok(),
            Some(BodyKind::Json)
        );
        assert_eq!(
            kind("application/octet-stream").ok(),
            Some(BodyKind::Binary)
        );
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(
                matches!(kind(bad), Err(RestError::UnsupportedMediaType)),
                "{bad}"
            );
        }
    }

    #[test]
    fn batch_messages_parse_in_order() {
        let id = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
        let parsed = batch(json!({"messages": [
            {"topic": "a", "event": "e1", "payload": {"x": 1}},
            {"topic": "b", "event": "e2", "payload": {}, "private": true, "id": id, "extra": 1},
            {"topic": "a", "event": "e3", "payload": {"s": "t"}, "private": null, "id": null},
        ]}))
        .expect("valid batch");
        assert_eq!(
            parsed,
            vec![
                Message {
                    topic: "a".into(),
                    event: "e1".into(),
                    payload: r#"{"x":1}"#.into(),
                    private: false,
                    id: None
                },
                Message {
                    topic: "b".into(),
                    event: "e2".into(),
                    payload: "{}".into(),
                    private: true,
                    id: Some(id.to_ascii_lowercase()),
                },
                Message {
                    topic: "a".into(),
                    event: "e3".into(),
                    payload: r#"{"s":"t"}"#.into(),
                    private: false,
                    id: None
                },
            ]
        );
    }

    #[test]
    fn batch_errors_are_changeset_shaped() {
        assert_eq!(
            errors(batch(json!({}))),
            json!({"messages": ["can't be blank"]})
        );
        assert_eq!(
            errors(batch(json!({"messages": []}))),
            json!({"messages": ["can't be blank"]})
        );
        assert_eq!(
            errors(batch(json!([1, 2]))),
            json!({"messages": ["can't be blank"]})
        );
        assert_eq!(
            errors(batch(json!({"messages": {"topic": "a"}}))),
            json!({"messages": ["is invalid"]})
        );
        assert_eq!(
            errors(batch(json!({"messages": ["x"]}))),
            json!({"messages": ["is invalid"]})
        );
        let ok = json!({"topic": "t", "event": "e", "payload": {}});
        let got = errors(batch(json!({"messages": [
            ok,
            {"topic": "t", "event": "e"},
            {"topic": "  ", "event": 5, "payload": [1], "private": "yes", "id": "not-a-uuid"},
            {"topic": "", "event": "", "payload": {"k": "nul\u{0}"}, "id": "6f9619ff8b86d011b42d00c04fc964ff"},
            ok,
        ]})));
        assert_eq!(
            got,
            json!({"messages": [
                {},
                {"payload": ["can't be blank"]},
                {"topic": ["can't be blank"], "event": ["is invalid"], "payload": ["is invalid"],
                 "private": ["is invalid"], "id": ["is invalid"]},
                {"topic": ["can't be blank"], "event": ["can't be blank"], "payload": [FIELD_NUL],
                 "id": ["is invalid"]},
                {},
            ]})
        );
    }

    #[test]
    fn names_must_be_storable_and_within_the_limits() {
        let long_topic = "t".repeat(NAMES.topic + 1);
        let long_event = "e".repeat(NAMES.event + 1);
        let got = errors(batch(json!({"messages": [
            {"topic": "a\u{0}b", "event": "\u{0}", "payload": {}},
            {"topic": long_topic, "event": long_event, "payload": {}},
            {"topic": "t".repeat(NAMES.topic), "event": "e".repeat(NAMES.event), "payload": {}},
        ]})));
        assert_eq!(
            got,
            json!({"messages": [
                {"topic": [FIELD_NUL], "event": [FIELD_NUL]},
                {"topic": ["should be at most 246 byte(s)"], "event": ["should be at most 255 byte(s)"]},
                {},
            ]})
        );
        assert_eq!(
            errors(check_single(
                NAMES,
                "room\u{0}",
                "e",
                BodyKind::Binary,
                Bytes::new()
            )),
            json!({"topic": [FIELD_NUL]})
        );
    }

    #[test]
    fn malformed_json_is_not_a_field_error() {
        assert!(matches!(
            parse_batch(NAMES, b"{\"messages\": ["),
            Err(RestError::MalformedJson(_))
        ));
        // A lone surrogate cannot be stored as text.
        let lone = br#"{"messages":[{"topic":"t","event":"e","payload":{"s":"\ud800"}}]}"#;
        assert!(matches!(
            parse_batch(NAMES, lone),
            Err(RestError::MalformedJson(_))
        ));
        assert!(matches!(
            check_single(
                NAMES,
                "t",
                "e",
                BodyKind::Json,
                Bytes::from_static(b"{nope")
            ),
            Err(RestError::MalformedJson(_))
        ));
    }

    #[test]
    fn single_bodies() {
        let json = |body: &'static [u8]| match check_single(
            NAMES,
            "t",
            "e",
            BodyKind::Json,
            Bytes::from_static(body),
        ) {
            Ok(SinglePayload::Json(text)) => text,
            other => panic!("expected a JSON payload, got {other:?}"),
        };
        assert_eq!(json(b" {\"a\": [1, true]} "), r#"{"a":[1,true]}"#);
        assert_eq!(json(b"\"just a string\""), r#""just a string""#);
        assert_eq!(json(b"null"), "null");
        assert_eq!(json(b"42"), "42");
        match check_single(
            NAMES,
            "t",
            "e",
            BodyKind::Binary,
            Bytes::from_static(b"\x00\xff"),
        ) {
            Ok(SinglePayload::Binary(bytes)) => assert_eq!(&bytes[..], b"\x00\xff"),
            other => panic!("expected a binary payload, got {other:?}"),
        }
        // An empty raw body is a valid (empty) binary payload; an empty JSON body is not.
        assert!(matches!(
            check_single(NAMES, "t", "e", BodyKind::Binary, Bytes::new()),
            Ok(SinglePayload::Binary(_))
        ));
        assert_eq!(
            errors(check_single(
                NAMES,
                "t",
                "e",
                BodyKind::Json,
                Bytes::from_static(b" \n")
            )),
            json!({"payload": ["can't be blank"]})
        );
        assert_eq!(
            errors(check_single(
                NAMES,
                " ",
                "",
                BodyKind::Json,
                Bytes::from_static(br#"["\u0000"]"#)
            )),
            json!({"topic": ["can't be blank"], "event": ["can't be blank"], "payload": [FIELD_NUL]})
        );
        assert_eq!(
            errors(check_single(NAMES, "t", "", BodyKind::Binary, Bytes::new())),
            json!({"event": ["can't be blank"]})
        );
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(is_uuid("6F9619FF-8B86-D011-B42D-00C04FC964FF"));
        assert!(!is_uuid("6f9619ff-8b86-d011-b42d-00c04fc964f"));
        assert!(!is_uuid("6f9619ff-8b86-d011-b42d-00c04fc964fg"));
        assert!(!is_uuid("6f9619ff08b86-d011-b42d-00c04fc964ff"));
        assert!(!is_uuid("{6f9619ff-8b86-d011-b42d-00c04fc964f}"));
    }

    #[test]
    fn verdicts() {
        assert!(single_verdict(Ok(true)).is_ok());
        assert!(matches!(
            single_verdict(Ok(false)),
            Err(RestError::WriteDenied)
        ));
        assert!(matches!(
            single_verdict(Err(PolicyError::UnknownRole("ghost".into()))),
            Err(RestError::UnknownRole(r)) if r == "ghost"
        ));
        assert!(matches!(
            single_verdict(Err(PolicyError::Policy("boom".into()))),
            Err(RestError::WriteDenied)
        ));
        assert!(matches!(
            single_verdict(Err(PolicyError::PoolExhausted)),
            Err(RestError::PoolExhausted)
        ));
        assert!(matches!(batch_verdict(Ok(false)), Ok(false)));
        assert!(matches!(
            batch_verdict(Err(PolicyError::Policy("boom".into()))),
            Ok(false)
        ));
        assert!(matches!(
            batch_verdict(Err(PolicyError::UnknownRole("ghost".into()))),
            Ok(false)
        ));
        assert!(matches!(
            batch_verdict(Err(PolicyError::Unavailable("down".into()))),
            Err(RestError::DatabaseUnavailable)
        ));
    }
}
