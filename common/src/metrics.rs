//! Prometheus set-up shared by every service: one registry per process, the text format.

use prometheus::{Encoder, TextEncoder};

/// The registry's metrics in the Prometheus text exposition format.
pub fn encode(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on IO; a metric family that cannot be encoded is skipped
    // by the encoder itself, so the error is only reported, not propagated.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "A metric family could not be encoded.");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Default histogram buckets for request durations, in seconds (100 µs to 10 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
