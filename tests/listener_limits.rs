//! Connections that take a slot and stay silent (no byte at all, a TLS handshake and then
//! nothing, half an HTTP/2 preface, an HTTP/2 connection that only answers pings) are closed
//! by the server after the configured time, so that a legitimate client is served while such
//! an attack holds every slot; and one client address cannot take more than its share.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Reads until the server closes the socket; panics if it is still open after `limit` (the
/// test's own bound, far above the configured timeouts).
fn assert_closed_by_server(s: &mut TcpStream, limit: Duration, what: &str) {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            // A 408 or a GOAWAY before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close {what}: {e}"),
        }
    }
}

/// Starts `idle_client.py` and waits for its "ready" line.
fn idle_client(mode: &str, addr: SocketAddr, wait_seconds: u32) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/idle_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(wait_seconds.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = Vec::new();
    let out = child.stdout.as_mut().expect("stdout");
    let mut byte = [0u8; 1];
    while out.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(String::from_utf8_lossy(&line), "ready", "{mode} client");
    child
}

fn client_result(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn silent_tcp_connections_are_closed_and_others_served() {
    let mut site = Site::new("listener-silent-tcp");
    site.extra = "[limits]\nmax_connections = 3\nfirst_byte_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n".into();
    let _edge = site.start();
    // Every slot taken: two sockets that never send a byte, one that stops inside the
    // HTTP/2 preface (protocol detection).
    let mut silent1 = TcpStream::connect(site.http).expect("connect");
    let mut silent2 = TcpStream::connect(site.http).expect("connect");
    let mut preface = TcpStream::connect(site.http).expect("connect");
    preface.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    // A legitimate request waits for a slot and is served once the server closes one.
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
    let limit = Duration::from_secs(20);
    assert_closed_by_server(&mut silent1, limit, "a silent connection");
    assert_closed_by_server(&mut silent2, limit, "a silent connection");
    assert_closed_by_server(&mut preface, limit, "half an HTTP/2 preface");
}

#[test]
fn tls_connections_silent_after_the_handshake_are_closed() {
    let mut site = Site::new("listener-silent-tls");
    site.extra = "[limits]\nmax_connections = 2\nfirst_byte_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n".into();
    let _edge = site.start();
    let attackers: Vec<Child> = (0..2).map(|_| idle_client("tls", site.https, 30)).collect();
    let (status, _) = curl_head(&["-k", &site.surl("/pub/hello.txt")]);
    assert_eq!(status, 200);
    for a in attackers {
        assert_eq!(client_result(a), "closed");
    }
}

#[test]
fn idle_http2_connections_are_closed() {
    let mut site = Site::new("listener-idle-h2");
    site.extra = "[limits]\nmax_connections = 2\nidle_timeout = \"2s\"\n".into();
    let _edge = site.start();
    // Each has had one request answered, then only acknowledges the server's pings.
    let attackers: Vec<Child> = (0..2).map(|_| idle_client("h2", site.https, 40)).collect();
    let (status, _) = curl_head(&["-k", "--http2", &site.surl("/pub/hello.txt")]);
    assert_eq!(status, 200);
    for a in attackers {
        assert_eq!(client_result(a), "closed");
    }
}

/// A TCP connection from another loopback address (Linux routes all of 127/8 to `lo`).
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind source");
        socket
            .connect(to)
            .await
            .expect("connect")
            .into_std()
            .expect("std")
    })
}

#[test]
fn one_address_cannot_take_more_than_its_share() {
    let mut site = Site::new("listener-per-ip");
    site.extra =
        "[limits]\nmax_connections_per_ip = 2\nfirst_byte_timeout = \"60s\"\nheader_read_timeout = \"60s\"\n".into();
    let _edge = site.start();
    let hold1 = connect_from([127, 0, 0, 2], site.http);
    let hold2 = connect_from([127, 0, 0, 2], site.http);
    std::thread::sleep(Duration::from_millis(300));
    let mut third = connect_from([127, 0, 0, 2], site.http);
    third.set_nonblocking(false).expect("blocking");
    // Closed at once by the server, long before any timeout (10 s by default).
    let _ = third.write_all(b"GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_closed_by_server(&mut third, Duration::from_secs(5), "a third connection");
    // Another address is served.
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
    drop((hold1, hold2));
}

/// The `[limits]` every other service's attack test runs with: three slots, one second to
/// the first byte and to a whole head.
const TIGHT: &str = "[limits]\nmax_connections = 3\nfirst_byte_timeout = \"1s\"\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n";

/// Takes every slot of the service at `addr` (a silent socket, a slowloris head that stops
/// halfway, a keep-alive connection left idle after one request), then checks that a
/// legitimate request to `path` is answered and that the server closes all three.
fn slots_held_by_silent_clients_come_back(addr: SocketAddr, path: &str) {
    let mut silent = TcpStream::connect(addr).expect("connect");
    let mut slowloris = TcpStream::connect(addr).expect("connect");
    slowloris
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-A: ").as_bytes())
        .expect("write");
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut buf = [0u8; 512];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = idle
        .read(&mut buf)
        .expect("an answer on the keep-alive connection");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 "), "{first}");
    let (status, _) = http_get_raw(addr, path).expect("a legitimate request is answered");
    assert_eq!(first[9..12], status.to_string(), "{first}");
    let limit = Duration::from_secs(20);
    assert_closed_by_server(&mut silent, limit, "a silent connection");
    assert_closed_by_server(&mut slowloris, limit, "a slowloris connection");
    assert_closed_by_server(&mut idle, limit, "an idle keep-alive connection");
}

#[test]
fn the_origin_closes_silent_and_slow_clients() {
    let mut origin = common::origin_site::OriginSite::new("listener-origin");
    origin.extra = TIGHT.into();
    let _service = origin.start();
    // The health endpoints are on the admin listener; any answer of the main one will do.
    slots_held_by_silent_clients_come_back(origin.http, "/v/missing/asset.json");
}

#[test]
fn the_control_plane_closes_silent_and_slow_clients() {
    let dir = TempDir::new("listener-control-plane");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{http}\"\n[database]\nurl = \"sqlite://{}\"\n[auth.operator_tokens]\nops = \"operator-token-0123456789\"\n{TIGHT}",
            dir.path().join("cp.db").display()
        ),
    )
    .expect("write config");
    let _service = start_service("control-plane", &config, http, dir.path());
    slots_held_by_silent_clients_come_back(http, "/healthz");
}

#[test]
fn steering_closes_silent_and_slow_clients() {
    let mut steering = common::steering_site::SteeringSite::new("listener-steering");
    steering.with_state_file(&serde_json::json!({
        "version": 1, "generated_at": 0, "sites": {}, "nodes": {}
    }));
    // The [limits] table follows the [steering] keys in the written file.
    steering.steering = format!("\n{TIGHT}");
    let _service = steering.start();
    slots_held_by_silent_clients_come_back(steering.http, "/healthz");
}
