//! Structured JSON logs on standard error, one object a line, filtered by `RUST_LOG`
//! (default `info`, with hickory's crates at `warn`: hickory-server logs every DNS query at
//! `info`, which would cost the geo-DNS most of its time and fill the log).

use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn";

/// Sets up JSON logging for the process. Calling it twice is harmless.
pub fn init_json() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
