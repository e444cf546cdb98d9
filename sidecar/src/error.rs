//! The sidecar's one error catalogue: every string a client can see and every WebSocket close
//! code the server sends is defined here and nowhere else.
//!
//! Invariants:
//! * Texts are byte-for-byte those of Supabase Realtime (docs/protocol.md §1.3, §3.5, §7.1)
//!   where it has one: clients and dashboards match on them.
//! * Connect errors become an HTTP refusal `{"error": msg}` (the client never reads the body, but
//!   operators and tests do); join errors become a `phx_reply` `reason`; channel shutdowns a
//!   `system` message followed by `phx_close`; socket-level failures a close code.
//! * Close codes: 1000–1015 are RFC 6455 codes used with their standard meaning; 4000–4099 are
//!   this server's own. realtime-js reconnects after *any* server close, so no code is terminal;
//!   the code only tells operators why.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

/// `reason` of the Phoenix-level reply to a push for a topic this socket has not joined.
pub const UNMATCHED_TOPIC: &str = "unmatched topic";

/// Ack `response` (a bare JSON string, as Phoenix encodes the atom) for a broadcast over
/// `MAX_PAYLOAD_BYTES` (docs/protocol.md §4.3).
pub const PAYLOAD_SIZE_EXCEEDED: &str = "payload_size_exceeded";

/// The database cannot be reached (join reasons and `system` messages quote it).
pub const UNABLE_TO_CONNECT: &str = "Realtime was unable to connect to the project database";

/// `system` message once a channel's Postgres Changes subscriptions are live (§6.3).
pub const SUBSCRIBED_TO_POSTGRES: &str = "Subscribed to PostgreSQL";

/// Presence (docs/protocol.md §5.1, §5.5): the error reply to a `track` whose payload is not an
/// object, and the messages that close a channel over a presence limit.
pub const PRESENCE_NOT_A_MAP: &str = "Presence track payload must be a map";
pub const PRESENCE_RATE_LIMITED: &str = "Client presence rate limit exceeded";
pub const PRESENCE_TOO_MANY: &str = "Too many presence messages per second";
pub const PRESENCE_TOO_LARGE: &str = "Track message size exceeded";
/// Closes a channel whose client event goes over `MAX_EVENTS_PER_SECOND` (§7.4).
pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";

/// Why a JWT was refused. `Display` is the bare message (used as-is in connect refusals and in
/// channel-shutdown system messages).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    Signature,
    /// No key for the token's `alg` (unknown or `none`; HS without a secret; RS/ES/EdDSA
    /// without a `kid` or without a JWKS).
    #[error("Failed to generate JWT signer, check your JWT secret or JWKS configuration")]
    Signer,
    /// The JWKS has no key with the token's `kid` that fits its `alg` (Realtime's
    /// `{:error_generating_signer, kid}`; the kid is shown as Elixir's `inspect` would).
    #[error(
        "Failed to generate JWT signer for key ID (kid) {kid:?}, check your JWT secret or JWKS configuration"
    )]
    SignerKid { kid: String },
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    #[error("Token has expired {secs_ago} seconds ago")]
    Expired { secs_ago: i64 },
    #[error("Token expiration time is invalid")]
    InvalidExp,
    /// A configured claim check (`JWT_ISS`, `JWT_AUD`) failed. `value` is the token's claim as
    /// JSON (`nil` when absent). Realtime's claim validators fail with the Joken term
    /// `[message: "Invalid token", claim: …, claim_val: …]`, which has no dedicated text: connect
    /// and join fall back to their generic errors, a token refresh shows the inspected term.
    #[error("Invalid token: claim `{claim}` does not match the configured value")]
    InvalidClaim { claim: &'static str, value: String },
    /// The token's `role` is not in `ALLOWED_ROLES`.
    #[error("The role \"{role}\" of the token is not allowed")]
    RoleNotAllowed { role: String },
    /// `nbf` is later than now (plus a small leeway for clock skew).
    #[error("Token is not valid yet")]
    NotYetValid,
}

