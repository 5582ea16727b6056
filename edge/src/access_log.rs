//! The JSON access log: one line per request. A request formats its line into a scratch
//! buffer of its worker thread and appends it to one bounded in-memory batch; a writer thread
//! wakes on a timer (or when the batch passes a high-water mark), takes the whole batch and
//! writes it with one call. A request therefore never waits on the log's disk and never wakes
//! a thread; when the batch is full, the line is dropped and counted rather than slowing
//! players down. Dropping the last handle flushes what is queued and stops the writer.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use serde::{Serialize, Serializer};

/// How often the writer takes the batch: the longest a line waits before it is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// The most bytes of lines queued at once (about 16,000 lines of 250 bytes); beyond it lines
/// are dropped and counted.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// One access-log line, borrowed from the request it describes.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// RFC 3339 time the request arrived (UTC).
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: &'a str,
    /// The normalized path, without any token.
    pub path: &'a str,
    pub status: u16,
    /// Body bytes handed to the connection.
    pub bytes: u64,
    /// Seconds from request head to the last body byte handed to the connection.
    pub duration: f64,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// Why the request was refused, when it was (for example a token rejection reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Whether the whole body was handed over (false when the client went away first).
    pub complete: bool,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub cmcd: &'a serde_json::Map<String, serde_json::Value>,
}

fn serialize_time<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*time))
}

/// The sending side of the access log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    writer: Option<Arc<Writer>>,
    dropped: IntCounter,
}

/// The bounded batch of formatted lines the requests append to and the writer takes.
#[derive(Debug)]
struct Queue {
    lines: Mutex<Vec<u8>>,
    /// The most bytes queued at once.
    capacity: usize,
    /// Appending past this many bytes wakes the writer before its timer does.
    high_water: usize,
    /// Set when the queue passed the high-water mark since the writer last looked.
    wake: AtomicBool,
    stop: AtomicBool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves whole lines behind: appends are all-or-nothing.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer thread and its queue; the thread flushes and exits when this is dropped.
#[derive(Debug)]
struct Writer {
    queue: Arc<Queue>,
    thread: Thread,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    fn spawn(
        mut out: Box<dyn Write + Send>,
        capacity: usize,
        high_water: usize,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            lines: Mutex::new(Vec::with_capacity(64 * 1024)),
            capacity,
            high_water,
            wake: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let q = Arc::clone(&queue);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Two buffers change places: the requests fill one while this writes the
                // other, so after warming up nothing is allocated.
                let mut batch = Vec::with_capacity(64 * 1024);
                let mut next = Instant::now() + interval;
                loop {
                    // Sleep until the timer, the high-water mark or the stop, whichever comes
                    // first (a spurious wake-up from `park_timeout` sleeps again).
                    loop {
                        if q.stop.load(Ordering::Acquire) || q.wake.swap(false, Ordering::AcqRel) {
                            break;
                        }
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        std::thread::park_timeout(next - now);
                    }
                    next = Instant::now() + interval;
                    // Read before taking the batch, so that the last batch holds every line
                    // appended before the stop.
                    let stopping = q.stop.load(Ordering::Acquire);
                    std::mem::swap(&mut *q.lock(), &mut batch);
                    if !batch.is_empty() {
                        // A broken log destination must not stop serving; lines are lost.
                        let _ = out.write_all(&batch).and_then(|()| out.flush());
                        batch.clear();
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Self {
            queue,
            thread: handle.thread().clone(),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Appends one whole line; false when it does not fit.
    fn push(&self, line: &[u8]) -> bool {
        let mut lines = self.queue.lock();
        let before = lines.len();
        if before + line.len() > self.queue.capacity {
            return false;
        }
        lines.extend_from_slice(line);
        let wake = before < self.queue.high_water && lines.len() >= self.queue.high_water;
        drop(lines);
        if wake {
            self.queue.wake.store(true, Ordering::Release);
            self.thread.unpark();
        }
        true
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.thread.unpark();
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

thread_local! {
    /// Each worker thread's line being formatted, reused from request to request.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off(dropped: IntCounter) -> Self {
        Self {
            writer: None,
            dropped,
        }
    }

    /// Starts the writer thread for `target` (`"stdout"` or a file path to append to).
    pub fn start(target: &str, dropped: IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        Self::to_writer(out, QUEUE_BYTES, QUEUE_BYTES / 4, FLUSH_INTERVAL, dropped)
    }

    /// Starts the writer thread for any destination: at most `capacity` bytes queued, the
    /// writer woken every `interval` and when the queue passes `high_water` bytes.
    fn to_writer(
        out: Box<dyn Write + Send>,
        capacity: usize,
        high_water: usize,
        interval: Duration,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        Ok(Self {
            writer: Some(Arc::new(Writer::spawn(
                out, capacity, high_water, interval,
            )?)),
            dropped,
        })
    }

    /// Whether lines are written at all (so callers can skip gathering them).
    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Queues one line; drops it (and counts) when the queue is full.
    pub fn log(&self, entry: &AccessEntry<'_>) {
        let Some(writer) = &self.writer else {
            return;
        };
        let queued = SCRATCH.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, entry).is_err() {
                return true;
            }
            line.push(b'\n');
            let queued = writer.push(line);
            // A rare huge line (a long CMCD header) should not pin its memory to the thread.
            if line.capacity() > 64 * 1024 {
                *line = Vec::new();
            }
            queued
        });
        if !queued {
            self.dropped.inc();
        }
    }
}

/// A time shown as RFC 3339 in UTC with milliseconds, without a date-time dependency.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self
            .0
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339(t).to_string()
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
    use std::time::UNIX_EPOCH;

    /// A destination the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("dropped_total", "dropped lines").expect("counter")
    }

