//! Helpers for the packaging tests: test media made with the ffmpeg CLI, the real
//! `estuary package`, and ffprobe on the results.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::run;

/// Runs the ffmpeg CLI (quiet, overwrite) and fails the test if it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-nostdin"])
        .args(args));
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The encoder arguments of the test clips: fast H.264 in 4:2:0.
pub const H264_ARGS: [&str; 6] = [
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-pix_fmt",
    "yuv420p",
];

/// The encoder arguments for a clip's audio: AAC, the clip as long as its shortest input.
pub const AAC_ARGS: [&str; 3] = ["-c:a", "aac", "-shortest"];

/// The small ladder the packaging tests use, as `estuary package` arguments.
pub const TEST_LADDER_ARGS: [&str; 6] = [
    "--ladder",
    "360p,240p",
    "--segment-seconds",
    "2",
    "--preset",
    "ultrafast",
];

/// An H.264 test clip of `testsrc2` at 30 fps, `seconds` long, with (AAC) a sine tone or
/// without audio.
pub fn test_clip(path: &Path, size: &str, seconds: &str, with_audio: bool) {
    let video = format!("testsrc2=size={size}:rate=30");
    let mut args = vec!["-f", "lavfi", "-i", &video];
    if with_audio {
        args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    }
    args.extend(["-t", seconds]);
    args.extend(H264_ARGS);
    if with_audio {
        args.extend(AAC_ARGS);
    }
    args.push(path.to_str().expect("utf-8 path"));
    ffmpeg(&args);
}

/// An H.264 + AAC test clip: `testsrc2` with a sine tone.
pub fn av_clip(path: &Path, size: &str, seconds: u32) {
    test_clip(path, size, &seconds.to_string(), true);
}

/// Runs `estuary package INPUT --out OUT` with extra arguments.
pub fn package(input: &Path, out: &Path, extra: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("package")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra))
}

/// `package` with the small test ladder, asserting success.
pub fn package_ok(input: &Path, out: &Path) -> Output {
    let o = package(input, out, &TEST_LADDER_ARGS);
    assert!(
        o.status.success(),
        "estuary package failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Asserts a failed job: exit code 1, a one-line error, and nothing at `out` or beside it.
pub fn assert_failed_cleanly(o: &Output, out: &Path) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("estuary: "), "{stderr}");
    assert!(!out.exists(), "{} exists after a failed job", out.display());
    assert_no_partial(out);
    stderr
}

/// Asserts that no `NAME.partial-*` staging folder is left next to `out`.
pub fn assert_no_partial(out: &Path) {
    let parent = out.parent().expect("parent");
    let name = out
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for entry in std::fs::read_dir(parent).expect("list") {
        let entry = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            !entry.starts_with(&format!("{name}.partial")),
            "staging folder left behind: {entry}"
        );
    }
}

/// Concatenates a rendition's init segment and media segments into one file.
pub fn concat_rendition(asset: &Path, name: &str, into: &Path) -> PathBuf {
    let dir = asset.join(name);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("rendition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "m4s"))
        .collect();
    segments.sort();
    let mut bytes = std::fs::read(dir.join("init.mp4")).expect("init.mp4");
    for s in &segments {
        bytes.extend(std::fs::read(s).expect("segment"));
    }
    let path = into.join(format!("{name}.mp4"));
    std::fs::write(&path, bytes).expect("write");
    path
}

/// ffprobe's view of the first stream of a file: (codec, width, height, frames decoded).
pub fn probe_stream(path: &Path) -> (String, u32, u32, u64) {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path));
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap_or("").to_owned(),
        s["width"].as_u64().unwrap_or(0) as u32,
        s["height"].as_u64().unwrap_or(0) as u32,
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// ffprobe's `entries` (e.g. `packet=duration`) of the first video stream in `path`, one
/// CSV line each.
pub fn probe_video(path: &Path, entries: &str) -> String {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(path));
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The presentation times (seconds) of the key frames of the video in `path`.
pub fn keyframe_times(path: &Path) -> Vec<f64> {
    probe_video(path, "frame=pts_time,key_frame")
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',');
            let key = parts.next()?;
            let t: f64 = parts.next()?.trim().parse().ok()?;
            (key == "1").then_some(t)
        })
        .collect()
}

/// Reads and parses `asset.json`.
pub fn manifest(asset: &Path) -> estuary_common::asset::AssetManifest {
    let text = std::fs::read_to_string(asset.join("asset.json")).expect("asset.json");
    serde_json::from_str(&text).expect("asset.json parses")
}

/// Runs tests/clients/check_manifests.py (PyPI m3u8 and mpegdash) on an asset folder and
/// returns its JSON summary.
pub fn check_manifests(asset: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/check_manifests.py");
    let out = run(Command::new("python3").arg(script).arg(asset));
    assert!(
        out.status.success(),
        "the m3u8/mpegdash parsers refused the manifests (install them with scripts/setup-debian.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary json")
}