impl AuthError {
    /// Message of the HTTP refusal at connect time (§1.3 has no "N seconds ago" there).
    pub fn connect_message(&self) -> Cow<'static, str> {
        match self {
            AuthError::Expired { .. } => Cow::Borrowed("Token has expired"),
            AuthError::InvalidClaim { .. } => Cow::Borrowed("Error connecting to Realtime"),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// `<Code>: <message>` join-reply reason (§3.5).
    pub fn join_reason(&self) -> String {
        let code = match self {
            AuthError::Malformed => "MalformedJWT",
            AuthError::Signature => "JwtSignatureError",
            AuthError::Signer | AuthError::SignerKid { .. } => "JwtSignerError",
            AuthError::MissingClaims
            | AuthError::Expired { .. }
            | AuthError::InvalidExp
            | AuthError::NotYetValid => "InvalidJWTToken",
            AuthError::RoleNotAllowed { .. } => "Unauthorized",
            // Realtime's catch-all join error (literal, no code).
            AuthError::InvalidClaim { .. } => return "Unknown Error on Channel".to_owned(),
        };
        format!("{code}: {self}")
    }

    /// System message that closes a channel after a failed `access_token` refresh (§7.1).
    /// Realtime sends the inspected error term for a bad signature.
    pub fn refresh_message(&self) -> String {
        match self {
            AuthError::Signature => ":signature_error".to_owned(),
            AuthError::InvalidClaim { claim, value } => {
                format!("[message: \"Invalid token\", claim: \"{claim}\", claim_val: {value}]")
            }
            other => other.to_string(),
        }
    }
}

/// `reason` of a 503 `/healthcheck`: without its database connection the sidecar delivers
/// nothing.
pub const NO_QUEUE_CONNECTION: &str = "The queue reader has no database connection";

/// Refusal of the WebSocket upgrade.
#[derive(Debug, Clone, Error)]
pub enum ConnectError {
    #[error("API key is missing")]
    MissingApiKey,
    #[error("{}", .0.connect_message())]
    Auth(#[from] AuthError),
    #[error("Unsupported serializer version")]
    UnsupportedVsn,
    /// `MAX_CONNECTIONS` reached (Supabase's text for its concurrent-users limit).
    #[error("Too many connected users")]
    TooManyConnections,
    /// `MAX_CONNECTIONS_PER_IP` reached.
    #[error("Too many connections from this address")]
    TooManyFromAddress,
}

impl ConnectError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::Auth(AuthError::RoleNotAllowed { .. }) => StatusCode::FORBIDDEN,
            ConnectError::MissingApiKey | ConnectError::Auth(_) => StatusCode::UNAUTHORIZED,
            ConnectError::UnsupportedVsn => StatusCode::BAD_REQUEST,
            ConnectError::TooManyConnections | ConnectError::TooManyFromAddress => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

/// A refused `phx_join`; `Display` is the reply's `reason`.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error("TopicNameRequired: You must provide a topic name")]
    TopicNameRequired,
    #[error("ChannelRateLimitReached: Too many channels")]
    TooManyChannels,
    /// The topic is over `MAX_TOPIC_BYTES`.
    #[error("InvalidTopicName: The topic is longer than {0} bytes")]
    TopicTooLong(u32),
    /// Neither Postgres text nor jsonb can hold U+0000.
    #[error("InvalidTopicName: The topic must not contain \\u0000")]
    TopicNul,
    #[error("InvalidJoinPayload: The presence key must not contain \\u0000")]
    PresenceKeyNul,
    #[error("{}", .0.join_reason())]
    Auth(#[from] AuthError),
    /// The channel's SELECT policies on `realtime.messages` allow neither extension (or they
    /// failed to evaluate, which Supabase reports the same way).
    #[error("Unauthorized: You do not have permissions to read from this Channel topic: {0}")]
    Unauthorized(String),
    /// The token's `role` is not a database role, so no policy can be evaluated as it.
    #[error("Unauthorized: The role \"{0}\" of the token does not exist in the database")]
    UnknownRole(String),
    #[error("IncreaseConnectionPool: Please increase your connection pool size")]
    IncreaseConnectionPool,
    #[error("UnableToConnectToProject: Realtime was unable to connect to the project database")]
    UnableToConnect,
    /// `postgres_changes_options.wait`: the bindings were refused (§10.1).
    #[error("RealtimeDisabledForConfiguration: {0}")]
    ChangesRefused(String),
    #[error("PostgresChangesSubscribeTimeout: Timed out after {0}ms waiting for the postgres_changes subscription")]
    ChangesTimeout(u64),
}

/// Why a private channel's policies could not be evaluated. `Display` is for logs only; clients
/// get [`PolicyError::join_error`] or [`PolicyError::close_message`].
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("role \"{0}\" does not exist")]
    UnknownRole(String),
    #[error("no free database connection (DB_POOL_SIZE)")]
    PoolExhausted,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A policy (or the role switch) raised an error.
    #[error("RlsPolicyError: {0}")]
    Policy(String),
}

