//! The extension's error catalogue: every error a caller can see, with its SQLSTATE.
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pub enum RealtimeError {
    NotPreloaded,
    EmptyTopic,
    PayloadType(String),
    NullPayload,
    Prepare,
    TooManyBackends(i32),
    SnapshotIsolation,
    UnknownExtension(String),
    /// A private send whose INSERT policies on realtime.messages refused the caller (topic).
    PrivateSendDenied(String),
    /// Checking a private send's policies failed (the error's message).
    SendFailed(String),
    /// enable()/disable() by someone who does not own the table (its name).
    NotOwner(String),
}

impl RealtimeError {
    fn parts(&self) -> (PgSqlErrorCode, String, Option<&'static str>) {
        match self {
            Self::NotPreloaded => (
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "pg_realtime must be loaded via shared_preload_libraries".to_string(),
                Some("Add pg_realtime to shared_preload_libraries in postgresql.conf and restart PostgreSQL."),
            ),
            Self::EmptyTopic => {
                (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "topic must not be empty".into(), None)
            }
            Self::PayloadType(t) => (
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("payload must be jsonb or bytea, not {t}"),
                None,
            ),
            Self::NullPayload => {
                (PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "payload must not be null".into(), None)
            }
            Self::Prepare => (
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that has queued realtime messages".into(),
                None,
            ),
            Self::TooManyBackends(n) => (
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!("pg_realtime tracks at most {n} concurrent backends"),
                Some("Lower max_connections."),
            ),
            Self::SnapshotIsolation => (
                PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
                "realtime._poll must run in a READ COMMITTED transaction".into(),
                None,
            ),
            Self::UnknownExtension(e) => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("extension must be 'broadcast', 'presence' or 'postgres_changes', not '{e}'"),
                None,
            ),
            Self::PrivateSendDenied(topic) => (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("You do not have permissions to write to this Channel topic: {topic}"),
                Some("Private channels obey the INSERT policies on realtime.messages (extension 'broadcast')."),
            ),
            Self::SendFailed(message) => {
                (PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("checking the send's policies failed: {message}"), None)
            }
            Self::NotOwner(table) => {
                (PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {table}"), None)
            }
        }
    }

    /// The error's message, for callers that report it as a WARNING instead.
    pub fn message(&self) -> String {
        self.parts().1
    }

    pub fn report(self) -> ! {
        let (code, msg, hint) = self.parts();
        match hint {
            Some(h) => ErrorReport::new(code, msg, "pg_realtime")
                .set_hint(h)
                .report(PgLogLevel::ERROR),
            None => ErrorReport::new(code, msg, "pg_realtime").report(PgLogLevel::ERROR),
        }
        unreachable!("ERROR does not return")
    }
}
