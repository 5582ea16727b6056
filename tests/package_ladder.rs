//! `estuary package` on a small H.264 + AAC clip: the layout, every rendition decodes with
//! ffprobe, key frames at the same times in every rendition and at every segment boundary,
//! asset.json agrees with the files, and the PyPI m3u8 and mpegdash parsers accept the
//! manifests.

mod common;

use std::io::BufRead;

use common::media::*;
use common::*;
use sha2::Digest;

#[test]
fn packages_a_clip_into_an_aligned_ladder() {
    let dir = TempDir::new("package-ladder");
    let input = dir.path().join("clip.mp4");
    av_clip(&input, "640x360", 8);
    let out = dir.path().join("asset-1");
    let args = [&TEST_LADDER_ARGS[..], &["--progress", "--asset-id", "abc"]].concat();
    let o = package(&input, &out, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_partial(&out);

    // Progress: JSON lines with growing fractions in 0..=1, then the done event.
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json line"))
        .collect();
    let (done, progress) = lines.split_last().expect("some lines");
    assert_eq!(done["event"], "done");
    assert_eq!(done["asset"], "abc");
    let duration = done["duration_seconds"].as_f64().expect("duration");
    assert!((duration - 8.0).abs() < 0.05, "{duration}");
    let fractions: Vec<f64> = progress
        .iter()
        .map(|p| p["fraction"].as_f64().expect("fraction"))
        .collect();
    assert!(!fractions.is_empty() && progress.iter().all(|p| p["event"] == "progress"));
    assert!(
        fractions.windows(2).all(|w| w[0] <= w[1])
            && fractions.iter().all(|f| (0.0..=1.0).contains(f))
    );

    // Layout.
    for f in [
        "master.m3u8",
        "manifest.mpd",
        "asset.json",
        "360p/init.mp4",
        "360p/index.m3u8",
        "360p/seg_00001.m4s",
        "240p/seg_00004.m4s",
        "audio/init.mp4",
        "audio/seg_00001.m4s",
        "audio/index.m3u8",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("360p/seg_00005.m4s").exists());

    // Every rendition decodes; key frames only at segment boundaries, the same in each.
    let mut keyframes = Vec::new();
    for (name, w, h) in [("360p", 640, 360), ("240p", 426, 240)] {
        let file = concat_rendition(&out, name, dir.path());
        let (codec, width, height, frames) = probe_stream(&file);
        assert_eq!((codec.as_str(), width, height), ("h264", w, h), "{name}");
        assert_eq!(frames, 240, "{name}: 8 s at 30 fps");
        keyframes.push(keyframe_times(&file));
    }
    assert_eq!(keyframes[0], vec![0.0, 2.0, 4.0, 6.0]);
    assert_eq!(keyframes[0], keyframes[1]);
    let audio = concat_rendition(&out, "audio", dir.path());
    let (codec, _, _, frames) = probe_stream(&audio);
    assert_eq!(codec, "aac");
    assert!(frames >= 370, "{frames} aac frames");

    // Every segment of every video rendition starts with a key frame (decoded on its own).
    for name in ["360p", "240p"] {
        for n in 1..=4 {
            let seg = dir.path().join(format!("{name}-{n}.mp4"));
            let bytes = [
                std::fs::read(out.join(name).join("init.mp4")).expect("init"),
                std::fs::read(out.join(name).join(format!("seg_{n:05}.m4s"))).expect("seg"),
            ]
            .concat();
            std::fs::write(&seg, bytes).expect("write");
            let (_, _, _, frames) = probe_stream(&seg);
            assert_eq!(frames, 60, "{name} segment {n}");
            let keys = keyframe_times(&seg);
            assert_eq!(
                keys.first().copied(),
                Some(f64::from(n - 1) * 2.0),
                "{name} segment {n}: {keys:?}"
            );
        }
    }

    // asset.json: sizes and hashes of every file, sorted, the Merkle root, the ladder.
    let m = manifest(&out);
    assert_eq!(m.asset, "abc");
    assert_eq!(m.segment_seconds, 2.0);
    assert!((m.duration_seconds - 8.0).abs() < 0.05);
    let mut on_disk = Vec::new();
    for entry in walk(&out) {
        let rel = entry
            .strip_prefix(&out)
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        if rel != "asset.json" {
            on_disk.push(rel);
        }
    }
    on_disk.sort();
    let listed: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(listed, on_disk);
    for f in &m.files {
        let bytes = std::fs::read(out.join(&f.path)).expect("file");
        assert_eq!(f.size, bytes.len() as u64, "{}", f.path);
        assert_eq!(
            f.sha256,
            hex::encode(sha2::Sha256::digest(&bytes)),
            "{}",
            f.path
        );
    }
    assert_eq!(m.computed_merkle_root(), Some(m.merkle_root.clone()));
    let names: Vec<(&str, u32, u32, u32)> = m
        .video
        .iter()
        .map(|v| (v.name.as_str(), v.width, v.height, v.segments))
        .collect();
    assert_eq!(names, vec![("360p", 640, 360, 4), ("240p", 426, 240, 4)]);
    assert!(
        m.video
            .iter()
            .all(|v| v.codecs.starts_with("avc1.") && v.codecs.len() == 11 && v.frame_rate == 30.0),
        "{:?}",
        m.video
    );
    assert!(
        m.video
            .iter()
            .all(|v| v.bandwidth >= v.average_bandwidth && v.average_bandwidth > 0)
    );
    assert_eq!(m.audio.len(), 1);
    assert_eq!(
        (
            m.audio[0].codecs.as_str(),
            m.audio[0].channels,
            m.audio[0].sample_rate
        ),
        ("mp4a.40.2", 2, 48000)
    );

    // Independent parsers accept the manifests, and they agree with asset.json.
    let summary = check_manifests(&out);
    let variants = summary["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2);
    for (v, r) in variants.iter().zip(&m.video) {
        assert_eq!(v["uri"], format!("{}/index.m3u8", r.name));
        assert_eq!(v["resolution"], serde_json::json!([r.width, r.height]));
        assert_eq!(v["codecs"], format!("{},mp4a.40.2", r.codecs));
        assert_eq!(v["audio"], "audio");
        assert_eq!(v["frame_rate"], 30.0);
        assert!(v["bandwidth"].as_u64().expect("bw") > r.bandwidth);
    }
    assert_eq!(summary["audio"][0]["uri"], "audio/index.m3u8");
    assert_eq!(summary["media"]["360p/index.m3u8"]["target_duration"], 2);
    assert_eq!(summary["media"]["360p/index.m3u8"]["segments"], 4);
    assert_eq!(summary["dash"]["360p"]["segments"], 4);
    assert_eq!(summary["dash"]["audio"]["content_type"], "audio");

    // The asset folder is never overwritten.
    let again = package(&input, &out, &["--ladder", "240p"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(out.join("asset.json").is_file());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_usage_is_refused_before_any_work() {
    let dir = TempDir::new("package-usage");
    let input = dir.path().join("clip.mp4");
    av_clip(&input, "320x180", 2);
    let out = dir.path().join("a");
    for args in [
        &["--ladder", "720"][..],
        &["--ladder", "333p"],
        &["--segment-seconds", "0"],
        &["--preset", "warp"],
        &["--asset-id", "a/b"],
        // The fleet's asset-id rule: no edge or control plane would take this id.
        &["--asset-id", "my.movie"],
    ] {
        let o = package(&input, &out, args);
        assert_failed_cleanly(&o, &out);
    }
    let o = package(&input, &dir.path().join("missing/parent"), &[]);
    assert_eq!(o.status.code(), Some(1));
    // clap's own usage errors exit with 2.
    let o = run(std::process::Command::new(env!("CARGO_BIN_EXE_estuary")).args(["package", "x"]));
    assert_eq!(o.status.code(), Some(2));
}