impl PolicyError {
    pub fn join_error(&self, sub_topic: &str) -> JoinError {
        match self {
            PolicyError::UnknownRole(role) => JoinError::UnknownRole(role.clone()),
            PolicyError::PoolExhausted => JoinError::IncreaseConnectionPool,
            PolicyError::Unavailable(_) => JoinError::UnableToConnect,
            PolicyError::Policy(_) => JoinError::Unauthorized(sub_topic.to_owned()),
        }
    }

    /// `system` message closing a channel whose policies could not be re-evaluated (§7.1).
    pub fn close_message(&self, sub_topic: &str) -> String {
        match self {
            PolicyError::PoolExhausted | PolicyError::Unavailable(_) => {
                UNABLE_TO_CONNECT.to_owned()
            }
            other => other.join_error(sub_topic).to_string(),
        }
    }

    /// Worth retrying later (the database is busy or away), as opposed to a verdict.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PolicyError::PoolExhausted | PolicyError::Unavailable(_)
        )
    }
}

/// Error-reply `reason` to a broadcast (with `ack`) whose event name is over `MAX_EVENT_BYTES`.
pub fn event_too_long(max: u32) -> String {
    format!("The event name is longer than {max} bytes")
}

/// Error-reply `reason` to a broadcast (with `ack`) or a presence `track` holding text that
/// PostgreSQL cannot store (U+0000 in a string or key, or a number out of range): the message
/// could not reach the other sidecars, so it is refused everywhere.
pub const UNSTORABLE: &str =
    "The message contains \\u0000 or a number out of range, which PostgreSQL cannot store";

/// `system` message closing a channel after its read access was revoked (§7.1).
pub fn read_revoked(sub_topic: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {sub_topic}")
}

/// Error-reply `reason` to a broadcast (with `ack`) that the channel's INSERT policies do not
/// allow. Supabase drops such a message silently; the sender deserves to know.
pub fn write_denied(sub_topic: &str) -> String {
    format!("Unauthorized: You do not have permissions to write to this Channel topic: {sub_topic}")
}

