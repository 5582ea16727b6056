//! The Estuary edge node: serves pre-positioned HLS/DASH content over HTTP/1.1, HTTP/2 and
//! HTTP/3 with signed URLs, metrics and an access log.
//!
//! [`handler`] holds the protocol-agnostic request logic (phases: parse, authorize, lookup,
//! respond, log); [`server`] is the network shell around it; [`path`], [`content_type`] and
//! [`cmcd`] are pure helpers; [`store`] serves files from memory maps.

pub mod access_log;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod cmcd;
pub mod config;
pub mod content_type;
pub mod cork;
pub mod digest;
pub mod disk_space;
pub mod eviction;
pub mod fill;
pub mod fill_core;
#[cfg(test)]
mod fill_harness;
pub mod freshness;
pub mod h3_budget;
pub mod h3_resets;
pub mod handler;
pub mod metrics;
pub mod path;
pub mod plan;
pub mod prepos;
pub mod purges;
pub mod server;
pub mod slice;
pub mod sliced;
pub mod store;
pub mod upstream;

pub use config::EdgeConfig;
pub use server::run;
