//! QUIC under attack: a flood of Initial packets from addresses that never answer (as if
//! spoofed) gets Retry packets and takes no connection slot, so HTTP/3 and TCP clients are
//! still served; half-open connections from validated addresses are counted and dropped at
//! the handshake timeout; pre-standard QUIC drafts get a Version Negotiation offering v1 and
//! v2, and HTTP/3 is served over both;
//! HTTP/3 streams with half a head are dropped at the header timeout; and the header-count
//! limit holds on HTTP/2 and HTTP/3 as on HTTP/1.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Starts the flood script and waits until it has sent everything.
fn flood(mode: &str, addr: SocketAddr, n: usize) -> Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/quic_initial_flood.py"
    );
    let mut child = Command::new("python3")
        .args([script, mode, "127.0.0.1"])
        .arg(addr.port().to_string())
        .arg(n.to_string())
        .arg("60")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aioquic (scripts/setup-debian.sh installs it)");
    let mut line = Vec::new();
    let out = child.stdout.as_mut().expect("stdout");
    let mut byte = [0u8; 1];
    while out.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(String::from_utf8_lossy(&line), format!("sent {n}"));
    child
}

/// A plain HTTP/1.1 GET whose answer must come within the test's own bound (the slots the
/// attack would hold are held for 30 s without the defences).
fn get_within(addr: SocketAddr, limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.write_all(b"GET /pub/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// An HTTP/3 GET; a connection refused at the cap is tried again (QUIC has no backlog to
/// wait in) until the test's own bound of 15 s.
async fn h3_status(site: &Site) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = async {
            let mut h3 =
                estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
                    .await?;
            let r = h3.get("/pub/hello.txt").await?;
            anyhow::Ok(r.status.as_u16())
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(status)) => return status,
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                eprintln!("HTTP/3 attempt failed: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => panic!("HTTP/3 request failed: {e:#}"),
            Err(_) => panic!("HTTP/3 request not answered within 15 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_initials_blocks_no_one() {
    let mut site = Site::new("quic-flood");
    site.extra = "[limits]\nmax_connections = 100\n".into();
    let edge = site.start();
    let mut attack = flood("spoofed", site.https, 110);
    // Every protocol is served while the flood's addresses stay silent.
    assert_eq!(h3_status(&site).await, 200);
    let answer = tokio::task::spawn_blocking({
        let http = site.http;
        move || get_within(http, Duration::from_secs(10))
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "plain HTTP: {answer:?}");
    let (status, _) = curl_head(&["-k", "--max-time", "10", &site.surl("/pub/hello.txt")]);
    assert_eq!(status, 200);
    // The flood holds no slot: nothing but the requests above was ever counted.
    assert!(edge.metric("estuary_edge_open_connections", &["h3"]) <= 1.0);
    let _ = attack.kill();
    let _ = attack.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_half_open_connections_are_counted_and_dropped_at_the_handshake_timeout() {
    let mut site = Site::new("quic-half-open");
    site.extra = "[limits]\nmax_connections = 20\nhandshake_timeout = \"2s\"\n".into();
    let edge = site.start();
    let mut attack = flood("validated", site.https, 20);
    // They hold every slot, and the metric shows them.
    let open = edge.metric("estuary_edge_open_connections", &["h3"]);
    assert!(open >= 1.0, "half-open connections are not counted: {open}");
    // Dropped at the handshake timeout (long before the 30 s idle timeout), so a real
    // client is served.
    assert_eq!(h3_status(&site).await, 200);
    let _ = attack.kill();
    let _ = attack.wait();
}

#[test]
fn pre_standard_drafts_get_version_negotiation_for_v1_and_v2() {
    let site = Site::new("quic-versions");
    let _edge = site.start();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for version in [0xff00_001d_u32, 0xff00_0022] {
        // A long-header Initial of draft 29 or 34, padded to the minimum Initial size; an
        // endpoint that does not speak the version answers with Version Negotiation.
        let mut packet = vec![0xc0];
        packet.extend_from_slice(&version.to_be_bytes());
        packet.push(8);
        packet.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        packet.push(8);
        packet.extend_from_slice(&[9, 10, 11, 12, 13, 14, 15, 16]);
        packet.resize(1200, 0);
        socket.send_to(&packet, site.https).expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no Version Negotiation for {version:#x}: {e}"));
        let reply = &buf[..n];
        assert_eq!(&reply[1..5], &[0, 0, 0, 0], "not a Version Negotiation");
        // Header: flags, version, DCID (length + 8), SCID (length + 8); then the versions.
        let versions: Vec<u32> = reply[1 + 4 + 9 + 9..]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            .filter(|v| v & 0x0f0f_0f0f != 0x0a0a_0a0a) // grease
            .collect();
        assert_eq!(versions, vec![1, 0x6b33_43cf]);
    }
}

/// An independent QUIC stack (aioquic) speaking only version 1, or only version 2 (RFC 9369:
/// other packet type bits, salts, labels and Retry key), gets its answer in that version.
#[test]
fn http3_is_served_over_quic_v1_and_v2() {
    let site = Site::new("quic-v2");
    let _edge = site.start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_abuse.py");
    for version in ["1", "6b3343cf"] {
        let out = run(Command::new("python3")
            .arg(script)
            .arg("version")
            .arg("127.0.0.1")
            .arg(site.https.port().to_string())
            .arg(version));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "status 200 version {:#x}",
                u32::from_str_radix(version, 16).expect("hex")
            ),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn partial_http3_heads_are_dropped_after_the_header_timeout() {
    let mut site = Site::new("quic-partial-heads");
    site.extra = "[limits]\nheader_read_timeout = \"1s\"\n".into();
    let _edge = site.start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/h3_partial_heads.py"
    );
    let out = run(Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(site.https.port().to_string())
        .arg("20")
        .arg("20"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_quic_connection_kept_alive_by_pings_without_requests_is_closed() {
    let mut site = Site::new("quic-pinger");
    // Far below QUIC's idle timeout (30 s), which the pings would reset forever.
    site.extra = "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n".into();
    let _edge = site.start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/quic_pinger.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(site.https.port().to_string())
        .arg("20"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_huge_http3_head_is_cut_at_the_stream_budget() {
    let mut site = Site::new("quic-huge-head");
    // The header timeout is far away: only the byte budget can end these streams in time.
    site.extra = "[limits]\nheader_read_timeout = \"120s\"\n".into();
    let _edge = site.start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/h3_partial_heads.py"
    );
    let out = run(Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(site.https.port().to_string())
        .arg("4")
        .arg("20")
        .arg("600000"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_holds_on_http2_and_http3() {
    let mut site = Site::new("quic-header-count");
    site.extra = "[limits]\nmax_headers = 64\n".into();
    let _edge = site.start();
    let names: Vec<String> = (0..70).map(|i| format!("x-h{i}")).collect();
    // HTTP/3.
    let mut h3 = estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
        .await
        .expect("h3 connect");
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = h3
        .request(http::Method::GET, "/pub/hello.txt", &many)
        .await
        .expect("h3 request");
    assert_eq!(r.status, 431);
    // A normal request on the same connection is still served.
    assert_eq!(h3.get("/pub/hello.txt").await.expect("h3 get").status, 200);
    // HTTP/2, over TLS and in the clear.
    let mut args: Vec<String> = Vec::new();
    for n in &names {
        args.push("-H".into());
        args.push(format!("{n}: v"));
    }
    for (flag, url) in [
        ("--http2", site.surl("/pub/hello.txt")),
        ("--http2-prior-knowledge", site.url("/pub/hello.txt")),
    ] {
        let mut a: Vec<&str> = vec!["-k", flag];
        a.extend(args.iter().map(String::as_str));
        a.push(&url);
        let (status, head) = tokio::task::spawn_blocking({
            let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            move || {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                curl_head(&a)
            }
        })
        .await
        .expect("join");
        assert_eq!(status, 431, "{flag}: {head}");
        assert!(head.starts_with("http/2"), "{head}");
    }
}
