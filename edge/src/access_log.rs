//! The JSON access log: one line per request, written by one task so that serving never waits
//! on the log's disk. When the writer falls behind, lines are dropped and counted rather than
//! slowing players down.

use std::io::Write;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessEntry {
    /// RFC 3339 time the request arrived (UTC).
    pub time: String,
    pub client: String,
    pub method: String,
    /// The normalized path, without any token.
    pub path: String,
    pub status: u16,
    /// Body bytes handed to the connection.
    pub bytes: u64,
    /// Seconds from request head to the last body byte handed to the connection.
    pub duration: f64,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Why the request was refused, when it was (for example a token rejection reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Whether the whole body was handed over (false when the client went away first).
    pub complete: bool,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub cmcd: serde_json::Map<String, serde_json::Value>,
}

/// The sending side of the access log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<AccessEntry>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off(dropped: IntCounter) -> Self {
        Self { tx: None, dropped }
    }

    /// Starts the writer task for `target` (`"stdout"` or a file path to append to).
    pub fn start(target: &str, dropped: IntCounter) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<AccessEntry>(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Some(entry) = rx.blocking_recv() {
                    let mut next = Some(entry);
                    while let Some(e) = next.take() {
                        if serde_json::to_writer(&mut buf, &e).is_ok() {
                            buf.push(b'\n');
                        }
                        if buf.len() < 60 * 1024 {
                            next = rx.try_recv().ok();
                        }
                    }
                    if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                        // A broken log destination must not stop serving; lines are lost.
                    }
                    buf.clear();
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            dropped,
        })
    }

    /// Whether lines are written at all (so callers can skip building them).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line; drops it (and counts) when the writer is behind.
    pub fn log(&self, entry: AccessEntry) {
        if let Some(tx) = &self.tx
            && tx.try_send(entry).is_err()
        {
            self.dropped.inc();
        }
    }
}

/// Formats a time as RFC 3339 in UTC with milliseconds, without a date-time dependency.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
