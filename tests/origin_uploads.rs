//! Uploads to the real `estuary origin` over TUS 1.0 (curl for the protocol's rules, tuspy as
//! an independent resuming client), the durable job queue across kill -9, and the packaged
//! asset served and decodable (ffprobe).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::origin_site::*;
use common::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth() -> String {
    format!("Authorization: Bearer {UPLOAD_TOKEN}")
}

/// A TUS request with curl: (status, headers).
fn tus(
    method: &str,
    url: &str,
    headers: &[String],
    body: Option<&Path>,
) -> (u16, Vec<(String, String)>) {
    // curl waits for the body a HEAD response announces unless it is told it is a HEAD (-I).
    let mut args: Vec<String> = if method == "HEAD" {
        vec!["-I".into()]
    } else {
        vec!["-X".into(), method.into()]
    };
    for h in headers {
        args.push("-H".into());
        args.push(h.clone());
    }
    if let Some(file) = body {
        args.push("-H".into());
        args.push("Content-Type: application/offset+octet-stream".into());
        args.push("--data-binary".into());
        args.push(format!("@{}", file.display()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, h, _) = fetch(url, &refs);
    (status, h)
}

const RESUMABLE: &str = "Tus-Resumable: 1.0.0";

fn create(site: &OriginSite, length: u64, asset: &str) -> String {
    let (status, h) = tus(
        "POST",
        &site.url("/uploads/"),
        &[
            RESUMABLE.into(),
            auth(),
            format!("Upload-Length: {length}"),
            format!(
                "Upload-Metadata: filename {},asset {}",
                b64("clip.mp4"),
                b64(asset)
            ),
        ],
        None,
    );
    assert_eq!(status, 201, "{h:?}");
    // A path: the client resolves it against the URL it used, never against a Host header.
    let location = header(&h, "location").expect("Location");
    assert!(location.starts_with("/uploads/"), "{location}");
    site.url(location)
}

fn offset_of(url: &str) -> u64 {
    let (status, h) = tus("HEAD", url, &[RESUMABLE.into(), auth()], None);
    assert_eq!(status, 200, "{h:?}");
    header(&h, "upload-offset")
        .and_then(|v| v.parse().ok())
        .expect("Upload-Offset")
}

#[test]
fn tus_protocol_rules() {
    let site = OriginSite::new("origin-tus");
    let _origin = site.start();
    let endpoint = site.url("/uploads/");
    // Discovery needs no token.
    let (status, h) = tus("OPTIONS", &endpoint, &[], None);
    assert_eq!(status, 204);
    assert_eq!(header(&h, "tus-version"), Some("1.0.0"));
    assert!(
        header(&h, "tus-extension").is_some_and(|e| e.contains("creation")
            && e.contains("termination")
            && e.contains("checksum"))
    );
    let meta = format!("Upload-Metadata: filename {}", b64("a.mp4"));
    let base = [
        RESUMABLE.to_owned(),
        "Upload-Length: 10".to_owned(),
        meta.clone(),
    ];
    // Tokens, protocol version, metadata, size.
    assert_eq!(tus("POST", &endpoint, &base, None).0, 401);
    let wrong = [
        &base[..],
        &["Authorization: Bearer not-the-token-at-all".to_owned()],
    ]
    .concat();
    assert_eq!(tus("POST", &endpoint, &wrong, None).0, 403);
    let no_version = [auth(), "Upload-Length: 10".into(), meta.clone()];
    assert_eq!(tus("POST", &endpoint, &no_version, None).0, 412);
    let no_name = [RESUMABLE.into(), auth(), "Upload-Length: 10".into()];
    assert_eq!(tus("POST", &endpoint, &no_name, None).0, 400);
    let bad_asset = [
        RESUMABLE.into(),
        auth(),
        "Upload-Length: 10".into(),
        format!("{meta},asset {}", b64("../etc")),
    ];
    assert_eq!(tus("POST", &endpoint, &bad_asset, None).0, 400);
    let huge = [
        RESUMABLE.into(),
        auth(),
        "Upload-Length: 999999999999999".into(),
        meta,
    ];
    assert_eq!(tus("POST", &endpoint, &huge, None).0, 413);

    let url = create(&site, 10, "proto");
    assert_eq!(offset_of(&url), 0);
    let dir = site.dir.path();
    let part = dir.join("part");
    std::fs::write(&part, b"hello").expect("write");
    let patch = |headers: &[String]| {
        let all = [&[RESUMABLE.to_owned(), auth()][..], headers].concat();
        tus("PATCH", &url, &all, Some(&part)).0
    };
    // Wrong offset, wrong checksum, unknown algorithm: refused, nothing written.
    assert_eq!(patch(&["Upload-Offset: 3".into()]), 409);
    let sha1_of_other = {
        use sha1::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b"other"))
    };
    assert_eq!(
        patch(&[
            "Upload-Offset: 0".into(),
            format!("Upload-Checksum: sha1 {sha1_of_other}")
        ]),
        460
    );
    assert_eq!(
        patch(&[
            "Upload-Offset: 0".into(),
            "Upload-Checksum: crc32 AAAA".into()
        ]),
        400
    );
    assert_eq!(offset_of(&url), 0);
    // A good chunk with a checksum, then the rest.
    let sha1_of_hello = {
        use sha1::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b"hello"))
    };
    assert_eq!(
        patch(&[
            "Upload-Offset: 0".into(),
            format!("Upload-Checksum: sha1 {sha1_of_hello}")
        ]),
        204
    );
    assert_eq!(offset_of(&url), 5);
    // Too long for the declared length.
    std::fs::write(&part, b"0123456789").expect("write");
    assert_eq!(patch(&["Upload-Offset: 5".into()]), 413);
    assert_eq!(offset_of(&url), 5);
    // Termination.
    let terminate = [RESUMABLE.to_owned(), auth()];
    assert_eq!(tus("DELETE", &url, &terminate, None).0, 204);
    assert_eq!(tus("HEAD", &url, &terminate, None).0, 404);
    assert!(
        site.asset_status("proto").is_null(),
        "a terminated upload left its asset"
    );
}