/// A `postgres_changes` binding that cannot be subscribed (docs/protocol.md §6.1–§6.3, §10.3).
/// `Display` is the `message` of the `system` error; texts are Supabase's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// Neither `schema` nor `table` (or one that is not a string); built by
    /// [`FilterError::no_params`].
    #[error(
        "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {0}"
    )]
    NoParams(String),
    #[error("Error parsing `filter` params: {0}")]
    Filter(#[from] FilterSyntax),
    #[error(
        "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]"
    )]
    SelectNotList,
    #[error(
        "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
    )]
    SelectOnWildcard,
    /// More conditions than `MAX_FILTER_CONDITIONS`.
    #[error("Error parsing `filter` params: a filter may have at most {0} conditions")]
    TooManyConditions(u32),
    /// More entries in one join than `MAX_POSTGRES_CHANGES_PER_CHANNEL`.
    #[error("Too many postgres_changes entries: a channel may have at most {0}")]
    TooManyForChannel(u32),
    /// More entries over the connection's channels than `MAX_POSTGRES_CHANGES_PER_CLIENT`.
    #[error("Too many postgres_changes entries: a connection may have at most {0} over all its channels")]
    TooManyForClient(u32),
}

impl FilterError {
    /// Shows the entry as compact JSON, except that an entry carrying a token is not echoed
    /// (Supabase redacts it the same way).
    pub fn no_params(entry: &serde_json::Map<String, serde_json::Value>) -> Self {
        if entry.contains_key("user_token") || entry.contains_key("auth_token") {
            return FilterError::NoParams("<redacted>".to_owned());
        }
        FilterError::NoParams(serde_json::Value::Object(entry.clone()).to_string())
    }
}

/// What is wrong with a `filter` string. Conditions are quoted as written (from their start to
/// the next comma) so that the client can find the culprit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterSyntax {
    #[error("`filter` must be a string")]
    NotAString,
    #[error("filter must not contain empty segments (check for extra commas)")]
    EmptyCondition,
    #[error("missing `=` in `{0}`")]
    MissingEquals(String),
    #[error("empty column name in `{0}`")]
    EmptyColumn(String),
    #[error("missing `.` after the operator in `{0}`")]
    MissingDot(String),
    #[error("unknown operator `{0}`")]
    UnknownOperator(String),
    #[error("unterminated quote in `{0}`")]
    UnterminatedQuote(String),
    #[error("unexpected text after a closing quote in `{0}`")]
    TextAfterQuote(String),
    #[error("unbalanced parentheses in `{0}`; quote values containing `,`, `(` or `)`")]
    UnbalancedParentheses(String),
    #[error("`in` filter value must be wrapped by parentheses")]
    InNotParenthesized,
    /// Shows the column.
    #[error("empty value in the `in` list of `{0}`; write \"\" for an empty string")]
    EmptyInValue(String),
    #[error("`in` filter accepts at most {} values", crate::filter::MAX_IN_VALUES)]
    TooManyInValues,
    #[error("invalid `is` value `{0}`; expected null, true, false or unknown")]
    BadIsValue(String),
}

/// Field error of a REST broadcast: required and missing, `null` or blank (Ecto's message).
pub const FIELD_BLANK: &str = "can't be blank";
/// Field error of a REST broadcast: present with the wrong type or form (Ecto's message).
pub const FIELD_INVALID: &str = "is invalid";
/// Field error of a REST broadcast topic, event or payload that PostgreSQL cannot store.
pub const FIELD_NUL: &str = "must not contain \\u0000 (PostgreSQL cannot store it)";
/// Field error of a REST broadcast topic or event over `MAX_TOPIC_BYTES` / `MAX_EVENT_BYTES`
/// (Ecto's `validate_length` text with `count: :bytes`).
pub fn field_too_long(max: usize) -> String {
    format!("should be at most {max} byte(s)")
}

