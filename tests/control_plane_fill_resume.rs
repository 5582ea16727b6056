//! A pre-positioning fill interrupted by kill -9 of the edge resumes after a restart: the files
//! already staged are kept, the one cut short is completed with a range request, and every file
//! is verified whole before the asset counts as present. A second edge then fills from its
//! peer, and both serve the asset with the origin stopped.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::*;

/// Bytes under `dir`, recursively.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The asset: two small playlists and two 3 MB segments of distinct bytes.
fn feature_files() -> Vec<(String, Vec<u8>)> {
    let segment = |seed: u8| -> Vec<u8> {
        (0..3_000_000usize)
            .map(|i| ((i * 131 + usize::from(seed) * 7) % 253) as u8)
            .collect()
    };
    vec![
        (
            "master.m3u8".into(),
            b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n360p/index.m3u8\n".to_vec(),
        ),
        (
            "360p/index.m3u8".into(),
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_00001.m4s\n#EXTINF:2.0,\nseg_00002.m4s\n#EXT-X-ENDLIST\n".to_vec(),
        ),
        ("360p/seg_00001.m4s".into(), segment(1)),
        ("360p/seg_00002.m4s".into(), segment(2)),
    ]
}

/// The JSON log lines of an edge whose message contains `text`.
fn log_lines(log: &Path, text: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

#[test]
fn an_interrupted_fill_resumes_after_kill_9_and_edges_serve_without_the_origin() {
    let cp = ControlPlane::new("cp-resume");
    let _cp = cp.start();
    let mut origin_site = OriginSite::new("resume-origin");
    origin_site.extra = joined(&cp, &cred("origin-test"));
    let files = feature_files();
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    write_asset(&origin_site.storage_root(), "feature", &files);
    let mut origin = origin_site.start();
    // A slow fill (1 MiB/s) so that the kill lands inside the first segment.
    let mut a = Site::new("resume-a");
    a.node_id = "edge-a".into();
    a.extra = format!(
        "{}[prepositioning]\nmax_rate = \"1MiB\"\n",
        joined(&cp, LAB)
    );
    let mut edge_a = a.start();
    for node in ["edge-a", "origin-test"] {
        cp.wait_node(node, true, Duration::from_secs(20));
    }
    let text = cp.cli(&["push", "feature", "--replicas", "1"]);
    assert!(text.contains("placed on"), "{text}");

    let staging = a.content.join(".fill/feature");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir_size(&staging) < 1_000_000 {
        assert!(Instant::now() < deadline, "the fill never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    edge_a.signal("KILL");
    edge_a.wait_exit(Duration::from_secs(10));
    let staged = dir_size(&staging);
    assert!(
        staged >= 1_000_000 && staged < total,
        "staged {staged} of {total}"
    );
    assert!(!a.content.join("v/feature").exists(), "served half-filled");

    let _edge_a = a.start();
    cp.wait_fill("feature", "edge-a", "present");
    for (path, data) in &files {
        let on_disk = std::fs::read(a.content.join("v/feature").join(path)).expect("filled");
        assert!(&on_disk == data, "{path} differs after the resumed fill");
    }
    assert!(!staging.exists(), "the staging folder stayed behind");
    let log = a.dir.path().join("edge.log");
    let resumed = log_lines(&log, "A fill resumed from staged files");
    assert_eq!(resumed.len(), 1, "no resume logged");
    let kept = resumed[0]["kept_bytes"].as_u64().unwrap_or(0);
    assert!(
        kept >= staged.min(1_000_000) && kept < total,
        "kept {kept} of the {staged} staged bytes"
    );
    let ranged = log_lines(&log, "completed with a range request");
    assert!(
        ranged.iter().any(|l| l["file"] == "360p/seg_00001.m4s"),
        "the cut segment was not completed with a range request: {ranged:?}"
    );

    // A second edge of the site fills from its peer; then the origin stops and both edges
    // serve the asset from their stores.
    let mut b = Site::new("resume-b");
    b.node_id = "edge-b".into();
    b.extra = joined(&cp, LAB);
    let _edge_b = b.start();
    cp.wait_node("edge-b", true, Duration::from_secs(20));
    cp.cli(&["push", "feature", "--replicas", "2"]);
    cp.wait_fill("feature", "edge-b", "present");
    origin.signal("KILL");
    origin.wait_exit(Duration::from_secs(10));
    for site in [&a, &b] {
        let token = site.sign("/v/feature/*", &[]);
        let (status, _, body) = fetch(
            &site.url("/v/feature/360p/seg_00002.m4s"),
            &["-b", &format!("estuary_token={token}")],
        );
        assert_eq!(status, 200, "{}", site.node_id);
        assert!(body == files[3].1, "{} served other bytes", site.node_id);
    }
}