/// ffprobe decodes the packaged asset's master playlist through `base`: (video streams, audio
/// streams, duration).
fn probe(url: &str) -> (usize, usize, f64) {
    let out = run(Command::new("ffprobe").args([
        "-v",
        "error",
        "-show_entries",
        "stream=codec_type:format=duration",
        "-of",
        "json",
        url,
    ]));
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let count = |t: &str| streams.iter().filter(|s| s["codec_type"] == t).count();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (count("video"), count("audio"), duration)
}

#[test]
fn an_interrupted_upload_resumes_after_kill_9_and_becomes_a_ready_asset() {
    let site = OriginSite::new("origin-resume");
    let clip = make_clip(site.dir.path(), "clip.mp4", 6, "320x240");
    let size = std::fs::metadata(&clip).expect("clip").len();
    let mut origin = site.start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/tus_upload.py");
    // tuspy sends about half, in checksummed chunks, and stops.
    let out = run(Command::new("python3").args([
        script,
        "start",
        &site.url("/uploads/"),
        UPLOAD_TOKEN,
        clip.to_str().expect("path"),
        "resumed",
        &(size / 2).to_string(),
    ]));
    assert!(
        out.status.success(),
        "tuspy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let url = stdout.lines().next().expect("upload URL").trim().to_owned();
    let sent: u64 = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("offset");
    assert!(sent > 0 && sent < size, "sent {sent} of {size}");
    assert_eq!(site.asset_status("resumed")["state"], "uploading");

    // The origin dies hard and comes back: the offset it acknowledged is kept.
    origin.signal("KILL");
    origin.wait_exit(Duration::from_secs(10));
    let _origin = site.start();
    assert_eq!(offset_of(&url), sent);

    // A separate tuspy process resumes from the server's offset and finishes.
    let out = run(Command::new("python3").args([
        script,
        "resume",
        &url,
        UPLOAD_TOKEN,
        clip.to_str().expect("path"),
    ]));
    assert!(
        out.status.success(),
        "tuspy resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        stdout
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u64>().ok()),
        Some(sent)
    );

    let status = site.wait_for_asset("resumed", Duration::from_secs(240));
    assert_eq!(status["state"], "ready", "{status}: {}", _origin.log());
    assert_eq!(status["manifests"]["hls"], "/v/resumed/master.m3u8");
    let (video, audio, duration) = probe(&site.url("/v/resumed/master.m3u8"));
    assert!(
        video >= 1 && audio >= 1,
        "streams: {video} video, {audio} audio"
    );
    assert!((duration - 6.0).abs() < 1.0, "duration {duration}");
    // The upload's bytes are gone once packaged.
    let left: Vec<_> = std::fs::read_dir(site.state_dir().join("uploads"))
        .expect("uploads dir")
        .collect();
    assert!(left.is_empty(), "upload files left: {left:?}");
}

/// Uploads a whole file in one PATCH with curl; returns the upload URL.
fn upload_whole(site: &OriginSite, file: &Path, asset: &str) -> String {
    let size = std::fs::metadata(file).expect("file").len();
    let url = create(site, size, asset);
    let (status, h) = tus(
        "PATCH",
        &url,
        &[RESUMABLE.into(), auth(), "Upload-Offset: 0".into()],
        Some(file),
    );
    assert_eq!(status, 204, "{h:?}");
    url
}

