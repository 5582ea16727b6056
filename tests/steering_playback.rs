//! Content Steering end to end in headless Chromium: two edges in one site hold a packaged
//! asset and report to a control plane; the steering service follows the control plane's
//! state feed. hls.js (then dash.js) plays the steered manifest from the first-ranked edge;
//! that edge is killed mid-playback; the control plane marks it down, the steering server
//! drops it from the pathway priority, and playback goes on from the other edge without a
//! stall longer than 2 seconds. Then the control plane itself is stopped and steering goes on
//! answering from its last good snapshot. Small player buffers (4 s) make the player fetch segments all
//! along, so the media after the kill must come from the surviving edge.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cp_site::*;
use common::media::{av_clip, package_ok};
use common::steering_site::*;
use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Polls the playback answer until it lists exactly `nodes` (in any order); returns the
/// ranked node ids.
fn wait_for_edges(steering: &SteeringSite, nodes: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, ids, v) = steering.playback_edges("movie");
        let mut sorted = ids.clone();
        sorted.sort();
        if status == 200 && sorted == nodes {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "steering never listed {nodes:?}: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs tests/clients/steer_play.mjs; calls `on_played` when the player has played
/// `signal_at` seconds; returns the final report.
fn play_and_kill(
    kind: &str,
    url: &str,
    signal_at: u32,
    total: u32,
    mut on_played: impl FnMut(),
) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/steer_play.mjs");
    let mut child = Command::new("node")
        .args([
            script,
            kind,
            url,
            &signal_at.to_string(),
            &total.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (scripts/test.sh installs it and the players)");
    let stdout = child.stdout.take().expect("stdout");
    let mut last = String::new();
    let mut signalled = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if !signalled && line.contains("\"event\":\"played\"") {
            signalled = true;
            on_played();
        }
        last = line;
    }
    let out = child.wait_with_output().expect("wait");
    let report: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    assert!(
        signalled && out.status.success() && report["ok"] == true,
        "{kind} playback of {url} failed: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn host(site: &Site) -> String {
    format!("127.0.0.1:{}", site.http.port())
}

/// Checks a report: no long stall, media after the kill only from the surviving edge.
fn check_failover(kind: &str, report: &serde_json::Value, killed: &Site, survivor: &Site) {
    let stall = report["longestStallMs"].as_f64().expect("stall");
    assert!(
        stall < 2000.0,
        "{kind}: a stall of {stall} ms after the kill: {report}"
    );
    let before = &report["mediaHosts"];
    assert!(
        before[host(killed)].as_u64().unwrap_or(0) > 0,
        "{kind}: playback did not start on the first-ranked edge: {report}"
    );
    let after = &report["mediaHostsAfterSignal"];
    assert!(
        after[host(survivor)].as_u64().unwrap_or(0) >= 2,
        "{kind}: no media came from the surviving edge after the kill: {report}"
    );
    assert!(
        report["steeringRequests"].as_u64().unwrap_or(0) >= 2,
        "{kind}: the player never reloaded the steering manifest: {report}"
    );
}

#[test]
fn players_move_to_the_other_edge_when_theirs_is_killed() {
    let cp = ControlPlane::new("steer-play-cp");
    let cp_process = cp.start();

    let media = TempDir::new("steer-play-media");
    let clip = media.path().join("clip.mp4");
    av_clip(&clip, "640x360", 30);
    let asset = media.path().join("movie");
    package_ok(&clip, &asset);

    let edge = |name: &str, id: &str| {
        let mut site = edge_with_control_plane(name, &cp.url(), LAB);
        site.node_id = id.into();
        site.extra.push_str("[cors]\nallow_origins = [\"*\"]\n");
        copy_dir(&asset, &site.content.join("v/movie"));
        site
    };
    let a = edge("steer-play-a", "edge-a");
    let b = edge("steer-play-b", "edge-b");
    let mut procs = [Some(a.start()), Some(b.start())];
    for id in ["edge-a", "edge-b"] {
        cp.wait_node(id, true, Duration::from_secs(20));
    }

    let mut steering = SteeringSite::new("steer-play");
    steering.with_control_plane(&cp.url(), &cred("steering-test"));
    steering.steering = "scheme = \"http\"\nttl = \"1s\"\npathways = 2\n".into();
    let _steering = steering.start();
    // Steering registers with the control plane like any node, and is checked like one.
    let node = cp.wait_node("steering-test", true, Duration::from_secs(20));
    assert_eq!(node["role"], "steering", "{node}");

    for (kind, file) in [("hls", "steered.m3u8"), ("dash", "steered.mpd")] {
        let ranked = wait_for_edges(&steering, &["edge-a", "edge-b"]);
        let first = if ranked[0] == "edge-a" { 0 } else { 1 };
        let (killed, survivor) = if first == 0 { (&a, &b) } else { (&b, &a) };
        let url = steering.url(&format!("/v1/playback/movie/{file}"));
        let report = play_and_kill(kind, &url, 4, 16, || {
            // SIGKILL: no drain, connections refused from now on.
            if let Some(mut p) = procs[first].take()
                && let Some(mut c) = p.child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        eprintln!("{kind} report: {report}");
        check_failover(kind, &report, killed, survivor);
        // The control plane saw it go, and steering no longer offers it.
        cp.wait_node(&ranked[0], false, Duration::from_secs(10));
        assert_eq!(
            wait_for_edges(&steering, &[&ranked[1]]),
            [ranked[1].clone()]
        );
        // Back up for the next player.
        procs[first] = Some(killed.start());
        cp.wait_node(&ranked[0], true, Duration::from_secs(20));
    }

    // The control plane goes away: steering keeps answering from its last good snapshot.
    wait_for_edges(&steering, &["edge-a", "edge-b"]);
    drop(cp_process);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_get_raw(steering.http, "/readyz").expect("readyz").0,
        200
    );
    let ranked = wait_for_edges(&steering, &["edge-a", "edge-b"]);
    assert_eq!(ranked.len(), 2);
    let (status, _, body) = fetch(&steering.url("/v1/playback/movie/steered.m3u8"), &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}
