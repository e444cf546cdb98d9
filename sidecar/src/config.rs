//! Command-line / environment configuration (clap). Every flag has an environment variable of
//! the same name in upper snake case; flags win over the environment.
//!
//! Invariants: values are validated at parse time (sizes and counts are ≥ 1, the database URL
//! parses), so the rest of the crate never re-checks them; the JWT keys are checked at start-up
//! by `Auth::from_config`. Secrets (`JWT_SECRET`, `JWT_JWKS`, the password in `DATABASE_URL`) are
//! never printed: `--help` hides their environment values and [`Config`] has no `Debug`.

use std::time::Duration;

use clap::Parser;

use crate::fanout::QueueLimits;

#[derive(Parser, Clone)]
#[command(name = "pg-realtime-sidecar", version, about)]
pub struct Config {
    /// PostgreSQL connection string of the database with the pg_realtime extension.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub database_url: String,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,

    /// HS256/384/512 secret that signs API keys and user JWTs. At least one of the secret and
    /// a JWKS must be set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS (JSON `{"keys": [...]}`) whose keys, matched by the token's `kid`, verify
    /// RS256/384/512, ES256/384/512 and EdDSA tokens (`RSA`, `EC`, `OKP` keys) and HS256/384/512
    /// tokens (`oct` keys; without a matching one HS tokens use the secret).
    #[arg(long, env = "JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,

    /// File holding a JWKS, as `--jwt-jwks` (set one of the two).
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "JWT_ISS")]
    pub jwt_iss: Option<String>,

    /// When set, tokens must carry this `aud` (a string, or an array that contains it).
    #[arg(long, env = "JWT_AUD")]
    pub jwt_aud: Option<String>,

    /// Connections used for authorization queries (private-channel policies).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,

    /// Re-evaluate each private channel's policies this often (Realtime re-checks the token
    /// every 5 minutes; here a revoked policy also takes effect without a token refresh).
    #[arg(long, env = "POLICY_RECHECK_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub policy_recheck_secs: u64,

    /// Largest broadcast payload a client may send, in bytes (JSON text or binary); larger ones
    /// are dropped (with `ack`, answered `payload_size_exceeded`). Supabase's default: 3000 KB.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 3_000_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_payload_bytes: u32,

    /// Client events (broadcasts and presence changes) per second this sidecar accepts from all
    /// its clients; the channel whose event goes over it is closed ("Too many messages per
    /// second"). 0: no limit (Supabase's default is 100 per project).
    #[arg(long, env = "MAX_EVENTS_PER_SECOND", default_value_t = 0)]
    pub max_events_per_second: u32,

    /// Presence `track`/`untrack` calls a channel may make per `PRESENCE_WINDOW_SECS`; one more
    /// closes it ("Client presence rate limit exceeded").
    #[arg(long, env = "PRESENCE_MAX_CALLS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub presence_max_calls: u32,

    #[arg(long, env = "PRESENCE_WINDOW_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_window_secs: u64,

    /// Presence changes per second this sidecar accepts from all its clients; a channel whose
    /// change goes over it is closed ("Too many presence messages per second").
    #[arg(long, env = "MAX_PRESENCE_EVENTS_PER_SECOND", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_presence_events_per_second: u32,

    /// Largest WebSocket frame/message accepted from a client, in bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 5_000_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frame_bytes: u32,

    /// Delay before refusing a connection whose token is missing or invalid (damps reconnect loops).
    #[arg(long, env = "CONNECT_ERROR_BACKOFF_MS", default_value_t = 2000)]
    pub connect_error_backoff_ms: u64,

    /// Delay before replying to a failed channel join (damps client rejoin loops).
    #[arg(long, env = "CHANNEL_ERROR_BACKOFF_MS", default_value_t = 5000)]
    pub channel_error_backoff_ms: u64,

    /// Poll the queue at least this often even without a wake-up notification.
    #[arg(long, env = "POLL_FALLBACK_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_fallback_ms: u64,

    /// After a partial batch, wait this long before the next read (0 disables): under load each
    /// read then collects what committed meanwhile, and a busy queue needs no wake-ups.
    #[arg(long, env = "POLL_LINGER_MS", default_value_t = 1)]
    pub poll_linger_ms: u64,

    /// Maximum rows fetched by one `realtime._poll` call.
    #[arg(long, env = "POLL_BATCH", default_value_t = 2000,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub poll_batch: i32,

    /// Frames a connection may have queued for sending before it is closed as too slow.
    #[arg(long, env = "CLIENT_QUEUE_FRAMES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub client_queue_frames: u32,

    /// Bytes a connection may have waiting to be sent (queued frames and join refusals waiting
    /// for `CHANNEL_ERROR_BACKOFF_MS`) before it is closed as too slow (4001). A frame shared
    /// by many connections counts against each; one larger than this is still sent to a
    /// connection that has nothing else waiting.
    #[arg(long, env = "CLIENT_QUEUE_BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub client_queue_bytes: u32,

    /// Channels one connection may have joined at once.
    #[arg(long, env = "MAX_CHANNELS_PER_CLIENT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_client: u32,

    /// Token roles accepted (comma-separated), at connect, join, token refresh and REST; any
    /// other role is refused, so no token can act as a superuser or a BYPASSRLS role it does
    /// not name here.
    #[arg(long, env = "ALLOWED_ROLES", value_delimiter = ',',
          default_value = "anon,authenticated,service_role", value_parser = parse_role)]
    pub allowed_roles: Vec<String>,

    /// Longest Phoenix topic (`realtime:` included) a client may join or send to, in bytes:
    /// 255 is what serializer v2's binary frames can carry.
    #[arg(long, env = "MAX_TOPIC_BYTES", default_value_t = 255,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_topic_bytes: u32,

    /// Longest broadcast event name a client may send, in bytes (v2's binary limit, 255).
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 255,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_event_bytes: u32,

    /// Conditions one `postgres_changes` filter may have (every condition is work for every
    /// write to the table).
    #[arg(long, env = "MAX_FILTER_CONDITIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_filter_conditions: u32,

    /// `postgres_changes` entries one join may have.
    #[arg(long, env = "MAX_POSTGRES_CHANGES_PER_CHANNEL", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_postgres_changes_per_channel: u32,

    /// `postgres_changes` entries one connection may have over all its channels.
    #[arg(long, env = "MAX_POSTGRES_CHANGES_PER_CLIENT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_postgres_changes_per_client: u32,

    /// Refused joins a connection may have waiting for `CHANNEL_ERROR_BACKOFF_MS`; one more
    /// closes the connection (4002).
    #[arg(long, env = "MAX_PENDING_JOIN_ERRORS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_join_errors: u32,

    /// How long a client may take to send a complete HTTP request head (also the idle limit
    /// of a kept-alive HTTP connection); slower connections are closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// Open TCP connections (WebSocket and HTTP) this sidecar serves at once; beyond it a
    /// request is answered 429 "Too many connected users". Keep it below the process's open
    /// file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Open TCP connections from one client address (an IPv6 /64 counts as one address);
    /// beyond it a request is answered 429.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 2_048,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,
}

