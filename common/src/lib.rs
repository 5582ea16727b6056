//! What crosses Estuary's service boundaries, and the shell every service shares. Pure: the
//! signed-URL token format other programs mint, the `asset.json` integrity manifest and its
//! signature, the wire types of the control plane and its operator API, the rules written
//! once (asset and key ids, the ladder, ranges and conditionals). The shared IO shell, and
//! nothing else with IO: the service lifecycle (`service`), the listeners' serve loop
//! (`listener`), the one outbound HTTP client (`http`) and the heartbeat loop (`cp`); with
//! the TLS, metrics, logging and descriptor-table set-up they use.

pub mod api;
pub mod asset;
pub mod chat;
pub mod config;
pub mod cp;
pub mod fds;
pub mod http;
pub mod http_semantics;
pub mod key_id;
pub mod listener;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod packaging;
pub mod page;
pub mod parked;
pub mod service;
pub mod signing;
pub mod tls;
pub mod token;
pub mod ws;

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
