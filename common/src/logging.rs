//! Structured JSON logs on standard error, one object a line, filtered by `RUST_LOG`
//! (default `info`, with hickory's crates at `warn`: hickory-server logs every DNS query at
//! `info`, which would cost the geo-DNS most of its time and fill the log; and rustls at
//! `error`: its warnings only describe what a peer sent, such as an IP address or an illegal
//! name as SNI).
//!
//! What a client can make a library log is bounded: warnings and errors from outside
//! Estuary's own crates pass at most [`LIBRARY_LINES_PER_SECOND`] a second (with a burst of
//! [`LIBRARY_LINES_BURST`]), and a line longer than [`MAX_LINE_BYTES`] is replaced by a short
//! line that says so and keeps its start.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter without `RUST_LOG`.
pub const DEFAULT_FILTER: &str =
    "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn,rustls=error";

/// Longest log line written as it is.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Sustained rate of warnings and errors from libraries (rustls, quinn, h3, hyper, ...).
pub const LIBRARY_LINES_PER_SECOND: f64 = 10.0;
/// Burst of warnings and errors from libraries.
pub const LIBRARY_LINES_BURST: f64 = 50.0;

/// A token bucket: a pure function of the time it is given.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes a token at `now`; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether an event from outside Estuary at warning level or above may be written now.
fn library_line_allowed(meta: &tracing::Metadata<'_>, bucket: &Mutex<TokenBucket>) -> bool {
    if *meta.level() > tracing::Level::WARN || meta.target().starts_with("estuary") {
        return true;
    }
    // Events from the `log` crate (rustls, quinn) have the target "log" here.
    bucket
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now())
}

/// Standard error, with each line bounded to [`MAX_LINE_BYTES`].
struct BoundedStderr;

impl Write for BoundedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole line per call.
        if buf.len() <= MAX_LINE_BYTES {
            std::io::stderr().write_all(buf)?;
        } else {
            std::io::stderr().write_all(&bounded_line(buf))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The line that stands for an overlong one: valid JSON, with the length and the start.
fn bounded_line(line: &[u8]) -> Vec<u8> {
    let start = String::from_utf8_lossy(&line[..line.len().min(512)]).into_owned();
    let mut out = serde_json::json!({
        "level": "WARN",
        "message": "A log line was too long and was cut to its start.",
        "bytes": line.len(),
        "start": start,
        "target": "estuary_common::logging",
    })
    .to_string()
    .into_bytes();
    out.push(b'\n');
    out
}

/// Sets up JSON logging for the process. Calling it twice is harmless.
pub fn init_json() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let bucket = Mutex::new(TokenBucket::new(
        LIBRARY_LINES_PER_SECOND,
        LIBRARY_LINES_BURST,
    ));
    let limit = tracing_subscriber::filter::filter_fn(move |meta| {
        !meta.is_event() || library_line_allowed(meta, &bucket)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_writer(|| BoundedStderr);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::Layer::with_filter(fmt, limit))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let mut b = TokenBucket::new(10.0, 3.0);
        let t0 = Instant::now();
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(160)));
        assert!(!b.take(t0 + Duration::from_millis(170)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn an_overlong_line_becomes_a_short_json_line() {
        let long = format!("{{\"message\":\"{}\"}}\n", "x".repeat(60_000));
        let out = bounded_line(long.as_bytes());
        assert!(out.len() < 1024);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["bytes"], long.len());
    }
}
