//! streamlog: a persistent event-log streaming server.
//!
//! Every event is appended to a durable log, indexed by channel, *before* it is fanned out
//! to WebSocket subscribers. Every event carries a cursor (its `seq`), so a client that
//! drops resumes exactly where it left off, and history can be read or replayed.
//!
//! # Data flow
//!
//! ```text
//! http / ws session ─▶ publish ─▶ log (append, durable) ─▶ fanout ─▶ filter ─▶ encode ─▶ socket
//!                                       ▲                      │
//!                                       └── resume / catch-up ◀┘  (a lagging reader reads the log)
//!                                       └── replay, dataset export (readers of recorded ranges)
//! ```
//!
//! # Code map
//!
//! - `main.rs` — the `streamlog` command line: `serve`, and the client subcommands.
//! - [`client`] — the client library the subcommands share: HTTP and WebSocket (TLS for
//!   `https://`), `tail`.
//! - [`loadtest`] — `streamlog bench`, the load tool run against a local server; decodes
//!   every frame mode on the client side.
//! - [`config`] — the one typed `Config`: defaults, TOML, `STREAMLOG_*` overrides, validation;
//!   each file section's keys and defaults in `config/sections.rs`.
//! - [`server`] — wiring and lifecycle (bind, serve, graceful shutdown).
//! - [`app`] — the state shared by routes and sessions.
//! - [`event`] — channel names and patterns, `NewEvent` (validated input), `Event` (stored).
//! - [`publish`] — the only write path: parse and validate bodies (batch limits enforced while
//!   reading), append.
//! - [`log`] — the `EventLog` trait; `log/sled/` is the embedded engine, the only code
//!   that touches sled; `log/codec.rs` defines the bytes (see `storage-format.md`).
//! - [`fanout`] — channel registry and per-connection bounded queues, lag detection; groups
//!   go out in pulses (`pulse.rs`, `delivery.coalesce_ms`), a channel's events of a pulse as
//!   one shared run when they are in no other channel (`run.rs`).
//! - [`batching`] — `[[high_frequency]]` rules: a channel's live events coalesced into
//!   shared batches.
//! - [`filter`] — subscription filters.
//! - [`protocol`] — client and server messages and their encodings (JSON, MessagePack,
//!   gzip, `batch`, `delta`), encoded once and cached; no IO.
//! - [`ws`] — the WebSocket gateway: handshake checks (origin, token, bans, connection
//!   slots), upgrade, reader task, session loop (rate limit, heartbeat, token expiry),
//!   subscriptions, replays.
//! - [`http`] — REST routes: health, publish, history, datasets.
//! - [`datasets`] — sealed datasets on pinned seq lists: statistics, export, anonymization.
//! - [`auth`] — credentials (JWT) to `Principal`, and what a principal may do; the only
//!   code that touches jsonwebtoken.
//! - [`rate_limit`] — the per-connection token bucket on client messages and the per-user
//!   one on HTTP publish requests; owns governor.
//! - [`bans`] — clients refused at the handshake for a while after flooding.
//! - [`tls`] — rustls: the built-in TLS server's configuration and a listener of finished
//!   handshakes, the client subcommands' configuration (system roots, `--ca-cert`), the
//!   process's crypto provider.
//! - [`simulate`] — simulated domain traffic (competitions, agent statuses, curricula,
//!   training data): `world.rs` (with `world/catalog.rs`, `world/competition.rs`) is the
//!   pure seeded generator, `mod.rs` publishes it paced over HTTP (`streamlog simulate`),
//!   `demo.rs` feeds it into the server's own log (`serve --demo`).
//! - [`error`] — `ApiError`, the one mapping of failures to HTTP and protocol errors.
//! - `proptests.rs` — property tests of the parsers of client input (`fuzz/` holds the
//!   cargo-fuzz targets for the same parsers, outside the workspace).

pub mod app;
pub mod auth;
pub mod bans;
pub mod batching;
pub mod client;
pub mod config;
pub mod datasets;
pub mod error;
pub mod event;
pub mod fanout;
pub mod filter;
pub mod http;
pub mod loadtest;
pub mod log;
pub mod metrics;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod publish;
pub mod rate_limit;
pub mod server;
pub mod simulate;
pub mod tls;
pub mod ws;
