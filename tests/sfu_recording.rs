//! Recording (issue 20): a room published over WHIP (aiortc) is recorded by the SFU without
//! transcoding, uploaded to a real origin, packaged into an asset, and played with hls.js in
//! Chromium through an edge. A recording left in the folder (a crash) is uploaded at the
//! next start. The refusals: tokens, a running recording, no recording configured, too many.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::origin_site::*;
use common::sfu::*;
use common::*;

const REC_TOKEN: &str = "sfu-recorder-token-0123456789";

fn rec_token(room: &str) -> String {
    sign(&format!("/recordings/{room}"), "k1", KEY_HEX)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null)
}

fn recording_table(dir: &std::path::Path, origin: &str, extra: &str) -> String {
    format!(
        "[recording]\ndir = \"{}\"\norigin = \"{origin}\"\nupload_token = \"{REC_TOKEN}\"\n{extra}",
        dir.display()
    )
}

/// Polls `GET /recordings/<room>` until `done` accepts its JSON (or two minutes pass).
fn wait_recording(
    sfu: &Sfu,
    room: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, _, body) = sfu.request(
            "GET",
            &format!("/recordings/{room}"),
            Some(&rec_token(room)),
            None,
            "",
        );
        let v = json(&body);
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_recorded_room_becomes_an_asset_that_plays_through_an_edge() {
    let mut site = OriginSite::new("rec-origin");
    site.extra = format!("[auth.upload_tokens.sfu]\ntoken = \"{REC_TOKEN}\"\nassets = \"rec-*\"\n");
    let origin = site.start();
    let spool = TempDir::new("rec-spool");
    // A recording a crash left behind (a real Matroska file from ffmpeg): uploaded at start.
    let leftover = spool.path().join("rec-left-1.mkv");
    let out = run(Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=4",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=4",
            "-c:v",
            "libvpx",
            "-b:v",
            "300k",
            "-c:a",
            "libopus",
        ])
        .arg(&leftover));
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sfu = Sfu::start("sfu-rec", &recording_table(spool.path(), &site.url(""), ""));
    let _slot = ClientSlot::take();
    let mut publisher = sfu
        .client_command("publish", "r1", &["--seconds", "60", "--source", "testsrc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let received = sfu.wait_metric("estuary_sfu_received_packets_total", &[], |v| v > 50.0);
    assert!(
        received > 50.0,
        "the publisher never sent: {}",
        sfu.process.log()
    );

    let (status, head, body) =
        sfu.request("POST", "/recordings/r1", Some(&rec_token("r1")), None, "");
    assert_eq!(status, 201, "{head}{body}{}", sfu.process.log());
    let started = json(&body);
    let asset = started["asset"].as_str().expect("asset id").to_owned();
    assert!(asset.starts_with("rec-r1-"), "{started}");
    // Written as it comes: the file grows. About six seconds are recorded.
    let v = wait_recording(&sfu, "r1", |v| v["bytes"].as_u64().unwrap_or(0) > 10_000);
    assert_eq!(v["state"], "recording", "{v}: {}", sfu.process.log());
    std::thread::sleep(Duration::from_secs(6));
    let v = wait_recording(&sfu, "r1", |_| true);
    assert_eq!(v["state"], "recording", "{v}: {}", sfu.process.log());
    let (status, _, body) =
        sfu.request("DELETE", "/recordings/r1", Some(&rec_token("r1")), None, "");
    assert_eq!(status, 202, "{body}");
    let v = wait_recording(&sfu, "r1", |v| {
        v["state"] == "uploaded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "uploaded", "{v}: {}", sfu.process.log());
    publisher.kill().expect("kill");
    let _ = publisher.wait();

    // The origin packaged both into assets.
    for id in [asset.as_str(), "rec-left-1"] {
        let v = site.wait_for_asset(id, Duration::from_secs(240));
        assert_eq!(v["state"], "ready", "{id}: {v}: {}", origin.log());
    }
    assert_eq!(
        sfu.metric("estuary_sfu_recordings_total", &["outcome=\"uploaded\""]),
        2.0
    );
    // Nothing is left in the folder once the origin has it.
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .expect("spool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".mkv"))
        .collect();
    assert!(left.is_empty(), "left in recording.dir: {left:?}");

    // Through an edge that fills from the origin: ffprobe sees video and audio lasting
    // about as long as the recording, and hls.js plays it.
    let mut edge_site = Site::new("rec-edge");
    edge_site.protected.clear();
    edge_site.extra = format!(
        "[cors]\nallow_origins = [\"*\"]\n[cache]\nram = \"64MiB\"\n[upstream]\norigin = [\"{}\"]\n",
        site.url("")
    );
    let _edge = edge_site.start();
    let master = edge_site.url(&format!("/v/{asset}/master.m3u8"));
    let out = run(Command::new("ffprobe").args([
        "-v",
        "error",
        "-show_entries",
        "format=duration:stream=codec_type",
        "-of",
        "json",
        &master,
    ]));
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let kinds: Vec<&str> = probe["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["codec_type"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kinds.contains(&"video") && kinds.contains(&"audio"),
        "{probe}"
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!(duration >= 4.0, "the recording lasts {duration} s: {probe}");
    eprintln!("recorded {asset}: {duration} s, {kinds:?}");
    play_in_chromium("hls", &master, 2);
}

#[test]
fn recording_requests_are_checked_and_refused() {
    let spool = TempDir::new("rec-spool-refusals");
    // No origin listens there: nothing reaches an upload in this test.
    let sfu = Sfu::start(
        "sfu-rec-refusals",
        &recording_table(spool.path(), "http://127.0.0.1:9", "max_active = 1\n"),
    );
    let path = "/recordings/r1";
    assert_eq!(sfu.request("POST", path, None, None, "").0, 401);
    // A participant's room token cannot record.
    assert_eq!(
        sfu.request("POST", path, Some(&room_token("r1")), None, "")
            .0,
        403
    );
    // Another room's recording token neither.
    assert_eq!(
        sfu.request("POST", path, Some(&rec_token("r2")), None, "")
            .0,
        403
    );
    assert_eq!(
        sfu.request(
            "POST",
            "/recordings/a%20b",
            Some(&rec_token("a b")),
            None,
            ""
        )
        .0,
        400
    );
    assert_eq!(
        sfu.request("GET", path, Some(&rec_token("r1")), None, "").0,
        404
    );
    assert_eq!(
        sfu.request("DELETE", path, Some(&rec_token("r1")), None, "")
            .0,
        404
    );

    let (status, _, body) = sfu.request("POST", path, Some(&rec_token("r1")), None, "");
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        sfu.request("POST", path, Some(&rec_token("r1")), None, "")
            .0,
        409
    );
    // recording.max_active = 1.
    assert_eq!(
        sfu.request("POST", "/recordings/r2", Some(&rec_token("r2")), None, "")
            .0,
        503
    );
    assert_eq!(
        sfu.request("DELETE", path, Some(&rec_token("r1")), None, "")
            .0,
        202
    );
    // Nobody published: the recording fails and says why; nothing is uploaded.
    let v = wait_recording(&sfu, "r1", |v| {
        v["state"] == "failed" || v["state"] == "uploaded"
    });
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("no media"),
        "{v}"
    );
    assert_eq!(
        sfu.metric("estuary_sfu_recordings_total", &["outcome=\"failed\""]),
        1.0
    );
    // The slot is free again.
    assert_eq!(
        sfu.request("POST", "/recordings/r2", Some(&rec_token("r2")), None, "")
            .0,
        201
    );

    // Without [recording], recording is refused.
    let plain = Sfu::start("sfu-rec-none", "");
    assert_eq!(
        plain
            .request("POST", path, Some(&rec_token("r1")), None, "")
            .0,
        404
    );
}
