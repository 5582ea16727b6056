//! Faults of the origin's dependencies and of its packager, each injected into the real
//! `estuary` binary and the real moto S3 server: S3 frozen while an asset is published, a
//! packager killed by a signal, a bucket deleted or frozen under a running origin, an asset's
//! objects deleted behind its back, half-published objects left over; and the packager under
//! a memory limit far below its source's size.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::media::ffmpeg;
use common::origin_site::*;
use common::*;

/// An origin keeping its assets in moto's bucket `media` under `prod/`, with short storage
/// timeouts so that faults show quickly.
fn s3_site(name: &str, moto: &Moto) -> OriginSite {
    moto.create_bucket("media");
    let mut site = OriginSite::new(name);
    site.storage = format!(
        "timeout = \"2s\"\nreadiness_timeout = \"1s\"\norphan_min_age = \"1s\"\n{}",
        moto.storage_config("media", "prod")
    );
    site
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn s3_frozen_while_publishing_then_back_the_asset_becomes_ready_without_a_new_upload() {
    let moto = start_moto();
    let mut site = s3_site("origin-faults-publish", &moto);
    site.packaging = "retry_backoff = \"1s\"\nmax_attempts = 20".into();
    let clip = make_clip(site.dir.path(), "clip.mp4", 4, "320x240");
    let origin = site.start();
    assert_eq!(site.upload(&clip, "frozen"), (201, 204));
    // S3 stops answering before packaging ends, so publishing meets it frozen.
    moto.freeze();
    let v = site.wait_for_status("frozen", Duration::from_secs(60), |v| {
        v["state"] == "queued" && v["attempts"].as_u64() >= Some(1)
    });
    moto.thaw();
    assert_eq!(v["state"], "queued", "{v}: {}", origin.log());
    let error = v["error"].as_str().unwrap_or("");
    assert!(error.contains("publishing"), "{v}");
    assert!(v["next_attempt_at"].as_u64().is_some(), "{v}");
    assert_eq!(v["max_attempts"], 20, "{v}");
    assert_eq!(
        files_in(&site.state_dir().join("uploads")),
        1,
        "the upload was not kept"
    );
    // S3 is back: a later attempt publishes the asset, with no new upload.
    let v = site.wait_for_asset("frozen", Duration::from_secs(60));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    assert!(v["attempts"].as_u64() >= Some(2), "{v}");
    let (status, _, body) = fetch(&site.url("/v/frozen/asset.json"), &[]);
    assert_eq!(status, 200);
    let m: estuary_common::asset::AssetManifest = serde_json::from_slice(&body).expect("json");
    let keys = moto.list("media", "prod/v/frozen/");
    assert_eq!(keys.len(), m.files.len() + 2, "{keys:?}");
    for f in &m.files {
        let (status, _, body) = fetch(&site.url(&format!("/v/frozen/{}", f.path)), &[]);
        assert_eq!((status, body.len() as u64), (200, f.size), "{}", f.path);
    }
    assert_eq!(files_in(&site.state_dir().join("uploads")), 0);
}

#[test]
fn a_packager_killed_by_a_signal_is_named_and_retried_and_a_bad_input_is_not() {
    let moto = start_moto();
    let mut site = s3_site("origin-faults-signal", &moto);
    // The packager kills itself with SIGKILL on its first run (as the OOM killer would),
    // then is the real one.
    let marker = site.dir.path().join("killed-once");
    let wrapper = site.dir.path().join("packager.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ ! -e '{}' ]; then : > '{}'; kill -KILL $$; fi\nexec '{}' \"$@\"\n",
            marker.display(),
            marker.display(),
            env!("CARGO_BIN_EXE_estuary")
        ),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    site.packaging = format!(
        "program = \"{}\"\nretry_backoff = \"3s\"",
        wrapper.display()
    );
    let clip = make_clip(site.dir.path(), "clip.mp4", 2, "320x240");
    let origin = site.start();
    assert_eq!(site.upload(&clip, "killed"), (201, 204));
    let v = site.wait_for_status("killed", Duration::from_secs(30), |v| {
        v["state"] != "packaging"
            && v["state"] != "uploading"
            && v["attempts"] == 1
            && v["error"].is_string()
    });
    assert_eq!(v["state"], "queued", "{v}: {}", origin.log());
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("killed by signal 9 (SIGKILL)")),
        "{v}"
    );
    let v = site.wait_for_asset("killed", Duration::from_secs(60));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    assert_eq!(v["attempts"], 2, "{v}");
    // A file that is not media is the input's fault: one attempt, and the upload is gone.
    let junk = site.dir.path().join("junk.mp4");
    std::fs::write(&junk, pattern(50_000)).expect("write");
    assert_eq!(site.upload(&junk, "junk"), (201, 204));
    let v = site.wait_for_asset("junk", Duration::from_secs(30));
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(files_in(&site.state_dir().join("uploads")), 0);
}