/// Refusal of a REST broadcast request (docs/protocol.md §8). Bodies: 415 `{"error": msg}`
/// (Realtime's content-type plug), 422 `{"errors": {field: [msg, ...]}}` (Realtime's changeset
/// errors, with the `FIELD_*` messages), every other status `{"message": msg}`.
#[derive(Debug, Error)]
pub enum RestError {
    /// No token, or one that does not verify.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Unsupported Media Type. Use application/json or application/octet-stream")]
    UnsupportedMediaType,
    /// The batch endpoint takes JSON only.
    #[error("Unsupported Media Type. Use application/json")]
    UnsupportedBatchMediaType,
    #[error("Payload Too Large: the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The connection failed while the body was read.
    #[error("The request body could not be read")]
    UnreadableBody,
    #[error("The request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Field errors, keyed by field name.
    #[error("Unprocessable Entity: {}", serde_json::Value::Object(.0.clone()))]
    Invalid(serde_json::Map<String, serde_json::Value>),
    /// A private single broadcast that the INSERT policies do not allow (or that raised).
    #[error("Unauthorized")]
    WriteDenied,
    #[error("{}", JoinError::UnknownRole(.0.clone()))]
    UnknownRole(String),
    /// The token's role is not in `ALLOWED_ROLES`.
    #[error("{0}")]
    RoleNotAllowed(AuthError),
    #[error("Connection pool exhausted")]
    PoolExhausted,
    #[error("Realtime was unable to connect to the project database")]
    DatabaseUnavailable,
    /// The database refused the enqueue statement for another reason (logged).
    #[error("The message could not be queued")]
    Internal,
}

impl RestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RestError::Unauthorized => StatusCode::UNAUTHORIZED,
            RestError::UnsupportedMediaType | RestError::UnsupportedBatchMediaType => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            RestError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RestError::UnreadableBody | RestError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            RestError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RestError::WriteDenied | RestError::UnknownRole(_) | RestError::RoleNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            RestError::PoolExhausted | RestError::DatabaseUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RestError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            RestError::Invalid(errors) => serde_json::json!({ "errors": errors }),
            RestError::UnsupportedMediaType | RestError::UnsupportedBatchMediaType => {
                serde_json::json!({ "error": self.to_string() })
            }
            other => serde_json::json!({ "message": other.to_string() }),
        };
        (status, Json(body)).into_response()
    }
}

/// A client frame that could not be decoded. Logged and ignored; the socket stays open.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid JSON message: {0}")]
    Json(String),
    #[error("v2 text frame must be an array [join_ref, ref, topic, event, payload, ...]")]
    ArrayShape,
    #[error("binary frame too short for its header")]
    Truncated,
    #[error("binary frame lengths exceed the frame size")]
    LengthMismatch,
    #[error("unsupported binary frame kind {0}")]
    UnsupportedKind(u8),
    #[error("unsupported payload encoding {0}")]
    UnsupportedEncoding(u8),
    #[error("binary frame field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("binary frame {0} is not valid JSON")]
    BadJson(&'static str),
    #[error("binary frames are not part of serializer v1")]
    BinaryOnV1,
}

/// Why the queue reader lost its database session (it reconnects with backoff).
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("database error: {}", pg_detail(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database connection closed")]
    ConnectionClosed,
    #[error("queue payload is not valid JSON")]
    BadPayload,
    #[error("database query timed out")]
    Timeout,
}

/// tokio-postgres errors display as e.g. "db error"; the useful part is the server message or
/// the underlying I/O error.
fn pg_detail(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{err}: {source}"),
        (None, None) => err.to_string(),
    }
}

