//! ICE-TCP: a client whose UDP is blocked still gets its media, over the SFU's passive TCP
//! candidate (RFC 6544, RFC 4571 framing).
//!
//! Headless Chromium (tests/clients/ice_tcp_page.mjs, fake camera and microphone) publishes
//! with WHIP, watches with WHEP and joins with the meeting page, all in a network namespace of
//! the test's own where nftables drops every UDP datagram to or from the SFU's media port.
//! getStats() must show each connection's selected pair on TCP (Chromium's active TCP
//! candidate to the SFU's passive one), video decoded and audio heard, and the SFU must count
//! TCP frames. The control: the same block with the TCP listener off, and every connection
//! fails: the block is real. Hostile TCP input (garbage, a huge length, silence, an unknown
//! ufrag, too many connections) is counted and closed, and a real session works after. A
//! client that sends valid binding requests and never reads the answers is closed when its
//! write queue fills, while a session on the same shard goes on.
//!
//! aiortc (aioice 0.13) has no ICE-TCP (TCP only towards TURN servers), so Chromium is the
//! one client here that speaks it.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{self, Netns};
use common::sfu::{Sfu, room_token, synthetic_offer};
use common::*;

/// One Chromium run at a time in this binary (three tabs with fake devices each).
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs tests/clients/ice_tcp_page.mjs against `sfu` (in the calling thread's namespace) and
/// returns its report; fails with its output and the SFU's log when it does not succeed.
fn chromium(sfu: &Sfu, expect: &str, room: &str) -> serde_json::Value {
    let _one = common::lock(&BROWSER);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/ice_tcp_page.mjs"
    );
    let out = run(Command::new("node").args([
        script,
        "--expect",
        expect,
        "--url",
        &sfu.url(),
        "--room",
        room,
        "--token",
        &room_token(room),
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
    assert!(
        out.status.success() && report["ok"] == true,
        "Chromium ({expect}): {stdout}\n{}\nSFU log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log()
    );
    report
}

#[test]
fn chromium_gets_its_media_over_tcp_when_udp_is_blocked() {
    let ns = Netns::new("icetcp");
    let name = ns.name.clone();
    let (report, tcp_port, frames_in, frames_out, accepted, forwarded) = ns.run(move || {
        let sfu = Sfu::start_tcp("sfu-ice-tcp", "");
        netns::block_udp_port(&name, sfu.udp.port());
        let report = chromium(&sfu, "connect", "r1");
        let m = |name: &str, labels: &[&str]| sfu.metric(name, labels);
        (
            report,
            sfu.tcp.map_or(0, |t| u64::from(t.port())),
            m("estuary_sfu_tcp_frames_total", &["direction=\"in\""]),
            m("estuary_sfu_tcp_frames_total", &["direction=\"out\""]),
            m(
                "estuary_sfu_tcp_connections_total",
                &["result=\"accepted\""],
            ),
            m("estuary_sfu_forwarded_packets_total", &[]),
        )
    });
    eprintln!("{report}");
    let port = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    for tab in ["whip", "whep", "meeting"] {
        let pair = &report["tabs"][tab]["pair"];
        assert_eq!(pair["local"]["protocol"], "tcp", "{tab}: {report}");
        assert_eq!(pair["remote"]["protocol"], "tcp", "{tab}: {report}");
        assert_eq!(pair["remote"]["tcpType"], "passive", "{tab}: {report}");
        assert_eq!(pair["local"]["tcpType"], "active", "{tab}: {report}");
        // libwebrtc marks a pair "in-progress" each time it sends a check on it, until the
        // answer: a read of the stats in between sees that on a working pair. Nominated, it
        // had succeeded (a nomination is a check that succeeded).
        assert!(
            pair["state"] == "succeeded"
                || (pair["state"] == "in-progress" && pair["nominated"] == true),
            "{tab}: {report}"
        );
        assert_eq!(port(&pair["remote"]["port"]), tcp_port, "{tab}: {report}");
    }
    for tab in ["whep", "meeting"] {
        let t = &report["tabs"][tab];
        let decoded = t["video"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|x| port(&x["framesDecoded"]))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let energy = t["audio"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x["totalAudioEnergy"].as_f64())
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0);
        assert!(decoded > 10 && energy > 0.0, "{tab}: {t}");
    }
    assert!(port(&report["tabs"]["whip"]["bytesSent"]) > 0);
    // Three connections (one per tab) carried everything, both ways.
    assert!(accepted >= 3.0, "{accepted} TCP connections");
    assert!(
        frames_in > 100.0 && frames_out > 100.0,
        "{frames_in} in, {frames_out} out"
    );
    assert!(forwarded > 100.0, "{forwarded} packets forwarded");
    // Chromium did try UDP first, and the namespace's rules dropped it.
    assert!(ns.udp_dropped() > 0, "the UDP block saw nothing");
}

#[test]
fn without_the_tcp_listener_the_same_block_fails() {
    let ns = Netns::new("icetcp-ctl");
    let name = ns.name.clone();
    let (report, tcp) = ns.run(move || {
        let sfu = Sfu::start("sfu-ice-tcp-control", "");
        netns::block_udp_port(&name, sfu.udp.port());
        let report = chromium(&sfu, "fail", "r1");
        let tcp = sfu.metric("estuary_sfu_tcp_connections_total", &[]);
        (report, tcp)
    });
    eprintln!("{report}");
    for tab in ["whip", "whep", "meeting"] {
        let states = &report["tabs"][tab]["states"];
        assert!(
            states["connection"] == "failed" || states["ice"] == "failed",
            "{tab}: {report}"
        );
    }
    assert_eq!(tcp, 0.0);
    assert!(ns.udp_dropped() > 0, "the UDP block saw nothing");
}

/// A STUN binding request with USERNAME `user` and a MESSAGE-INTEGRITY that is not one.
fn stun(user: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |kind: u16, value: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(value);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    attr(0x0006, user.as_bytes());
    attr(0x0008, &[0x5a; 20]);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attrs);
    m
}

/// RFC 4571: a 2-byte length, then the datagram.
fn frame(datagram: &[u8]) -> Vec<u8> {
    let mut f = (datagram.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(datagram);
    f
}

/// Waits (up to 20 s) until the SFU closes `s`: a read gives end-of-file or a reset.
fn closed_by_the_sfu(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn closed(sfu: &Sfu, reason: &str) -> f64 {
    sfu.metric(
        "estuary_sfu_tcp_closed_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[test]
fn hostile_tcp_input_is_counted_and_closed() {
    let sfu = Sfu::start_tcp(
        "sfu-ice-tcp-bad",
        "[media]\ntcp_first_frame_timeout = \"1s\"\ntcp_max_connections = 8\n",
    );
    let tcp = sfu.tcp.expect("a TCP listener");
    let connect = || TcpStream::connect(tcp).expect("connect");
    // A session that never connects: its ufrag is known to the SFU.
    let (s, _, answer) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(s, 201);
    assert!(
        answer.contains(&format!("{} typ host tcptype passive", tcp.port())),
        "the answer offers the passive TCP candidate: {answer}"
    );
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ufrag in the answer")
        .trim()
        .to_owned();

    // Garbage for a first frame: not STUN.
    let mut g = connect();
    g.write_all(&frame(&[0xc5; 100])).expect("write");
    assert!(closed_by_the_sfu(&mut g), "garbage");
    // A length far over any datagram (RFC 4571 allows 65535; the SFU takes 4096).
    let mut h = connect();
    h.write_all(&[0xff, 0xff, 0, 1, 2, 3]).expect("write");
    assert!(closed_by_the_sfu(&mut h), "huge length");
    // A STUN request for a ufrag that is none of ours.
    let mut u = connect();
    u.write_all(&frame(&stun("nobodysufrag:x"))).expect("write");
    assert!(closed_by_the_sfu(&mut u), "unknown ufrag");
    // A connection that never speaks, and one that sends half a frame.
    let mut q = connect();
    let mut half = connect();
    half.write_all(&[0x00, 0x40, 0x00, 0x01]).expect("write");
    assert!(closed_by_the_sfu(&mut q), "silent");
    assert!(closed_by_the_sfu(&mut half), "half a frame");
    // A known ufrag with a forged integrity: routed to its peer's shard, where str0m's STUN
    // parse (counted as garbage) or the peer's integrity check (peer_refused) drops it; the
    // connection stays open, bound to that peer.
    let dropped = || {
        sfu.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"peer_refused\""],
        ) + sfu.metric("estuary_sfu_dropped_packets_total", &["reason=\"garbage\""])
    };
    let before = dropped();
    let mut k = connect();
    k.write_all(&frame(&stun(&format!("{ufrag}:abcd"))))
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped() < before + 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        dropped() >= before + 1.0,
        "the forged request was not dropped"
    );
    k.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        matches!(k.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the bound connection stays open and gets no answer"
    );

    assert!(closed(&sfu, "garbage") >= 1.0);
    assert_eq!(closed(&sfu, "oversized"), 1.0);
    assert_eq!(closed(&sfu, "unknown_ufrag"), 1.0);
    assert_eq!(closed(&sfu, "first_frame_timeout"), 2.0);
    assert!(
        sfu.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"unknown_ufrag\""]
        ) >= 1.0
    );

    // At most tcp_max_connections at once: the ninth is closed at once, and counted.
    let held: Vec<TcpStream> = (0..8).map(|_| connect()).collect();
    let open = sfu.wait_metric("estuary_sfu_tcp_connections", &[], |v| v >= 8.0);
    assert!(open >= 8.0, "{open} open");
    let mut ninth = connect();
    assert!(closed_by_the_sfu(&mut ninth), "over the limit");
    assert!(sfu.metric("estuary_sfu_tcp_connections_total", &["result=\"refused\""]) >= 1.0);
    drop(held);
    drop(k);
    // Everything closes; nothing panicked.
    let open = sfu.wait_metric("estuary_sfu_tcp_connections", &[], |v| v == 0.0);
    assert_eq!(open, 0.0, "TCP connections left open");
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);

    // A real session still works (aiortc, over UDP).
    let out = sfu.client("pair", "r2", &["--seconds", "3"]);
    assert!(
        out["watcher"]["video_frames"].as_u64().unwrap_or(0) >= 30,
        "{out}"
    );
}

