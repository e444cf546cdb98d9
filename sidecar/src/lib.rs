//! pg-realtime-sidecar: a Supabase Realtime-compatible WebSocket server. Clients speak the
//! Phoenix protocol of `@supabase/realtime-js`; messages come from the pg_realtime extension's
//! queue (`realtime._poll`) and from other clients.
//!
//! Module map (each module's header states its invariants):
//! * [`config`] — CLI/env settings; [`app`] — shared state and router; `main.rs` — process
//!   lifecycle.
//! * [`server`] — the accept loop and HTTP/1.1 (hyper) with the header-read timeout;
//!   [`admission`] — connection caps, in all and per client address.
//! * `ws` — WebSocket upgrade and the reader/writer halves of a connection; `session` — the
//!   per-connection protocol state machine; `channel` — its channel table and join rules;
//!   `rest` — the REST broadcast endpoints, which queue through the database.
//! * `validate` — what client input may hold (NUL, storable JSON, ref lengths), checked where
//!   it enters; `limits` — sidecar-wide per-second rate limits.
//! * `codec` — serializers v1/v2; `auth` — JWT verification; `policies` — private-channel
//!   permissions from `realtime.messages` policies; `fanout` — topic registry and per-connection
//!   queues bounded in frames and bytes; [`queue`] — the Postgres reader; [`publisher`] — client
//!   messages to the other sidecars through Postgres; [`presence`] — cluster-wide presence;
//!   `db` — the pool for queries on a client's behalf; `batch_queue` — the bounded queue the
//!   publisher and the unsubscriber drain.
//! * [`filter`] — a `postgres_changes` entry read into a subscription spec; `changes` — those
//!   subscriptions in the database and delivery of their changes; [`unsubscriber`] — deletes a
//!   channel's subscription rows as soon as it ends.
//! * `error` — the catalogue of client-visible errors and close codes.
#![forbid(unsafe_code)]

pub mod admission;
pub mod app;
pub mod auth;
mod batch_queue;
mod changes;
mod channel;
// `pub` for the fuzz targets (sidecar/fuzz), whose checks decode and encode frames.
#[allow(clippy::len_without_is_empty)]
pub mod codec;
pub mod config;
mod db;
mod error;
mod fanout;
pub mod filter;
mod limits;
mod policies;
pub mod presence;
pub mod publisher;
pub mod queue;
mod rest;
pub mod server;
mod session;
pub mod unsubscriber;
mod validate;
mod ws;
