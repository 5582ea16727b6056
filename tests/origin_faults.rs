//! Faults of the origin's dependencies and of its packager, each injected into the real
//! `estuary` binary and the real moto S3 server: the packager runs under a memory limit far
//! below its source's size.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::media::ffmpeg;
use common::*;

/// The `RLIMIT_DATA` the packager runs under: what the kernel lets a process allocate (heap
/// and private writable mappings; shared-library code and files in the page cache do not
/// count). Measured with the debug binary on a 1280x720 rawvideo source and a 360p rung: a
/// 2 s source packages at 140 MiB and fails at 135 MiB, a 36 s source (1.2 GB) exactly the
/// same; before the packager streamed, its resident size grew by one byte per byte of source
/// (a 460 MB source: 525 MB resident; now 75 MB) and by the size of its largest track.
const DATA_LIMIT: u64 = 224 << 20;

/// `estuary package` under `prlimit --data`.
fn package_limited(input: &Path, out: &Path) -> Output {
    run(Command::new("prlimit")
        .arg(format!("--data={DATA_LIMIT}"))
        .arg(env!("CARGO_BIN_EXE_estuary"))
        .arg("package")
        .arg(input)
        .arg("--out")
        .arg(out)
        // 100 Mb/s: the noise keeps x264 near lossless, so the track is larger than the limit
        // too and cutting it into segments must stream as well.
        .args(["--ladder", "360p@100000k", "--segment-seconds", "2"])
        .args(["--preset", "ultrafast"]))
}

#[test]
fn a_source_several_times_larger_than_the_packagers_memory_limit_packages() {
    let dir = TempDir::new("origin-faults-memory");
    // Two seconds of 720p noise as raw video (1.4 MB a frame), then that looped into a source
    // of 36 s: large, but quick to make and to decode.
    let short = dir.path().join("short.nut");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "nullsrc=size=1280x720:rate=25,geq=random(1)*255:128:128",
        "-t",
        "2",
        "-c:v",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        short.to_str().expect("utf-8 path"),
    ]);
    let source = dir.path().join("source.nut");
    ffmpeg(&[
        "-stream_loop",
        "-1",
        "-i",
        short.to_str().expect("utf-8 path"),
        "-t",
        "36",
        "-c",
        "copy",
        source.to_str().expect("utf-8 path"),
    ]);
    let size = std::fs::metadata(&source).expect("source").len();
    assert!(
        size > 4 * DATA_LIMIT,
        "the source ({size} bytes) is not several times the limit"
    );
    // The limit is above the packager's fixed cost: the short clip packages under it.
    let out = package_limited(&short, &dir.path().join("short"));
    assert!(
        out.status.success(),
        "a 2 s clip does not package under {DATA_LIMIT} bytes (the test's limit is too low for this machine): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asset = dir.path().join("large");
    let out = package_limited(&source, &asset);
    assert!(
        out.status.success(),
        "a {size}-byte source does not package under a {DATA_LIMIT}-byte limit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = media::manifest(&asset);
    assert!(
        (m.duration_seconds - 36.0).abs() < 0.5,
        "duration {}",
        m.duration_seconds
    );
    let track: u64 = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("360p/"))
        .map(|f| f.size)
        .sum();
    assert!(
        track > DATA_LIMIT,
        "the 360p track ({track} bytes) is smaller than the limit: the test proves less than it says"
    );
    assert_eq!(m.video.first().map(|v| v.segments), Some(18));
}