/// Why the server ends a WebSocket; mapped to the close frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame or the TCP stream ended.
    ClientClosed,
    /// SIGTERM/SIGINT: the server drains.
    ServerShutdown,
    /// No inbound frame for 60 s (Phoenix's websocket timeout; the client heartbeats every 25 s).
    IdleTimeout,
    /// The connection's bounded outbound queue was full (`CLIENT_QUEUE_FRAMES` frames or
    /// `CLIENT_QUEUE_BYTES` bytes): it cannot keep up and must not slow anyone else down.
    SlowClient,
    /// A message over `MAX_FRAME_BYTES`.
    MessageTooBig,
    /// The WebSocket stream reported an error (protocol violation, reset).
    ReadFailed,
    /// Writing to the socket failed.
    WriteFailed,
    /// More refused joins waiting for their reply than `MAX_PENDING_JOIN_ERRORS`: a client in
    /// a join loop, whose replies must not pile up in memory.
    TooManyJoinErrors,
    /// A `ref` or `join_ref` longer than `validate::MAX_REF_BYTES`. Replies echo refs, so long
    /// ones would make the server hold and send back what the client sent; a reply carrying a
    /// shortened ref would match no push, so the connection is closed instead.
    RefTooLong,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ClientClosed | CloseReason::IdleTimeout => 1000,
            CloseReason::ServerShutdown => 1001,
            CloseReason::ReadFailed => 1002,
            CloseReason::RefTooLong => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::WriteFailed => 1011,
            CloseReason::SlowClient => 4001,
            CloseReason::TooManyJoinErrors => 4002,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::SlowClient => "slow client: outbound queue full",
            CloseReason::ReadFailed => "read error",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::WriteFailed => "write error",
            CloseReason::TooManyJoinErrors => "too many refused joins pending",
            CloseReason::RefTooLong => "ref or join_ref longer than 64 bytes",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_texts_fit_a_close_frame_and_state_the_ref_limit() {
        let all = [
            CloseReason::ClientClosed,
            CloseReason::ServerShutdown,
            CloseReason::IdleTimeout,
            CloseReason::SlowClient,
            CloseReason::MessageTooBig,
            CloseReason::ReadFailed,
            CloseReason::WriteFailed,
            CloseReason::TooManyJoinErrors,
            CloseReason::RefTooLong,
        ];
        for reason in all {
            assert!(reason.text().len() <= 123, "{reason:?}");
        }
        let limit = format!(" {} bytes", crate::validate::MAX_REF_BYTES);
        assert!(CloseReason::RefTooLong.text().ends_with(&limit));
        assert_eq!(CloseReason::RefTooLong.code(), 1008);
    }

    #[test]
    fn join_reasons_match_realtime() {
        assert_eq!(
            JoinError::from(AuthError::Expired { secs_ago: 3 }).to_string(),
            "InvalidJWTToken: Token has expired 3 seconds ago"
        );
        assert_eq!(
            JoinError::from(AuthError::MissingClaims).to_string(),
            "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
        );
        assert_eq!(
            JoinError::from(AuthError::Malformed).to_string(),
            "MalformedJWT: The token provided is not a valid JWT"
        );
        assert_eq!(
            JoinError::from(AuthError::Signature).to_string(),
            "JwtSignatureError: Failed to validate JWT signature"
        );
        assert_eq!(
            JoinError::Unauthorized("room1".into()).to_string(),
            "Unauthorized: You do not have permissions to read from this Channel topic: room1"
        );
    }

    #[test]
    fn connect_messages_match_realtime() {
        let expired = ConnectError::from(AuthError::Expired { secs_ago: 9 });
        assert_eq!(expired.to_string(), "Token has expired");
        assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ConnectError::MissingApiKey.to_string(),
            "API key is missing"
        );
        assert_eq!(
            ConnectError::UnsupportedVsn.status(),
            StatusCode::BAD_REQUEST
        );
        let role = ConnectError::from(AuthError::RoleNotAllowed {
            role: "postgres".into(),
        });
        assert_eq!(
            (role.status(), role.to_string().as_str()),
            (
                StatusCode::FORBIDDEN,
                "The role \"postgres\" of the token is not allowed"
            )
        );
        assert_eq!(
            ConnectError::TooManyConnections.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn token_role_and_nbf_reasons() {
        let role = AuthError::RoleNotAllowed {
            role: "postgres".into(),
        };
        assert_eq!(
            JoinError::from(role.clone()).to_string(),
            "Unauthorized: The role \"postgres\" of the token is not allowed"
        );
        assert_eq!(
            role.refresh_message(),
            "The role \"postgres\" of the token is not allowed"
        );
        assert_eq!(
            JoinError::from(AuthError::NotYetValid).to_string(),
            "InvalidJWTToken: Token is not valid yet"
        );
    }
}
