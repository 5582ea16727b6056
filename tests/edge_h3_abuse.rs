//! HTTP/3 abuse: a Rapid Reset flood (streams opened and cancelled at once, CVE-2023-44487's
//! HTTP/3 counterpart) closes its own connection with H3_EXCESSIVE_LOAD and is counted, while
//! another connection is still served; a response the client cancels is logged and counted
//! with the bytes the edge handed over, not its size, and not as complete; a request with a
//! connection-specific field is malformed (RFC 9114 section 4.2) and its stream reset; a
//! client that acknowledges nothing (but pings) has its response and connection ended.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `tests/clients/h3_abuse.py` and returns its one line of output.
fn abuse(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_abuse.py");
    let out = run(Command::new("python3").arg(script).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !stdout.is_empty(),
        "h3_abuse.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One HTTP/3 GET on a new connection.
async fn h3_status(site: &Site, path: &str) -> u16 {
    let attempt = async {
        let mut h3 =
            estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert).await?;
        let r = h3.get(path).await?;
        anyhow::Ok(r.status.as_u16())
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("HTTP/3 request failed: {e:#}"),
        Err(_) => panic!("HTTP/3 request not answered within 15 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_closes_its_connection_only() {
    let site = Site::new("h3-rapid-reset");
    let edge = site.start();
    let port = site.https.port().to_string();
    // 2,000 cancelled streams on one connection: far past the default limit (20 within 10 s),
    // and a connection that survives them all is reported as "open".
    let verdict = tokio::task::spawn_blocking(move || {
        abuse(&["reset", "127.0.0.1", &port, "2000", "/pub/hello.txt", "5"])
    })
    .await
    .expect("join");
    // H3_EXCESSIVE_LOAD.
    assert_eq!(verdict, format!("closed {}", 0x107), "{}", edge.log());
    assert!(edge.metric("estuary_edge_h3_reset_flood_closes_total", &[]) >= 1.0);
    // Another connection is served.
    assert_eq!(h3_status(&site, "/pub/hello.txt").await, 200);
}

/// The access-log line of the `n`-th request for `path` (0-based), once it is written.
fn logged(edge: &EdgeProcess, path: &str, n: usize) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(line) = edge
            .access_log()
            .lines()
            .filter(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .nth(n)
        {
            return serde_json::from_str(line).expect("json");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no access-log line {n} for {path}: {}", edge.access_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_response_logs_the_bytes_sent_not_its_size() {
    let site = Site::new("h3-cancel");
    // Small enough for quinn to take whole before the client's cancellation arrives.
    std::fs::write(site.content.join("pub/seg.m4s"), pattern(700_000)).expect("write");
    let edge = site.start();
    let port = site.https.port().to_string();
    // First, the test can tell: a whole download is logged whole and complete.
    let mut h3 = estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
        .await
        .expect("connect");
    let whole = h3.get("/pub/big.mp4").await.expect("get");
    assert_eq!(whole.body.len(), 8_000_000);
    drop(h3);
    let entry = logged(&edge, "/pub/big.mp4", 0);
    assert_eq!(entry["bytes"], 8_000_000, "{entry}");
    assert_eq!(entry["complete"], true, "{entry}");
    // 8 MB asked for with 16 MiB windows, so flow control does not stop the edge early, and
    // cancelled at the first body bytes.
    let port2 = port.clone();
    let out = tokio::task::spawn_blocking(move || {
        abuse(&["cancel", "127.0.0.1", &port2, "/pub/big.mp4", "16777216"])
    })
    .await
    .expect("join");
    let received: u64 = out
        .strip_prefix("received ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(received > 0 && received < 8_000_000, "{out}");
    let entry = logged(&edge, "/pub/big.mp4", 1);
    assert_eq!(entry["complete"], false, "{entry}");
    let bytes = entry["bytes"].as_u64().expect("bytes");
    assert!(
        bytes < 4_000_000,
        "a cancelled 8 MB response logged {bytes} bytes: {entry}"
    );
    assert_eq!(
        edge.metric("estuary_edge_response_body_bytes_total", &["h3"]),
        (8_000_000 + bytes) as f64
    );
    // A response quinn took whole before the cancellation arrived is not complete either: the
    // client acknowledged only part of it.
    let out = tokio::task::spawn_blocking(move || {
        abuse(&["cancel", "127.0.0.1", &port, "/pub/seg.m4s", "16777216"])
    })
    .await
    .expect("join");
    assert!(out.starts_with("received "), "{out}");
    let entry = logged(&edge, "/pub/seg.m4s", 0);
    assert_eq!(entry["complete"], false, "{entry}");
}

#[test]
fn connection_specific_fields_make_an_http3_request_malformed() {
    let site = Site::new("h3-malformed");
    let _edge = site.start();
    let port = site.https.port().to_string();
    let answer = |case: &str| abuse(&["head", "127.0.0.1", &port, case]);
    // The test can tell: a correct head, and one with the only TE allowed, are answered.
    assert_eq!(answer("valid"), "status 200");
    assert_eq!(answer("te-trailers"), "status 200");
    // RFC 9114 section 4.2: malformed, so the stream is reset with H3_MESSAGE_ERROR.
    for case in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te-gzip",
        // Section 4.3: a pseudo-header field repeated, or after a regular field.
        "duplicate-path",
        "duplicate-method",
        "late-pseudo",
    ] {
        assert_eq!(answer(case), format!("reset {}", 0x10e), "{case}");
    }
}

#[test]
fn a_client_that_acknowledges_nothing_is_closed_at_the_idle_timeout() {
    let mut site = Site::new("h3-noack");
    // QUIC's idle timeout is the same 2 s, but the client's pings reset it forever: only the
    // edge's own bound on a stalled response, then the connection's watch, can close it.
    site.extra = "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n".into();
    let edge = site.start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_abuse.py");
    let mut client = Command::new("python3")
        .arg(script)
        .args(["noack", "127.0.0.1", &site.https.port().to_string()])
        .args(["/pub/big.mp4", "30"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 with aioquic");
    // The client keeps pinging for 30 s; the edge must let the connection go long before
    // (the test's own bound: 20 s), and say the response was not complete.
    let entry = logged(&edge, "/pub/big.mp4", 0);
    assert_eq!(entry["complete"], false, "{entry}");
    let mut open = 1.0;
    for _ in 0..200 {
        open = edge.metric("estuary_edge_open_connections", &["h3"]);
        if open == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(open, 0.0, "the stalled connection is still open");
}
