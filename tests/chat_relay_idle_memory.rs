//! Idle WebSockets cost the chat relay little: 3,000 connected devices that say nothing raise
//! its anonymous memory by at most 8 KiB each (the issue's target), and every one of them
//! still answers a ping afterwards.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::chat::ChatRelay;
use common::{KEY_HEX, rss_anon_kib};

fn token(user: &str) -> String {
    let claims = estuary_common::token::Claims {
        kid: "k1".into(),
        acl: format!("/chat/user/{user}"),
        exp: estuary_common::unix_now() + 3600,
        st: None,
        ip: None,
    };
    estuary_common::token::sign(&claims, &hex::decode(KEY_HEX).expect("key"))
}

/// A WebSocket opened by hand: the 101 read, nothing else.
fn open(relay: &ChatRelay, user: &str) -> TcpStream {
    let mut c = TcpStream::connect(relay.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        percent_encoding::utf8_percent_encode(&token(user), percent_encoding::NON_ALPHANUMERIC)
    );
    c.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).expect("read"), 1, "closed mid-head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// Sends a masked `{"type":"ping"}` text frame and reads the `pong` frame.
fn ping(c: &mut TcpStream) {
    let payload = br#"{"type":"ping"}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.write_all(&frame).expect("write ping");
    let mut head = [0u8; 2];
    c.read_exact(&mut head).expect("pong head");
    let mut body = vec![0u8; usize::from(head[1] & 0x7f)];
    c.read_exact(&mut body).expect("pong body");
    assert_eq!(
        (head[0], body.as_slice()),
        (0x81, &br#"{"type":"pong"}"#[..])
    );
}

#[test]
fn an_idle_websocket_costs_the_relay_at_most_8_kib() {
    let relay = ChatRelay::start(
        "chat-idle-memory",
        "[limits]\nmax_connections = 8000\nmax_connections_per_ip = 8000\nidle_timeout = \"5m\"\n",
    );
    // Warm up the runtime, the allocator's arenas and the relay's maps.
    drop(
        (0..300)
            .map(|i| open(&relay, &format!("w{i}")))
            .collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = relay.process().pid();
    let before = rss_anon_kib(pid);
    const N: usize = 3000;
    let mut conns: Vec<TcpStream> = (0..N).map(|i| open(&relay, &format!("u{i}"))).collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_anon_kib(pid);
    let per_conn = after.saturating_sub(before) as f64 / N as f64;
    println!("RssAnon {before} -> {after} KiB: {per_conn:.2} KiB per idle WebSocket");
    assert!(
        per_conn <= 8.0,
        "{N} idle WebSockets raised RssAnon by {} KiB: {per_conn:.2} KiB each",
        after - before
    );
    for c in conns.iter_mut().step_by(101) {
        ping(c);
    }
}
