//! What crosses Estuary's service boundaries: the signed-URL token format that other programs
//! mint, the `asset.json` integrity manifest of packaged assets, the TLS set-up (one crypto provider for the process), and the metrics and logging
//! set-up every service shares, the descriptor-table sizing every service does at start, and
//! the listener limits and serve loop every service's TCP listeners share.
//! Nothing here does network IO of its own.

pub mod api;
pub mod asset;
pub mod config;
pub mod cp;
pub mod fds;
pub mod http;
pub mod http_semantics;
pub mod key_id;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod packaging;
pub mod service;
pub mod signing;
pub mod tls;
pub mod token;

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