/// HMAC-SHA1 (RFC 2104), for STUN's MESSAGE-INTEGRITY.
fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha1::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 20];
    out.copy_from_slice(&outer.finalize());
    out
}

/// A valid ICE binding request (RFC 8445): USERNAME `user`, PRIORITY, ICE-CONTROLLING and a
/// MESSAGE-INTEGRITY made with the SFU's ICE password `pwd`.
fn binding_request(user: &str, pwd: &str, txid: u64) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |kind: u16, value: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(value);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    attr(0x0006, user.as_bytes());
    attr(0x0024, &1_853_824_767u32.to_be_bytes());
    attr(0x802a, &txid.to_be_bytes());
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((attrs.len() + 24) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7; 4]);
    m.extend_from_slice(&txid.to_be_bytes());
    m.extend_from_slice(&attrs);
    let mac = hmac_sha1(pwd.as_bytes(), &m);
    m.extend_from_slice(&0x0008u16.to_be_bytes());
    m.extend_from_slice(&20u16.to_be_bytes());
    m.extend_from_slice(&mac);
    m
}

/// A client that sends valid binding requests over ICE-TCP and never reads the answers: the
/// kernel's buffers fill, then the connection's write queue; the SFU closes the connection and
/// counts it, and a session on the same shard (aiortc over UDP, meanwhile) goes on decoding.
#[test]
fn a_tcp_client_that_does_not_read_is_closed_and_stalls_nothing() {
    let sfu = Sfu::start_tcp("sfu-ice-tcp-slow", "[media]\ntcp_write_queue = 16\n");
    let tcp = sfu.tcp.expect("a TCP listener");
    let (s, _, answer) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(s, 201);
    let line = |key: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .expect("in the answer")
            .trim()
            .to_owned()
    };
    let (ufrag, pwd) = (line("a=ice-ufrag:"), line("a=ice-pwd:"));
    // The synthetic offer's ufrag is "abcd".
    let user = format!("{ufrag}:abcd");
    let mut c = TcpStream::connect(tcp).expect("connect");
    // First one request, answered: the requests are valid.
    c.write_all(&frame(&binding_request(&user, &pwd, 1)))
        .expect("write");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut len = [0u8; 2];
    c.read_exact(&mut len).expect("a framed answer");
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut answer).expect("the answer");
    assert_eq!(&answer[..2], &[0x01, 0x01], "a binding success response");

    // A real session on the same (only) shard while the flood goes on.
    let pair = {
        let cmd = sfu.client_command("pair", "r2", &["--seconds", "4"]);
        std::thread::spawn(move || {
            let _slot = common::sfu::ClientSlot::take();
            let mut cmd = cmd;
            run(&mut cmd)
        })
    };
    // Then thousands, never reading.
    let mut batch = Vec::new();
    let mut written = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    c.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    'flood: for txid in 2..400_000u64 {
        batch.extend_from_slice(&frame(&binding_request(&user, &pwd, txid)));
        if batch.len() >= 64 * 1024 {
            if c.write_all(&batch).is_err() || Instant::now() > deadline {
                break 'flood;
            }
            written += 1;
            batch.clear();
            if closed(&sfu, "write_queue_full") >= 1.0 {
                break 'flood;
            }
        }
    }
    let queue_full = sfu.wait_metric(
        "estuary_sfu_tcp_closed_total",
        &["reason=\"write_queue_full\""],
        |v| v >= 1.0,
    );
    assert_eq!(queue_full, 1.0, "after {written} batches of requests");
    // The shard's counters are flushed once a second.
    let dropped = sfu.wait_metric(
        "estuary_sfu_dropped_packets_total",
        &["reason=\"tcp_queue_full\""],
        |v| v >= 1.0,
    );
    assert!(dropped >= 1.0, "the datagram that found the queue full");
    assert!(closed_by_the_sfu(&mut c), "the slow reader is closed");
    let out = pair.join().expect("the pair's thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_default();
    assert!(
        out.status.success() && report["watcher"]["video_frames"].as_u64().unwrap_or(0) >= 30,
        "the session beside it: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

/// A TCP connection lives no longer than its peer: ending the session (WHIP `DELETE`) closes
/// it, counted as `peer_gone`.
#[test]
fn ending_a_session_closes_its_tcp_connection() {
    let sfu = Sfu::start_tcp("sfu-ice-tcp-end", "");
    let tcp = sfu.tcp.expect("a TCP listener");
    let (s, head, answer) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(s, 201);
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .expect("a Location")
        .trim()
        .to_owned();
    let line = |key: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .expect("in the answer")
            .trim()
            .to_owned()
    };
    let user = format!("{}:abcd", line("a=ice-ufrag:"));
    let mut c = TcpStream::connect(tcp).expect("connect");
    c.write_all(&frame(&binding_request(&user, &line("a=ice-pwd:"), 1)))
        .expect("write");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut len = [0u8; 2];
    c.read_exact(&mut len).expect("a framed answer");
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut answer).expect("the answer");
    assert_eq!(closed(&sfu, "peer_gone"), 0.0);
    let (s, _, _) = sfu.request("DELETE", &location, Some(&room_token("r1")), None, "");
    assert_eq!(s, 200);
    assert!(closed_by_the_sfu(&mut c), "closed with its peer");
    let gone = sfu.wait_metric(
        "estuary_sfu_tcp_closed_total",
        &["reason=\"peer_gone\""],
        |v| v >= 1.0,
    );
    assert_eq!(gone, 1.0);
    assert_eq!(
        sfu.wait_metric("estuary_sfu_tcp_connections", &[], |v| v == 0.0),
        0.0
    );
}
