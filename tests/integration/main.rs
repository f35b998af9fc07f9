//! Integration tests: the real `streamlog` binary, a real WebSocket client, loopback only.

// Helpers for every boundary are kept even while no test of this crate uses one.
#[allow(dead_code)]
mod support;

mod auth;
mod chaos;
mod cli;
mod datasets;
mod delivery;
mod durability;
mod errors;
mod frames;
mod heartbeat;
mod history;
mod hostile;
mod limits;
mod loadtool;
mod operations;
mod replay;
mod resume;
mod retention;
mod simulate;
mod startup;
mod tls;