    /// A log writing into a [`Sink`], with the given queue and timer.
    fn start(
        capacity: usize,
        high_water: usize,
        interval: Duration,
        dropped: IntCounter,
    ) -> (AccessLog, Sink) {
        let sink = Sink::default();
        let log = AccessLog::to_writer(
            Box::new(sink.clone()),
            capacity,
            high_water,
            interval,
            dropped,
        )
        .expect("start");
        (log, sink)
    }

    /// Waits until the writer has written something.
    fn wait_written(sink: &Sink) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing was written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn entry<'a>(
        path: &'a str,
        cmcd: &'a serde_json::Map<String, serde_json::Value>,
    ) -> AccessEntry<'a> {
        AccessEntry {
            time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            client: IpAddr::from([192, 0, 2, 7]),
            method: "GET",
            path,
            status: 200,
            bytes: 3072,
            duration: 0.00025,
            protocol: "h1",
            user_agent: Some("Player/1.0"),
            reason: None,
            complete: true,
            cmcd,
        }
    }

    #[test]
    fn lines_keep_their_format() {
        let (log, sink) = start(1 << 20, 1 << 20, Duration::from_secs(3600), counter());
        let mut cmcd = serde_json::Map::new();
        cmcd.insert("br".into(), 3200.into());
        log.log(&entry("/v/a.m3u8", &cmcd));
        log.log(&AccessEntry {
            user_agent: None,
            reason: Some("expired"),
            status: 403,
            ..entry("/v/b.m3u8", &serde_json::Map::new())
        });
        drop(log);
        assert_eq!(
            sink.text(),
            "{\"time\":\"2026-11-18T11:06:40.123Z\",\"client\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/v/a.m3u8\",\"status\":200,\"bytes\":3072,\"duration\":0.00025,\"protocol\":\"h1\",\"user_agent\":\"Player/1.0\",\"complete\":true,\"cmcd\":{\"br\":3200}}\n\
             {\"time\":\"2026-11-18T11:06:40.123Z\",\"client\":\"192.0.2.7\",\"method\":\"GET\",\"path\":\"/v/b.m3u8\",\"status\":403,\"bytes\":3072,\"duration\":0.00025,\"protocol\":\"h1\",\"reason\":\"expired\",\"complete\":true}\n"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_stopping_flushes_in_order() {
        let dropped = counter();
        let empty = serde_json::Map::new();
        let line_len = serde_json::to_vec(&entry("/v/000.m4s", &empty))
            .expect("json")
            .len()
            + 1;
        // Room for exactly ten lines, and a writer that only wakes when stopped.
        let (log, sink) = start(
            10 * line_len,
            usize::MAX,
            Duration::from_secs(3600),
            dropped.clone(),
        );
        let clone = log.clone();
        for i in 0..15 {
            clone.log(&entry(&format!("/v/{i:03}.m4s"), &empty));
        }
        assert_eq!(dropped.get(), 5);
        assert_eq!(
            sink.text(),
            "",
            "nothing is written before the timer or the stop"
        );
        drop(clone);
        assert_eq!(
            sink.text(),
            "",
            "a clone going away does not stop the writer"
        );
        drop(log);
        let paths: Vec<String> = sink
            .text()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                v["path"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("/v/{i:03}.m4s")).collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn lines_are_written_within_the_interval() {
        let (log, sink) = start(1 << 20, 1 << 20, Duration::from_millis(10), counter());
        log.log(&entry("/v/a.m4s", &serde_json::Map::new()));
        wait_written(&sink);
        assert_eq!(sink.text().lines().count(), 1);
    }

    #[test]
    fn the_high_water_mark_wakes_the_writer() {
        let (log, sink) = start(1 << 20, 1, Duration::from_secs(3600), counter());
        log.log(&entry("/v/a.m4s", &serde_json::Map::new()));
        wait_written(&sink);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
