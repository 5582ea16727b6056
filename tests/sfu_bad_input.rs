//! Hostile input to the SFU: UDP garbage and floods, RTP and DTLS from strangers, STUN for
//! unknown ICE ufrags and with a known ufrag but a forged integrity, oversized and garbage
//! offers, hostile room names. Each is counted and dropped or answered with its status; the
//! SFU never panics and still carries a real publisher and watcher afterwards.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::sfu::{Sfu, room_token, synthetic_offer};

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

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dropped(sfu: &Sfu, reason: &str) -> f64 {
    sfu.metric(
        "estuary_sfu_dropped_packets_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[test]
fn udp_garbage_and_strangers_are_counted_and_dropped() {
    let sfu = Sfu::start("sfu-bad-udp", "");
    // A session that never connects: its ufrag is known to the SFU.
    let (s, _, answer) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(s, 201);
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ufrag in the answer")
        .trim()
        .to_owned();
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let send = |b: &[u8]| {
        stranger.send_to(b, sfu.udp).expect("send");
    };
    // Garbage: not STUN, DTLS or RTP by its first byte; too short; STUN with a lying length.
    for i in 0..200u64 {
        let mut b = noise(i, 1 + (i as usize * 7) % 1400);
        b[0] = 0xc0 | (b[0] & 0x3f);
        send(&b);
    }
    send(&[]);
    let mut lying = stun("x:y");
    lying[3] ^= 0x40;
    send(&lying);
    // RTP and DTLS from an address no peer's STUN came from.
    for i in 0..100u64 {
        let mut rtp = noise(1000 + i, 200);
        rtp[0] = 0x80;
        send(&rtp);
        let mut dtls = noise(2000 + i, 100);
        dtls[0] = 22;
        send(&dtls);
    }
    // STUN for a ufrag that is none of ours.
    for _ in 0..50 {
        send(&stun("nobody:abcd"));
    }
    assert!(
        sfu.wait_metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"garbage\""],
            |v| v >= 201.0
        ) >= 201.0
    );
    assert!(
        sfu.wait_metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"unknown_source\""],
            |v| v >= 200.0
        ) >= 200.0
    );
    assert!(
        sfu.wait_metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"unknown_ufrag\""],
            |v| v >= 50.0
        ) >= 50.0
    );
    // A known ufrag with a forged integrity reaches that peer's shard, where it is dropped
    // (str0m's STUN parser or the peer's integrity check); RTP from the address it taught
    // the router then reaches the peer too, which refuses it (not a candidate it validated).
    let before = dropped(&sfu, "garbage") + dropped(&sfu, "peer_refused");
    for _ in 0..20 {
        send(&stun(&format!("{ufrag}:abcd")));
    }
    // A well-formed RTP header (version 2, payload type 96), so that only the peer's own
    // check can refuse it.
    let mut rtp = vec![0x80, 96, 0x12, 0x34, 0, 0, 0x10, 0, 0xde, 0xad, 0xbe, 0xef];
    rtp.extend_from_slice(&noise(7, 188));
    for _ in 0..20 {
        send(&rtp);
    }
    let refused = sfu.wait_metric(
        "estuary_sfu_dropped_packets_total",
        &["reason=\"peer_refused\""],
        |v| v >= 20.0,
    );
    assert!(refused >= 20.0, "{refused}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while dropped(&sfu, "garbage") + dropped(&sfu, "peer_refused") < before + 40.0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dropped(&sfu, "garbage") + dropped(&sfu, "peer_refused") >= before + 40.0);
    assert_eq!(sfu.metric("estuary_sfu_received_packets_total", &[]), 0.0);

    // A flood of garbage, then a real publisher and watcher still get through.
    for i in 0..20_000u64 {
        let mut b = noise(50_000 + i, 100);
        b[0] = if i % 2 == 0 { 0x80 } else { 0xff };
        let _ = stranger.send_to(&b, sfu.udp);
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = sfu.client("pair", "r2", &["--seconds", "4"]);
    assert!(
        out["watcher"]["video_frames"].as_u64().unwrap_or(0) >= 40,
        "{out}"
    );
    assert!(
        out["watcher"]["audio_frames"].as_u64().unwrap_or(0) >= 60,
        "{out}"
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

#[test]
fn hostile_offers_and_room_names_are_refused_with_their_status() {
    let sfu = Sfu::start("sfu-bad-sdp", "");
    let t = room_token("r1");
    let sdp = Some("application/sdp");
    let garbage: Vec<String> = vec![
        String::new(),
        "v=0".into(),
        "\r\n\r\n\r\n".into(),
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(100),
        synthetic_offer("sendonly").replace("a=fingerprint", "a=fingerprinz"),
        synthetic_offer("sendonly").replace("a=ice-ufrag:abcd\r\n", ""),
        synthetic_offer("sendonly").replace("opus/48000/2", "opus/0/2"),
        synthetic_offer("sendonly").replace("111", "300"),
        synthetic_offer("sendonly").replace("m=audio", "m=application"),
        synthetic_offer("sendonly") + &"a=rtpmap:111 opus/48000/2\r\n".repeat(500),
        String::from_utf8_lossy(&noise(3, 3000)).into_owned(),
    ];
    for (i, body) in garbage.iter().enumerate() {
        let (s, _, text) = sfu.request("POST", "/whip/r1", Some(&t), sdp, body);
        assert_eq!(s, 400, "offer {i}: {text}");
        // The parser's internals (it reports pointer offsets) never reach the client.
        assert!(!text.contains("0x"), "offer {i}: {text}");
    }
    // Not SDP at all, and an offer larger than 64 KiB.
    let (s, _, _) = sfu.request("POST", "/whip/r1", Some(&t), sdp, "\u{fffd}\r\n");
    assert_eq!(s, 400);
    let big = synthetic_offer("sendonly") + &"a=x-padding:0123456789abcdef\r\n".repeat(4000);
    let (s, _, _) = sfu.request("POST", "/whip/r1", Some(&t), sdp, &big);
    assert_eq!(s, 413);
    // Room names: only 1-64 of A-Z a-z 0-9 - _ . (and not dot segments).
    let long = "a".repeat(65);
    for room in [
        "..",
        ".",
        "%2e%2e",
        "a%2Fb",
        "r%00",
        "r%20x",
        "%F0%9F%98%80",
        long.as_str(),
    ] {
        let (s, _, _) = sfu.request(
            "POST",
            &format!("/whip/{room}"),
            Some(&room_token(room)),
            sdp,
            &synthetic_offer("sendonly"),
        );
        assert!(s == 400 || s == 404, "room {room}: {s}");
    }
    let (s, _, _) = sfu.request("POST", "/whip/a/b/c/d", Some(&t), sdp, "");
    assert!(s == 404 || s == 405, "{s}");
    assert!(
        sfu.metric(
            "estuary_sfu_signaling_refused_total",
            &["reason=\"bad_sdp\""]
        ) >= 9.0
    );
    assert!(
        sfu.metric(
            "estuary_sfu_signaling_refused_total",
            &["reason=\"bad_room\""]
        ) >= 5.0
    );
    assert!(
        sfu.metric(
            "estuary_sfu_signaling_refused_total",
            &["reason=\"too_big\""]
        ) >= 1.0
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    // Still serving real peers.
    let out = sfu.client("pair", "r1", &["--seconds", "3"]);
    assert!(
        out["watcher"]["video_frames"].as_u64().unwrap_or(0) >= 30,
        "{out}"
    );
}
