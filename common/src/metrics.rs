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

/// Unwraps a metric's creation or registration. Both fail only on a malformed or duplicate
/// name, fixed in the code that registers it: a programming error, caught by the first test
/// that builds the service's metrics.
pub fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

/// A registry whose every series carries the constant `labels` (for example the node's id
/// and site); none when `labels` is empty.
pub fn registry(labels: &[(&str, &str)]) -> prometheus::Registry {
    let labels = (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    });
    must(prometheus::Registry::new_custom(None, labels))
}

/// Registers every collector in `registry` (see [`must`]).
pub fn register_all(
    registry: &prometheus::Registry,
    collectors: impl IntoIterator<Item = Box<dyn prometheus::core::Collector>>,
) {
    for c in collectors {
        must(registry.register(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labelled_registry_labels_every_series() {
        let r = registry(&[("node", "edge-1"), ("site", "lab")]);
        let c = must(prometheus::IntCounter::new("estuary_test_total", "A test."));
        register_all(
            &r,
            [Box::new(c.clone()) as Box<dyn prometheus::core::Collector>],
        );
        c.inc();
        let text = encode(&r);
        // The labels come in no fixed order.
        let line = text
            .lines()
            .find(|l| l.starts_with("estuary_test_total{"))
            .unwrap_or_default();
        assert!(
            line.ends_with("} 1")
                && line.contains("node=\"edge-1\"")
                && line.contains("site=\"lab\""),
            "{text}"
        );
        let plain = registry(&[]);
        register_all(
            &plain,
            [Box::new(c) as Box<dyn prometheus::core::Collector>],
        );
        assert!(encode(&plain).contains("estuary_test_total 1"));
    }
}
