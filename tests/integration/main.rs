//! Integration tests: the real `streamlog` binary, a real WebSocket client, loopback only.

mod support;

mod chaos;
mod cli;
mod datasets;
mod delivery;
mod durability;
mod errors;
mod history;
mod operations;
mod replay;
mod resume;
mod retention;
