//! The origin the caching servers fill from: serves the bench's content folder over HTTP/1.1,
//! `/slow/...` paced at a fixed rate (10 MiB/s by default) and everything else at full speed,
//! and writes one access-log line per request, so that upstream fetches can be counted.
//!
//! nginx cannot stand in for the slow part: its `limit_rate` lets a whole second's worth of
//! bytes through at once (10 MB at `limit_rate 10m`), so a 2 MB body left it in about 2 ms and
//! a stampede of clients never overlapped the fill. Pacing every 16 KiB does.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The URL prefix of the paced part.
pub const SLOW_PREFIX: &str = "/slow";

/// Bytes written per step of the paced sender.
const PACE_STEP: usize = 16 * 1024;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A running origin; it stops when the runtime it was started on shuts down.
pub struct Origin {
    /// The access log, one line per request.
    pub log: PathBuf,
}

struct State {
    root: PathBuf,
    bytes_per_second: f64,
    log: Mutex<std::fs::File>,
}

/// Starts the origin on `addr`, serving `root`, on the current tokio runtime.
pub async fn start(
    addr: SocketAddr,
    root: &Path,
    bytes_per_second: f64,
    log: &Path,
) -> anyhow::Result<Origin> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("the origin cannot listen on {addr}"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let state = Arc::new(State {
        root: root.to_owned(),
        bytes_per_second,
        log: Mutex::new(file),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let _ = serve_connection(stream, peer, &state).await;
            });
        }
    });
    Ok(Origin {
        log: log.to_owned(),
    })
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    user_agent: String,
    via: String,
    close: bool,
}

fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    let version = first.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut request = Request {
        method,
        path,
        user_agent: "-".to_owned(),
        via: "-".to_owned(),
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("user-agent") {
            request.user_agent = value.to_owned();
        } else if name.eq_ignore_ascii_case("via") {
            request.via = value.to_owned();
        } else if name.eq_ignore_ascii_case("connection") {
            request.close = value.eq_ignore_ascii_case("close");
        }
    }
    Some(request)
}

/// The file a request path names, and whether it is paced; `None` for paths that try to leave
/// the content folder.
fn resolve(root: &Path, path: &str) -> Option<(PathBuf, bool)> {
    let (rest, slow) = match path.strip_prefix(SLOW_PREFIX) {
        Some(rest) if rest.starts_with('/') => (rest, true),
        _ => (path, false),
    };
    let rest = rest.strip_prefix('/')?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some((root.join(rest), slow))
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &State,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let Some(request) = parse_head(&head) else {
            stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        };
        let started = Instant::now();
        let body = match resolve(&state.root, &request.path) {
            Some((file, slow)) => tokio::fs::read(&file).await.ok().map(|b| (b, slow)),
            None => None,
        };
        let (status, sent) = match body {
            Some((body, slow)) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nServer: estuary-bench-origin\r\nDate: {}\r\n\
                     Content-Type: {}\r\nContent-Length: {}\r\nCache-Control: public, max-age=3600\r\n\
                     Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nETag: \"{:x}\"\r\n\r\n",
                    http_date(SystemTime::now()),
                    content_type(&request.path),
                    body.len(),
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                let sent = if request.method == "HEAD" {
                    0
                } else if slow {
                    send_paced(&mut stream, &body, state.bytes_per_second).await
                } else {
                    stream.write_all(&body).await.map_or(0, |()| body.len())
                };
                (200, sent)
            }
            None => {
                stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nServer: estuary-bench-origin\r\n\
                          Cache-Control: no-store\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await?;
                (404, 0)
            }
        };
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = format!(
            "{unix:.3} {peer} \"{} {}\" {status} {sent} {:.3} \"{}\" \"{}\"\n",
            request.method,
            request.path,
            started.elapsed().as_secs_f64(),
            request.user_agent,
            request.via
        );
        if let Ok(mut log) = state.log.lock() {
            let _ = log.write_all(line.as_bytes());
        }
        if request.close {
            return Ok(());
        }
    }
}

/// Writes `body` no faster than `bytes_per_second`; returns the bytes written (fewer if the
/// client went away).
async fn send_paced(stream: &mut TcpStream, body: &[u8], bytes_per_second: f64) -> usize {
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    for piece in body.chunks(PACE_STEP) {
        let due = start + Duration::from_secs_f64(sent as f64 / bytes_per_second);
        tokio::time::sleep_until(due).await;
        if stream.write_all(piece).await.is_err() {
            return sent;
        }
        sent += piece.len();
    }
    sent
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("m4s") => "video/iso.segment",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// An IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::report::civil_date(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1).clamp(0, 11) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How many requests for exactly `path` the origin's access log holds.
pub fn count_fetches(log: &Path, path: &str) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let needle = format!(" {path}\" ");
    Ok(text.lines().filter(|l| l.contains(&needle)).count())
}

/// Lines in the origin's access log so far (to see whether a run made any upstream request).
pub fn log_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let r =
            parse_head("GET /slow/a.m4s?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nVia: 1.1 v")
                .expect("parse");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/slow/a.m4s");
        assert_eq!(r.user_agent, "t");
        assert_eq!(r.via, "1.1 v");
        assert!(!r.close);
        assert!(parse_head("GET /a HTTP/1.0").is_some_and(|r| r.close));
        assert!(parse_head("GET /a SPDY/3").is_none());
        assert!(parse_head("").is_none());
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/c");
        assert_eq!(
            resolve(root, "/slow/cold/a.m4s"),
            Some((PathBuf::from("/c/cold/a.m4s"), true))
        );
        assert_eq!(
            resolve(root, "/vod/x.m3u8"),
            Some((PathBuf::from("/c/vod/x.m3u8"), false))
        );
        assert_eq!(
            resolve(root, "/slowpoke"),
            Some((PathBuf::from("/c/slowpoke"), false))
        );
        assert_eq!(resolve(root, "/slow/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a//b"), None);
        assert_eq!(resolve(root, "/"), None);
        assert_eq!(resolve(root, "relative"), None);
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn counts_fetches_of_one_path() {
        let dir = std::env::temp_dir().join(format!("estuary-origin-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let log = dir.join("a.log");
        std::fs::write(
            &log,
            "1.0 127.0.0.1:1 \"GET /slow/a.m4s\" 200 5 0.1 \"-\" \"-\"\n\
             1.0 127.0.0.1:2 \"GET /slow/a.m4s\" 200 5 0.1 \"-\" \"-\"\n\
             1.0 127.0.0.1:3 \"GET /slow/a.m4s.x\" 200 5 0.1 \"-\" \"-\"\n",
        )
        .expect("write");
        assert_eq!(count_fetches(&log, "/slow/a.m4s").ok(), Some(2));
        assert_eq!(log_lines(&log), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
