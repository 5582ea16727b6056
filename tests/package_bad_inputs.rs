//! `estuary package` on bad and unusual inputs: each gives a correct asset or exit code 1
//! with a clear message and nothing at the output folder, never a crash or a partial asset.

mod common;

use std::path::Path;

use common::media::*;
use common::*;

fn video_only(path: &Path, size: &str, seconds: &str) {
    test_clip(path, size, seconds, false);
}

#[test]
fn not_a_video_zero_bytes_and_missing_input() {
    let dir = TempDir::new("package-not-video");
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video, just some text\n".repeat(100)).expect("write");
    let out = dir.path().join("a");
    let err = assert_failed_cleanly(&package(&text, &out, &[]), &out);
    assert!(err.contains("not a media file"), "{err}");

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").expect("write");
    let err = assert_failed_cleanly(&package(&empty, &out, &[]), &out);
    assert!(err.contains("empty"), "{err}");

    let err = assert_failed_cleanly(&package(&dir.path().join("nope.mp4"), &out, &[]), &out);
    assert!(err.contains("cannot read input"), "{err}");
}

#[test]
fn truncated_files_fail_cleanly() {
    let dir = TempDir::new("package-truncated");
    // moov at the end: cut in half, the index is gone.
    let clip = dir.path().join("clip.mp4");
    av_clip(&clip, "320x180", 6);
    let bytes = std::fs::read(&clip).expect("read");
    let half = dir.path().join("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).expect("write");
    let out = dir.path().join("a");
    assert_failed_cleanly(&package(&half, &out, &["--ladder", "240p"]), &out);

    // moov first (faststart): the index promises 6 s, the data stops at 60 %.
    let fast = dir.path().join("fast.mp4");
    ffmpeg(&[
        "-i",
        clip.to_str().expect("p"),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        fast.to_str().expect("p"),
    ]);
    let bytes = std::fs::read(&fast).expect("read");
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).expect("write");
    let err = assert_failed_cleanly(&package(&cut, &out, &["--ladder", "240p"]), &out);
    assert!(
        err.contains("truncated") || err.contains("damaged"),
        "{err}"
    );
}

#[test]
fn audio_only_makes_an_audio_only_asset() {
    let dir = TempDir::new("package-audio-only");
    let input = dir.path().join("tone.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "5",
        "-c:a",
        "aac",
        input.to_str().expect("p"),
    ]);
    let out = dir.path().join("a");
    package_ok(&input, &out);
    let m = manifest(&out);
    assert!(m.video.is_empty());
    assert_eq!(m.audio.len(), 1);
    assert!(
        (m.duration_seconds - 5.0).abs() < 0.1,
        "{}",
        m.duration_seconds
    );
    assert_eq!(m.computed_merkle_root(), Some(m.merkle_root.clone()));
    let summary = check_manifests(&out);
    let variants = summary["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 1);
    assert_eq!(variants[0]["codecs"], "mp4a.40.2");
    assert_eq!(variants[0]["uri"], "audio/index.m3u8");
    assert_eq!(summary["dash"].as_object().expect("dash").len(), 1);
    assert_eq!(summary["dash"]["audio"]["content_type"], "audio");
    let file = concat_rendition(&out, "audio", dir.path());
    assert_eq!(probe_stream(&file).0, "aac");
}

#[test]
fn video_only_has_no_audio_group() {
    let dir = TempDir::new("package-video-only");
    let input = dir.path().join("v.mp4");
    video_only(&input, "640x360", "4");
    let out = dir.path().join("a");
    package_ok(&input, &out);
    let m = manifest(&out);
    assert!(m.audio.is_empty());
    assert_eq!(m.video.len(), 2);
    assert!(!out.join("audio").exists());
    let master = std::fs::read_to_string(out.join("master.m3u8")).expect("master");
    assert!(
        !master.contains("EXT-X-MEDIA") && !master.contains("AUDIO="),
        "{master}"
    );
    let summary = check_manifests(&out);
    assert_eq!(summary["variants"][0]["codecs"], m.video[0].codecs);
    assert!(summary["audio"].as_array().expect("audio").is_empty());
}

#[test]
fn odd_dimensions_come_out_even() {
    let dir = TempDir::new("package-odd");
    let input = dir.path().join("odd.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=641x361:rate=25",
        "-t",
        "3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv444p",
        input.to_str().expect("p"),
    ]);
    let out = dir.path().join("a");
    package_ok(&input, &out);
    let m = manifest(&out);
    let sizes: Vec<(u32, u32)> = m.video.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(sizes, vec![(640, 360), (426, 240)]);
    assert_eq!(m.video[0].frame_rate, 25.0);
    for v in &m.video {
        let file = concat_rendition(&out, &v.name, dir.path());
        let (codec, w, h, frames) = probe_stream(&file);
        assert_eq!(
            (codec.as_str(), w, h, frames),
            ("h264", v.width, v.height, 75)
        );
    }
}