/// `GET /readyz` on the admin listener: (status, body, how long it took). curl gives up
/// after 30 s (status 0), so a hang fails the test instead of stalling it.
fn readyz(site: &OriginSite) -> (u16, String, Duration) {
    let started = Instant::now();
    let (body, _, _) = curl(&[
        "-w",
        "\n%{http_code}",
        &format!("http://{}/readyz", site.admin),
    ]);
    let text = String::from_utf8_lossy(&body).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
        started.elapsed(),
    )
}

#[test]
fn readyz_fails_within_its_timeout_when_the_bucket_is_missing_or_s3_is_frozen() {
    let moto = start_moto();
    let site = s3_site("origin-faults-readyz", &moto);
    let origin = site.start();
    // [storage] readiness_timeout = "1s"; the margin covers a slow CI machine.
    let bound = Duration::from_secs(1) + Duration::from_secs(4);
    moto.delete_bucket("media");
    let (status, body, took) = readyz(&site);
    assert_eq!(status, 503, "a missing bucket: {body}: {}", origin.log());
    assert!(body.contains("storage unavailable"), "{body}");
    assert!(took < bound, "took {took:?}");
    assert_eq!(origin.metric("estuary_origin_storage_up", &[]), 0.0);
    moto.create_bucket("media");
    assert_eq!(readyz(&site).0, 200);
    // A frozen S3 accepts connections and never answers: readiness fails in its timeout.
    moto.freeze();
    let (status, body, took) = readyz(&site);
    moto.thaw();
    assert_eq!(status, 503, "a frozen S3: {body}");
    assert!(took < bound, "took {took:?}");
    assert!(body.contains("did not answer"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&site).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after S3 came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(origin.metric("estuary_origin_storage_up", &[]), 1.0);
}

#[test]
fn an_asset_whose_objects_vanished_is_reported_missing_and_can_be_uploaded_again() {
    let moto = start_moto();
    let site = s3_site("origin-faults-vanished", &moto);
    let clip = make_clip(site.dir.path(), "clip.mp4", 2, "320x240");
    let origin = site.start();
    assert_eq!(site.upload(&clip, "gone"), (201, 204));
    let v = site.wait_for_asset("gone", Duration::from_secs(60));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    let segment = site.url("/v/gone/240p/seg_00001.m4s");
    let (status, _, _) = fetch(&segment, &[]);
    assert_eq!(status, 200);
    // Every object goes, behind the origin's back (its asset.json is still cached).
    moto.delete_prefix("media", "prod/v/gone/");
    let (status, _, body) = fetch(&segment, &[]);
    assert_eq!(
        status,
        503,
        "a file listed but gone: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("missing from the storage"));
    // The cached manifest was dropped: the origin no longer claims the asset.
    let (status, _, _) = fetch(&site.url("/v/gone/asset.json"), &[]);
    assert_eq!(status, 404);
    let v = site.asset_status("gone");
    assert_eq!(v["state"], "missing", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("gone from the storage")),
        "{v}"
    );
    // The same id can be uploaded again (no 409), and is served again.
    assert_eq!(site.upload(&clip, "gone"), (201, 204));
    let v = site.wait_for_asset("gone", Duration::from_secs(60));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    let (status, _, again) = fetch(&segment, &[]);
    assert_eq!(status, 200);
    let (_, _, body) = fetch(&site.url("/v/gone/asset.json"), &[]);
    let m: estuary_common::asset::AssetManifest = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        m.file("240p/seg_00001.m4s").map(|f| f.size),
        Some(again.len() as u64)
    );
}

#[test]
fn half_published_objects_are_removed_at_start_and_published_assets_are_kept() {
    let moto = start_moto();
    let site = s3_site("origin-faults-orphans", &moto);
    let scratch = site.dir.path();
    // A publish that failed half way: files, no asset.json, no job.
    for (path, data) in fake_asset_files().iter().take(3) {
        moto.put("media", &format!("prod/v/half/{path}"), data, scratch);
    }
    // A published asset: the same files and its asset.json.
    let files = fake_asset_files();
    for (path, data) in &files {
        moto.put("media", &format!("prod/v/whole/{path}"), data, scratch);
    }
    let manifest = serde_json::to_vec(&manifest_for("whole", &files)).expect("json");
    moto.put("media", "prod/v/whole/asset.json", &manifest, scratch);
    // Older than [storage] orphan_min_age = "1s" (S3 times are whole seconds).
    std::thread::sleep(Duration::from_millis(2100));
    let origin = site.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moto.list("media", "prod/v/half/").is_empty() {
        assert!(
            Instant::now() < deadline,
            "half-published objects are still there: {}",
            origin.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(moto.list("media", "prod/v/whole/").len(), files.len() + 1);
    for (path, data) in &files {
        let (status, _, body) = fetch(&site.url(&format!("/v/whole/{path}")), &[]);
        assert_eq!(status, 200, "{path}");
        assert!(body == *data, "{path}");
    }
    assert_eq!(
        origin.metric("estuary_origin_orphan_objects_removed_total", &[]),
        3.0
    );
}

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
