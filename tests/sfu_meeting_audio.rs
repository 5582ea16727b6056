//! Loudest-N audio and mute in a meeting, with aiortc participants
//! (tests/clients/meeting_audio.py) on a real `estuary sfu`.
//!
//! Loudest-N: "loud" sends a tone, "quiet" and "listener" silence. With
//! `[rooms] max_audio_forwarded = 1` the listener hears loud and nothing of quiet, and the SFU
//! counts what it did not send; the control, with the default of 3, proves the test can tell:
//! there the listener hears quiet too.
//! Late joiner: bob, audio only, joins ann and cid (both with video) and decodes both videos.
//! Mute: ann mutes her audio and video; bob's frame counts from her stand still while muted
//! and grow again after she unmutes (video after a keyframe).
mod common;

use std::process::Command;

use common::sfu::{ClientSlot, Sfu, room_token};
use common::*;

fn meeting_audio(sfu: &Sfu, mode: &str, room: &str) -> serde_json::Value {
    let slot = ClientSlot::take();
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/meeting_audio.py"
        ))
        .arg(mode)
        .args(["--url", &format!("ws://{}", sfu.http), "--room", room])
        .args(["--token", &room_token(room), "--seconds", "3"]));
    drop(slot);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "meeting_audio.py {mode} failed: {stdout}\n{}\nSFU log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line")
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn with_max_audio_forwarded_1_a_silent_publisher_is_not_heard() {
    let sfu = Sfu::start("sfu-loudest-1", "[rooms]\nmax_audio_forwarded = 1\n");
    let r = meeting_audio(&sfu, "loudest", "r1");
    eprintln!("N=1: {r}");
    // 3 s of 20 ms packets: about 150 frames.
    assert!(n(&r["listener_from_loud"]) >= 75, "{r}");
    assert_eq!(n(&r["listener_from_quiet"]), 0, "{r}");
    assert!(n(&r["quiet_from_loud"]) >= 75, "{r}");
    assert_eq!(r["speakers"][0], r["loud"], "{r}");
    let not_loudest = sfu.metric(
        "estuary_sfu_dropped_packets_total",
        &["reason=\"audio_not_loudest\""],
    );
    assert!(not_loudest >= 100.0, "{not_loudest} not sent");

    // The control: with the default (3), quiet is heard too.
    let all = Sfu::start("sfu-loudest-3", "");
    let r = meeting_audio(&all, "loudest", "r1");
    eprintln!("N=3: {r}");
    assert!(n(&r["listener_from_quiet"]) >= 75, "{r}");
    assert_eq!(
        all.metric(
            "estuary_sfu_dropped_packets_total",
            &["reason=\"audio_not_loudest\""]
        ),
        0.0
    );
}

#[test]
fn a_muted_track_is_not_forwarded_and_unmuting_resumes_it() {
    let sfu = Sfu::start("sfu-mute", "");
    let r = meeting_audio(&sfu, "mute", "r1");
    eprintln!("{r}");
    for kind in ["audio", "video"] {
        let before = n(&r["before"][kind]);
        let from = n(&r["muted_from"][kind]);
        let to = n(&r["muted_to"][kind]);
        let after = n(&r["after"][kind]);
        assert!(before > 0, "{kind}: {r}");
        assert_eq!(from, to, "{kind} went on while muted: {r}");
        assert!(after >= to + 10, "{kind} did not resume: {r}");
    }
    assert_eq!(
        r["bob_told"],
        serde_json::json!([
            "muted:audio",
            "muted:video",
            "unmuted:audio",
            "unmuted:video"
        ]),
        "{r}"
    );
    assert!(
        sfu.metric("estuary_sfu_dropped_packets_total", &["reason=\"muted\""]) >= 50.0,
        "muted packets not counted"
    );
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}

/// A participant who publishes audio only and joins two video publishers gets both videos in
/// one renegotiation (two video m-lines at once) and decodes both.
#[test]
fn an_audio_only_participant_joining_two_video_publishers_decodes_both() {
    let sfu = Sfu::start("sfu-late", "");
    let r = meeting_audio(&sfu, "late", "r1");
    eprintln!("{r}");
    // 3 s at 15 frames a second: about 45 frames from each.
    for from in ["bob_from_ann", "bob_from_cid"] {
        assert!(n(&r[from]) >= 15, "{from}: {r}");
    }
    assert!(n(&r["bob_audio"]) >= 75, "{r}");
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}