#[test]
fn rotated_clips_come_out_upright() {
    let dir = TempDir::new("package-rotated");
    let plain = dir.path().join("plain.mp4");
    video_only(&plain, "640x360", "3");
    let rotated = dir.path().join("rotated.mp4");
    ffmpeg(&[
        "-i",
        plain.to_str().expect("p"),
        "-c",
        "copy",
        "-metadata:s:v",
        "rotate=90",
        rotated.to_str().expect("p"),
    ]);
    let out = dir.path().join("a");
    package_ok(&rotated, &out);
    let m = manifest(&out);
    let sizes: Vec<(u32, u32)> = m.video.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(sizes, vec![(360, 640), (240, 426)]);
    let file = concat_rendition(&out, "360p", dir.path());
    let (_, w, h, _) = probe_stream(&file);
    assert_eq!((w, h), (360, 640));
}

#[test]
fn variable_frame_rate_is_made_constant() {
    let dir = TempDir::new("package-vfr");
    let input = dir.path().join("vfr.mkv");
    // Frames at irregular times: 30 fps with every third frame dropped and jittered stamps.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-t",
        "4",
        "-vf",
        "select='not(eq(mod(n\\,3)\\,2))',setpts='PTS+0.013*sin(N)/TB'",
        "-vsync",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        input.to_str().expect("p"),
    ]);
    let out = dir.path().join("a");
    package_ok(&input, &out);
    let m = manifest(&out);
    let rate = m.video[0].frame_rate;
    assert!(
        rate > 0.0 && rate.fract() == 0.0 || (rate - 29.97).abs() < 0.01,
        "{rate}"
    );
    let file = concat_rendition(&out, &m.video[0].name, dir.path());
    let durations: std::collections::BTreeSet<String> = probe_video(&file, "packet=duration")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        durations.len(),
        1,
        "constant frame duration expected: {durations:?}"
    );
}

#[test]
fn huge_dimensions_are_refused() {
    let dir = TempDir::new("package-huge");
    let input = dir.path().join("huge.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=16000x16000:d=1:r=1",
        "-frames:v",
        "1",
        "-c:v",
        "mjpeg",
        "-pix_fmt",
        "yuvj420p",
        input.to_str().expect("p"),
    ]);
    let out = dir.path().join("a");
    let err = assert_failed_cleanly(&package(&input, &out, &[]), &out);
    assert!(err.contains("16000x16000") && err.contains("8K"), "{err}");
}

#[test]
fn corrupt_frames_in_the_middle_still_make_a_correct_asset() {
    let dir = TempDir::new("package-corrupt");
    let input = dir.path().join("clip.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=48000",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-shortest",
        input.to_str().expect("p"),
    ]);
    // Overwrite a stretch in the middle with garbage (keeping the 188-byte TS packet grid's
    // sync bytes so the demuxer resyncs, as with a damaged broadcast capture).
    let mut bytes = std::fs::read(&input).expect("read");
    let mid = bytes.len() / 2 / 188 * 188;
    for i in mid..(mid + 188 * 40).min(bytes.len()) {
        if i % 188 != 0 {
            bytes[i] = (i * 7919 % 251) as u8;
        }
    }
    std::fs::write(&input, bytes).expect("write");
    let out = dir.path().join("a");
    let o = package(
        &input,
        &out,
        &[
            "--ladder",
            "240p",
            "--segment-seconds",
            "2",
            "--preset",
            "ultrafast",
        ],
    );
    if o.status.success() {
        let m = manifest(&out);
        assert_eq!(m.computed_merkle_root(), Some(m.merkle_root.clone()));
        assert!(m.duration_seconds > 5.0, "{}", m.duration_seconds);
        let file = concat_rendition(&out, "240p", dir.path());
        let (codec, _, _, frames) = probe_stream(&file);
        assert_eq!(codec, "h264");
        assert!(frames >= 170, "{frames}");
        check_manifests(&out);
    } else {
        assert_failed_cleanly(&o, &out);
    }
}

#[test]
fn sigterm_cancels_and_cleans_up() {
    use std::io::BufRead;
    let dir = TempDir::new("package-sigterm");
    let input = dir.path().join("long.mp4");
    av_clip(&input, "640x360", 30);
    let out = dir.path().join("a");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("package")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(["--ladder", "360p,240p", "--preset", "medium", "--progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start estuary package");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Wait until the job is under way (staging folder written, workers encoding).
    let first = lines.next().expect("a progress line").expect("read");
    assert!(first.contains("progress"), "{first}");
    let kill = run(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(kill.status.success());
    let o = child.wait_with_output().expect("wait");
    let err = assert_failed_cleanly(&o, &out);
    assert!(err.contains("cancelled"), "{err}");
}