impl Config {
    pub fn connect_error_backoff(&self) -> Duration {
        Duration::from_millis(self.connect_error_backoff_ms)
    }

    pub fn presence_window(&self) -> Duration {
        Duration::from_secs(self.presence_window_secs)
    }

    pub fn policy_recheck(&self) -> Duration {
        Duration::from_secs(self.policy_recheck_secs)
    }

    pub fn channel_error_backoff(&self) -> Duration {
        Duration::from_millis(self.channel_error_backoff_ms)
    }

    pub fn poll_fallback(&self) -> Duration {
        Duration::from_millis(self.poll_fallback_ms)
    }

    pub fn poll_linger(&self) -> Duration {
        Duration::from_millis(self.poll_linger_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.client_queue_frames as usize,
            bytes: self.client_queue_bytes as usize,
        }
    }
}

/// A role name: not blank (a stray comma in `ALLOWED_ROLES` must not allow the empty role).
fn parse_role(role: &str) -> Result<String, String> {
    let role = role.trim();
    if role.is_empty() {
        return Err("empty role name".into());
    }
    Ok(role.to_owned())
}

fn parse_database_url(url: &str) -> Result<String, String> {
    url.parse::<tokio_postgres::Config>()
        .map(|_| url.to_owned())
        .map_err(|e| format!("invalid database URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from([
            "x",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/postgres",
            "--jwt-secret",
            "s",
        ])
        .expect("valid arguments");
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 4000);
        assert_eq!(c.max_frame_bytes, 5_000_000);
        assert_eq!(c.connect_error_backoff_ms, 2000);
        assert_eq!(c.channel_error_backoff_ms, 5000);
        assert_eq!(c.poll_fallback_ms, 500);
        assert_eq!(c.poll_batch, 2000);
        assert_eq!(c.poll_linger_ms, 1);
        assert_eq!(c.client_queue_frames, 1024);
        assert_eq!(c.client_queue_bytes, 16 * 1024 * 1024);
        assert_eq!(c.max_channels_per_client, 100);
        assert_eq!(c.allowed_roles, ["anon", "authenticated", "service_role"]);
        assert_eq!((c.max_topic_bytes, c.max_event_bytes), (255, 255));
        assert_eq!(c.max_filter_conditions, 10);
        assert_eq!(c.max_postgres_changes_per_channel, 20);
        assert_eq!(c.max_postgres_changes_per_client, 100);
        assert_eq!(c.max_pending_join_errors, 100);
        assert_eq!(c.header_read_timeout_ms, 10_000);
        assert_eq!(c.max_connections, 16_384);
        assert_eq!(c.max_connections_per_ip, 2_048);
    }

    #[test]
    fn allowed_roles_are_a_list_without_blanks() {
        let parse = |roles: &str| {
            Config::try_parse_from([
                "x",
                "--database-url",
                "postgres://localhost/db",
                "--allowed-roles",
                roles,
            ])
            .map(|c| c.allowed_roles)
        };
        assert_eq!(
            parse("anon, app_user").expect("valid"),
            ["anon", "app_user"]
        );
        assert!(parse("anon,,authenticated").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn rejects_zero_queue() {
        let r = Config::try_parse_from([
            "x",
            "--database-url",
            "postgres://localhost/db",
            "--jwt-secret",
            "s",
            "--client-queue-frames",
            "0",
        ]);
        assert!(r.is_err());
    }
}