#[test]
fn kill_9_during_packaging_runs_the_job_again_to_a_ready_asset() {
    let site = OriginSite::new("origin-kill");
    let clip = make_clip(site.dir.path(), "clip.mp4", 10, "320x240");
    let mut origin = site.start();
    upload_whole(&site, &clip, "killed");
    // Wait until the job is packaging, then kill the origin hard.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = site.asset_status("killed");
        if v["state"] == "packaging" {
            break;
        }
        assert!(
            v["state"] != "ready",
            "packaging ended before the kill: {v}"
        );
        assert!(std::time::Instant::now() < deadline, "never packaging: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    origin.signal("KILL");
    origin.wait_exit(Duration::from_secs(10));
    // The packager it was running notices and stops rather than running on as an orphan.
    let work = site.state_dir().join("work");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(Command::new("pgrep").args(["-f", work.to_str().expect("path")]));
        if !out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an orphaned packager still runs: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // After the restart nothing of the interrupted job is visible, and the job runs again.
    let origin = site.start();
    let (status, _, _) = fetch(&site.url("/v/killed/master.m3u8"), &[]);
    assert_eq!(status, 404, "a half-made asset is visible");
    let v = site.wait_for_asset("killed", Duration::from_secs(240));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    assert_eq!(v["attempts"], 2, "{v}");
    let (video, audio, _) = probe(&site.url("/v/killed/master.m3u8"));
    assert!(video >= 1 && audio >= 1);
}

#[test]
fn an_upload_that_is_not_a_video_fails_cleanly() {
    let site = OriginSite::new("origin-bad");
    let origin = site.start();
    let junk = site.dir.path().join("junk.mp4");
    std::fs::write(&junk, pattern(50_000)).expect("write");
    upload_whole(&site, &junk, "junk");
    let v = site.wait_for_asset("junk", Duration::from_secs(60));
    assert_eq!(v["state"], "failed", "{v}: {}", origin.log());
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no reason given: {v}"
    );
    // Nothing is published or left behind.
    assert!(
        !site.storage_root().join("v/junk").exists(),
        "a failed asset left files"
    );
    let (status, _, _) = fetch(&site.url("/v/junk/master.m3u8"), &[]);
    assert_eq!(status, 404);
    let work: Vec<_> = std::fs::read_dir(site.state_dir().join("work"))
        .expect("work dir")
        .collect();
    assert!(work.is_empty(), "work left: {work:?}");
}

#[test]
fn an_upload_is_packaged_into_an_s3_compatible_bucket_and_served_from_it() {
    let moto = start_moto();
    moto.create_bucket("media");
    let mut site = OriginSite::new("origin-s3-publish");
    site.storage = moto.storage_config("media", "prod");
    let clip = make_clip(site.dir.path(), "clip.mp4", 6, "320x240");
    let origin = site.start();
    upload_whole(&site, &clip, "ins3");
    let v = site.wait_for_asset("ins3", Duration::from_secs(240));
    assert_eq!(v["state"], "ready", "{v}: {}", origin.log());
    // The objects are in the bucket (listed by boto3), every file of asset.json, itself and
    // its signature, which verifies with the origin's key.
    let (status, _, body) = fetch(&site.url("/v/ins3/asset.json"), &[]);
    assert_eq!(status, 200);
    let m: estuary_common::asset::AssetManifest = serde_json::from_slice(&body).expect("json");
    let keys = moto.list("media", "prod/v/ins3/");
    assert_eq!(keys.len(), m.files.len() + 2, "{keys:?}");
    assert!(keys.contains(&"prod/v/ins3/asset.json".to_owned()));
    let (status, _, signature) = fetch(&site.url("/v/ins3/asset.json.sig"), &[]);
    assert_eq!(status, 200);
    let trusted = estuary_common::signing::ManifestKeys::from_hex(
        &[(MANIFEST_KEY_ID.to_owned(), manifest_signer().public_hex())].into(),
    )
    .expect("keys");
    assert_eq!(trusted.verify(&body, &signature), Ok(()));
    let (video, audio, _) = probe(&site.url("/v/ins3/master.m3u8"));
    assert!(video >= 1 && audio >= 1);
    // Removing the asset removes its objects.
    let (status, _, _) = fetch(
        &site.url("/v1/assets/ins3"),
        &["-X", "DELETE", "-H", &auth()],
    );
    assert_eq!(status, 204);
    assert_eq!(moto.list("media", "prod/v/ins3/"), Vec::<String>::new());
    let (status, _, _) = fetch(&site.url("/v/ins3/master.m3u8"), &[]);
    assert_eq!(status, 404);
}
