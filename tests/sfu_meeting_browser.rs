//! The meeting: the page at `/rooms/<room>` and its WebSocket protocol, with real clients.
//! Three headless Chromium tabs (tests/clients/meeting_page.mjs, Chromium's fake camera and
//! microphone) join one room on a real `estuary sfu`; each decodes the other two's video and
//! hears their audio (from `getStats()`); one leaves and the others are told. Tokens are
//! refused before the upgrade; bad frames from an independent WebSocket client
//! (tests/clients/meeting_ws.py) get `error` frames or a close code, and the SFU stays up.
mod common;

use std::process::Command;

use common::sfu::{Sfu, room_token};
use common::*;

/// A raw WebSocket upgrade request to `path`: (status, head). Only the head is read (a
/// 101 leaves the connection open).
fn upgrade(sfu: &Sfu, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut s = std::net::TcpStream::connect(sfu.http).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[test]
fn tokens_are_checked_before_the_upgrade() {
    let sfu = Sfu::start("sfu-meeting-tokens", "");
    let (s, _) = upgrade(&sfu, "/rooms/r1/ws");
    assert_eq!(s, 401, "no token");
    let (s, _) = upgrade(&sfu, "/rooms/r1/ws?token=nonsense");
    assert_eq!(s, 401, "not a token");
    let (s, _) = upgrade(&sfu, &format!("/rooms/r1/ws?token={}", room_token("r2")));
    assert_eq!(s, 403, "another room's token");
    let (s, head) = upgrade(&sfu, &format!("/rooms/r1/ws?token={}", room_token("r1")));
    assert_eq!(s, 101, "{head}");
    let (s, _) = upgrade(&sfu, &format!("/rooms/..%2f/ws?token={}", room_token("r1")));
    assert!(s == 400 || s == 404, "a bad room name: {s}");
}

/// The two media tests run one after the other: three Chromium tabs beside two aiortc
/// peers on a 2-core machine starved a tab's event loop in a CI run (its WebSocket stopped
/// being read).
static ONE_MEDIA_TEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn three_chromium_participants_see_and_hear_each_other() {
    let _one = common::lock(&ONE_MEDIA_TEST_AT_A_TIME);
    let sfu = Sfu::start("sfu-meeting-browser", "");
    let (status, headers, body) = fetch(&format!("{}/rooms/r1", sfu.url()), &[]);
    assert_eq!(status, 200);
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(
        csp.starts_with("default-src 'none';")
            && csp.contains("script-src 'sha256-")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("<title>Estuary meeting</title>"));
    assert!(!body.contains(" src=") && !body.contains("http://") && !body.contains("https://"));

    let url = |name: &str| {
        format!(
            "{}/rooms/r1?name={name}&token={}",
            sfu.url(),
            room_token("r1")
        )
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/meeting_page.mjs"
    );
    let out =
        run(Command::new("node").args([script, "--fit", &url("ann"), &url("bob"), &url("cat")]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
    assert!(
        out.status.success() && report["ok"] == true,
        "the meeting failed in Chromium: {stdout}\n{}\nSFU log:\n{}\nSFU metrics:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log(),
        sfu.metrics_summary()
    );
    eprintln!("{report}");
    assert_eq!(
        sfu.metric("estuary_sfu_peers_total", &["kind=\"meeting\""]),
        3.0
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

#[test]
fn bad_websocket_input_gets_errors_or_a_close_and_never_a_crash() {
    let sfu = Sfu::start(
        "sfu-meeting-bad-input",
        "[media]\nconnect_timeout = \"1s\"\n",
    );
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/meeting_ws.py"
        ))
        .args(["--url", &format!("ws://{}", sfu.http), "--room", "r1"])
        .args(["--token", &room_token("r1")]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "meeting_ws.py failed: {stdout}\n{}\nSFU log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log()
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // The error codes each case got, in order (after `joined`, before `pong`).
    let codes = |case: &str| -> Vec<String> {
        r[case]["got"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|m| m["type"] == "error")
                    .filter_map(|m| m["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ponged = |case: &str| {
        r[case]["got"]
            .as_array()
            .is_some_and(|v| v.iter().any(|m| m["type"] == "pong"))
    };
    assert_eq!(codes("garbage"), ["bad_message"; 3], "{r}");
    assert_eq!(codes("unknown_type"), ["bad_message"], "{r}");
    assert_eq!(codes("extra_field"), ["bad_message"], "{r}");
    assert_eq!(codes("before_join"), ["not_joined"], "{r}");
    assert_eq!(codes("garbage_sdp"), ["bad_sdp"], "{r}");
    assert_eq!(codes("answer_unasked"), ["no_pending_offer"], "{r}");
    assert_eq!(codes("mute_other"), ["unknown_track"], "{r}");
    assert_eq!(codes("join_twice"), ["already_joined"], "{r}");
    assert_eq!(codes("relay_from_participant"), ["bad_message"], "{r}");
    for case in [
        "garbage",
        "unknown_type",
        "extra_field",
        "garbage_sdp",
        "answer_unasked",
        "mute_other",
        "join_twice",
        "relay_from_participant",
    ] {
        assert!(ponged(case), "{case}: the connection stays usable: {r}");
        assert_eq!(
            r[case]["got"][0]["type"], "joined",
            "{case}: joined first: {r}"
        );
    }
    assert_eq!(r["oversized"]["close"], 1009, "{r}");
    assert_eq!(r["binary"]["close"], 1003, "{r}");
    assert_eq!(r["flood_of_garbage"]["close"], 1008, "{r}");
    assert_eq!(codes("flood_of_garbage"), ["bad_message"; 4], "{r}");
    // connect_timeout counts from a participant's first offer, not from its join.
    assert!(ponged("slow_to_offer"), "{r}");
    // Still up, and every participant is gone again.
    assert_eq!(sfu.wait_metric("estuary_sfu_peers", &[], |v| v == 0.0), 0.0);
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    let (s, _) = upgrade(&sfu, &format!("/rooms/r1/ws?token={}", room_token("r1")));
    assert_eq!(s, 101);
}

/// The glare rule with an independent WebRTC stack (aiortc, tests/clients/meeting_glare.py):
/// ann offers again while the SFU's offer to her (bob's tracks) is pending; the SFU answers
/// her first, then offers bob's tracks again, and she decodes them.
#[test]
fn a_client_offer_during_a_pending_server_offer_is_answered_first() {
    let _one = common::lock(&ONE_MEDIA_TEST_AT_A_TIME);
    let sfu = Sfu::start("sfu-meeting-glare", "");
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/meeting_glare.py"
        ))
        .args(["--url", &format!("ws://{}", sfu.http), "--room", "r1"])
        .args(["--token", &room_token("r1"), "--seconds", "5"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "meeting_glare.py failed: {stdout}\n{}\nSFU log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log()
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(r["bob_in_offer"], true, "{r}");
    for who in ["ann", "bob"] {
        let video = r[who]["frames"]["video"].as_u64().unwrap_or(0);
        let audio = r[who]["frames"]["audio"].as_u64().unwrap_or(0);
        assert!(
            video >= 30 && audio >= 50,
            "{who}: {video} video, {audio} audio frames: {r}"
        );
    }
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}
