//! Protective limits: oversized heads (431), slowloris, the connection cap, and HTTP/2 Rapid
//! Reset (CVE-2023-44487) answered with GOAWAY while other clients are unaffected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn oversized_heads_get_431() {
    let mut site = Site::new("limits-431");
    site.extra = "[limits]\nmax_header_bytes = 8192\nmax_headers = 32\n".into();
    let _edge = site.start();
    let big = "a".repeat(20_000);
    let (status, _, _) = raw_request(
        site.http,
        &format!(
            "GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        ),
    )
    .expect("request");
    assert_eq!(status, 431);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, _) = raw_request(
        site.http,
        &format!("GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"),
    )
    .expect("request");
    assert_eq!(status, 431);
    // A normal request still works.
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
}

#[test]
fn slowloris_connections_are_closed() {
    let mut site = Site::new("limits-slowloris");
    site.extra = "[limits]\nheader_read_timeout = \"1s\"\n".into();
    let edge = site.start();
    let mut s = TcpStream::connect(site.http).expect("connect");
    s.write_all(b"GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    // The test's own bound; the server is configured to give up after 1 s.
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(n) => {
            // Closed, possibly after a 408.
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "the server did not close a slow connection: {e}"
        ),
    }
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
    drop(edge);
}

#[test]
fn the_connection_cap_holds_further_clients_back() {
    let mut site = Site::new("limits-conns");
    site.extra = "[limits]\nmax_connections = 2\nheader_read_timeout = \"60s\"\n".into();
    let _edge = site.start();
    let hold1 = TcpStream::connect(site.http).expect("connect");
    let hold2 = TcpStream::connect(site.http).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    // A third client is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(site.http).expect("connect");
    third
        .write_all(b"GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    assert!(
        third.read(&mut buf).is_err(),
        "served beyond the connection cap"
    );
    // When one of the two goes away, the third is served.
    drop(hold1);
    third
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let n = third.read(&mut buf).expect("served after a slot freed");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(hold2);
}

#[test]
fn rapid_reset_gets_goaway_and_others_are_served() {
    let mut site = Site::new("limits-rapid-reset");
    site.extra = "[limits]\nh2_max_pending_reset_streams = 20\n".into();
    let _edge = site.start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/h2_rapid_reset.py"
    );
    let out = run(Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(site.http.port().to_string())
        .arg("5000"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 11 is ENHANCE_YOUR_CALM; any GOAWAY before all 5000 streams were sent is a defence.
    assert!(
        stdout.starts_with("goaway") || stdout.starts_with("closed"),
        "{stdout}"
    );
    assert!(!stdout.starts_with("survived"), "{stdout}");
    // Other clients are unaffected, over HTTP/2 too.
    let (s, _) = curl_head(&["--http2-prior-knowledge", &site.url("/pub/hello.txt")]);
    assert_eq!(s, 200);
}
