//! Idle keep-alive connections cost the edge almost nothing: between requests an HTTP/1.1
//! connection is parked (no hyper buffers, no timers of its own), and a parked connection
//! serves its next request, pipelined ones included, as if it had never been parked.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// Sends `request` and reads one response (head and `Content-Length` body); returns the
/// status and the body.
fn exchange(conn: &mut TcpStream, request: &str) -> (u16, Vec<u8>) {
    conn.write_all(request.as_bytes()).expect("write");
    read_response(conn)
}

fn read_response(conn: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).expect("read head");
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).expect("read body");
    (status, body)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n")
}

/// Opens `n` connections that each make one request and stay open.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let (status, body) = exchange(&mut c, &get("/pub/hello.txt"));
            assert_eq!(status, 200);
            assert_eq!(body, b"hello\n");
            c
        })
        .collect()
}

#[test]
fn an_idle_keep_alive_connection_costs_at_most_4_kib() {
    let mut site = Site::new("idle-memory");
    site.extra =
        "[limits]\nmax_connections = 8000\nmax_connections_per_ip = 8000\nidle_timeout = \"5m\"\n"
            .into();
    let edge = site.start();
    // Warm up: the runtime's worker state, the allocator's arenas and the connection slab
    // grow to their working size.
    drop(open_idle(site.http, 500));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_anon_kib(edge.pid());
    const N: usize = 4000;
    let mut conns = open_idle(site.http, N);
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_anon_kib(edge.pid());
    let per_conn = (after.saturating_sub(before)) as f64 / N as f64;
    println!("RssAnon {before} -> {after} KiB: {per_conn:.2} KiB per idle connection");
    assert!(
        per_conn <= 4.0,
        "{N} idle connections raised RssAnon by {} KiB: {per_conn:.2} KiB each",
        after - before
    );
    // Every parked connection still serves.
    for c in conns.iter_mut().step_by(97) {
        let (status, body) = exchange(c, &get("/pub/hello.txt"));
        assert_eq!(status, 200);
        assert_eq!(body, b"hello\n");
    }
}

#[test]
fn a_parked_connection_serves_pipelined_and_split_requests() {
    let site = Site::new("idle-pipelined");
    let _edge = site.start();
    let mut c = TcpStream::connect(site.http).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let (status, _) = exchange(&mut c, &get("/pub/hello.txt"));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    // Three requests in one write: each answered, in order.
    let three = format!(
        "{}{}{}",
        get("/pub/hello.txt"),
        get("/pub/missing.txt"),
        get("/pub/hello.txt")
    );
    c.write_all(three.as_bytes()).expect("write");
    assert_eq!(read_response(&mut c), (200, b"hello\n".to_vec()));
    assert_eq!(read_response(&mut c).0, 404);
    assert_eq!(read_response(&mut c), (200, b"hello\n".to_vec()));
    // A request and the first half of the next in one write, the rest later: the half kept
    // while parked is not lost.
    let next = get("/pub/hello.txt");
    let (first_half, second_half) = next.split_at(10);
    c.write_all(format!("{}{first_half}", get("/pub/hello.txt")).as_bytes())
        .expect("write");
    assert_eq!(read_response(&mut c), (200, b"hello\n".to_vec()));
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(second_half.as_bytes()).expect("write");
    assert_eq!(read_response(&mut c), (200, b"hello\n".to_vec()));
    // A request with a body (the edge ignores it) on a kept-alive connection.
    let (status, _) = exchange(
        &mut c,
        "OPTIONS /pub/hello.txt HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(status < 500, "{status}");
    let (status, body) = exchange(&mut c, &get("/pub/hello.txt"));
    assert_eq!((status, body), (200, b"hello\n".to_vec()));
}

#[test]
fn a_response_to_connection_close_is_written_whole_to_a_slow_reader() {
    // With `Connection: close` hyper considers the connection done once the last byte is
    // queued; the parked path must still let it write everything before the socket closes
    // (a 48 MB store file does not fit in loopback's socket buffers).
    let site = Site::new("close-slow");
    let want = pattern(48_000_000);
    std::fs::write(site.content.join("pub/huge.mp4"), &want).expect("write");
    let _edge = site.start();
    let out_file = site.dir.path().join("download.bin");
    let (_, err, ok) = curl(&[
        "-sS",
        "--limit-rate",
        "24M",
        "-H",
        "Connection: close",
        "-o",
        out_file.to_str().expect("path"),
        &site.url("/pub/huge.mp4"),
    ]);
    assert!(ok, "curl: {err}");
    let got = std::fs::read(&out_file).expect("download");
    assert!(
        got == want,
        "{} of {} bytes, or different bytes",
        got.len(),
        want.len()
    );
}
