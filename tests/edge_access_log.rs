//! The JSON access log: one line per request with the CMCD keys a player sent (query and
//! headers), never the token; and the per-protocol connection gauge.

mod common;

use common::*;

#[test]
fn access_log_lines_carry_cmcd_and_no_token() {
    let site = Site::new("access-log");
    let edge = site.start();
    let token = site.sign("/v/abc/*", &[]);
    let cmcd = percent_encoding::utf8_percent_encode(
        r#"br=3200,bl=21300,ot=v,sid="6e2fb550-c457-11e9",su"#,
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let url = site.url(&format!(
        "/v/abc/720p/seg_000.m4s?CMCD={cmcd}&{}",
        estuary_common::token::query_pair(&token)
    ));
    let (s, _) = curl_head(&[
        "-A",
        "TestPlayer/1.0",
        "-H",
        "CMCD-Request: mtp=25400",
        "-H",
        "CMCD-Session: st=v",
        &url,
    ]);
    assert_eq!(s, 200);
    let (s, _) = curl_head(&[&site.url("/pub/missing.m4s")]);
    assert_eq!(s, 404);

    // The writer thread flushes as soon as its queue is empty; give it a moment.
    let lines = edge.access_log_json(2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let seg = &lines[0];
    assert_eq!(seg["path"], "/v/abc/720p/seg_000.m4s");
    assert_eq!(seg["status"], 200);
    assert_eq!(seg["bytes"], 700_000);
    assert_eq!(seg["method"], "GET");
    assert_eq!(seg["protocol"], "h1");
    assert_eq!(seg["user_agent"], "TestPlayer/1.0");
    assert_eq!(seg["complete"], true);
    assert_eq!(seg["cmcd"]["br"], 3200);
    assert_eq!(seg["cmcd"]["bl"], 21300);
    assert_eq!(seg["cmcd"]["ot"], "v");
    assert_eq!(seg["cmcd"]["sid"], "6e2fb550-c457-11e9");
    assert_eq!(seg["cmcd"]["su"], true);
    assert_eq!(seg["cmcd"]["mtp"], 25400);
    assert_eq!(seg["cmcd"]["st"], "v");
    assert_eq!(lines[1]["status"], 404);
    assert!(lines[1].get("cmcd").is_none());
    let raw = edge.access_log();
    assert!(!raw.contains("hmac") && !raw.contains("token"), "{raw}");
}

#[test]
fn open_connections_are_counted_by_protocol() {
    let site = Site::new("conn-gauge");
    let edge = site.start();
    let held = std::net::TcpStream::connect(site.http).expect("connect");
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = edge.metric("estuary_edge_open_connections", &["protocol=\"h1\""]);
        if seen >= 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, 1.0);
    drop(held);
    for _ in 0..100 {
        seen = edge.metric("estuary_edge_open_connections", &["protocol=\"h1\""]);
        if seen == 0.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, 0.0);
    // A TLS connection that never finishes its handshake is counted while it holds a slot.
    let half_open = std::net::TcpStream::connect(site.https).expect("connect");
    let handshaking = || {
        edge.metric(
            "estuary_edge_open_connections",
            &["protocol=\"tls-handshake\""],
        )
    };
    for _ in 0..100 {
        seen = handshaking();
        if seen >= 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, 1.0);
    drop(half_open);
    for _ in 0..100 {
        seen = handshaking();
        if seen == 0.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, 0.0);
}

#[test]
fn queued_lines_are_written_before_exit() {
    let site = Site::new("access-log-exit");
    let mut edge = site.start();
    let n = 300;
    for _ in 0..n {
        assert_eq!(
            http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
            200
        );
    }
    // At once: the lines of the last requests are still queued, not yet written.
    edge.signal("TERM");
    assert!(
        edge.wait_exit(std::time::Duration::from_secs(20)),
        "no exit"
    );
    let log = edge.access_log();
    let lines = log.lines().filter(|l| l.contains("/pub/hello.txt")).count();
    assert_eq!(lines, n, "{} of {n} lines written before exit", lines);
}
