//! The origin's upload API attacked as a hostile uploader would (issue 15): an upload token
//! manages only its own assets; the offset a server reports is always the bytes on disk, even
//! after a PATCH that overran the upload; an upload never replaces or deletes an asset it did
//! not create (a shared bucket with another origin); the upload's Location never echoes the
//! client's Host.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::origin_site::*;
use common::*;

const TEAM_A: &str = "team-a-upload-token-0123456789";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A curl call with the TUS header and a token: (status, headers, body).
fn call(
    method: &str,
    url: &str,
    token: &str,
    extra: &[&str],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let auth = format!("Authorization: Bearer {token}");
    let mut args: Vec<&str> = if method == "HEAD" {
        vec!["-I"]
    } else {
        vec!["-X", method]
    };
    args.extend(["-H", "Tus-Resumable: 1.0.0", "-H", auth.as_str()]);
    args.extend_from_slice(extra);
    fetch(url, &args)
}

fn create(site: &OriginSite, token: &str, length: u64, asset: Option<&str>) -> (u16, String) {
    let mut meta = format!("filename {}", b64("clip.mp4"));
    if let Some(a) = asset {
        meta.push_str(&format!(",asset {}", b64(a)));
    }
    let (status, h, _) = call(
        "POST",
        &site.url("/uploads/"),
        token,
        &[
            "-H",
            &format!("Upload-Length: {length}"),
            "-H",
            &format!("Upload-Metadata: {meta}"),
        ],
    );
    let location = header(&h, "location").unwrap_or("").to_owned();
    (status, location)
}

fn offset_of(url: &str, token: &str) -> u64 {
    let (status, h, _) = call("HEAD", url, token, &[]);
    assert_eq!(status, 200, "{h:?}");
    header(&h, "upload-offset")
        .and_then(|v| v.parse().ok())
        .expect("Upload-Offset")
}

fn patch(url: &str, token: &str, offset: u64, file: &std::path::Path) -> u16 {
    let data = format!("@{}", file.display());
    call(
        "PATCH",
        url,
        token,
        &[
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-H",
            &format!("Upload-Offset: {offset}"),
            "--data-binary",
            &data,
        ],
    )
    .0
}

fn scoped_site(name: &str) -> OriginSite {
    let mut site = OriginSite::new(name);
    site.extra =
        format!("[auth.upload_tokens.team-a]\ntoken = \"{TEAM_A}\"\nassets = \"team-a-*\"\n");
    site
}

#[test]
fn an_upload_token_manages_only_its_own_assets() {
    let site = scoped_site("sec-scoped");
    write_fake_asset(&site.storage_root(), "other");
    let _origin = site.start();

    // Team A's token uploads under its prefix only.
    let (status, _) = create(&site, TEAM_A, 10, Some("other-movie"));
    assert_eq!(status, 403, "a scoped token created another team's asset");
    let (status, location) = create(&site, TEAM_A, 10, None);
    assert_eq!(status, 201);
    let mine = site.url(&location);
    let (_, h, _) = call("HEAD", &mine, TEAM_A, &[]);
    assert_eq!(header(&h, "upload-offset"), Some("0"));

    // An upload of another asset, made with the full token: team A can neither see, write nor
    // terminate it.
    let (status, location) = create(&site, UPLOAD_TOKEN, 10, Some("premiere"));
    assert_eq!(status, 201);
    let theirs = site.url(&location);
    assert_eq!(call("HEAD", &theirs, TEAM_A, &[]).0, 403);
    assert_eq!(call("DELETE", &theirs, TEAM_A, &[]).0, 403);
    let chunk = site.dir.path().join("chunk.bin");
    std::fs::write(&chunk, b"0123456789").expect("write");
    assert_eq!(patch(&theirs, TEAM_A, 0, &chunk), 403);
    assert_eq!(offset_of(&theirs, UPLOAD_TOKEN), 0, "team A wrote into it");

    // Nor read the status of, nor delete, another team's asset (finding: any upload token
    // deleted any asset). The full token still can.
    let asset_url = site.url("/v1/assets/premiere");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    assert_eq!(fetch(&asset_url, &["-H", &bearer(TEAM_A)]).0, 403);
    assert_eq!(
        fetch(&asset_url, &["-X", "DELETE", "-H", &bearer(TEAM_A)]).0,
        403
    );
    assert_eq!(fetch(&asset_url, &["-H", &bearer(UPLOAD_TOKEN)]).0, 200);
    assert_eq!(call("DELETE", &theirs, UPLOAD_TOKEN, &[]).0, 204);
}

#[test]
fn the_offset_reported_is_always_the_bytes_on_disk() {
    let site = OriginSite::new("sec-offset");
    let _origin = site.start();
    // Longer than one sync interval (8 MiB), so part of the PATCH is recorded before the
    // body goes past Upload-Length.
    let length: u64 = 10 << 20;
    let (status, location) = create(&site, UPLOAD_TOKEN, length, Some("overrun"));
    assert_eq!(status, 201);
    let url = site.url(&location);
    let id = location.rsplit('/').next().expect("id").to_owned();
    let data = pattern(12 << 20);
    let too_long = site.dir.path().join("too-long.bin");
    std::fs::write(&too_long, &data).expect("write");
    assert_eq!(patch(&url, UPLOAD_TOKEN, 0, &too_long), 413);
    let reported = offset_of(&url, UPLOAD_TOKEN);
    let file = site.state_dir().join("uploads").join(format!("{id}.bin"));
    let on_disk = std::fs::read(&file).expect("upload file");
    assert_eq!(
        reported,
        on_disk.len() as u64,
        "the offset reported is not the bytes on disk"
    );
    assert!(
        on_disk[..] == data[..on_disk.len()],
        "the bytes on disk are not what was sent"
    );

    // The bytes behind the recorded offset disappear (a disk restored from a backup): the
    // origin reports, and resumes from, what is there.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open");
    f.set_len(1000).expect("truncate");
    drop(f);
    assert_eq!(offset_of(&url, UPLOAD_TOKEN), 1000);
    let rest = site.dir.path().join("rest.bin");
    std::fs::write(&rest, &data[1000..2000]).expect("write");
    assert_eq!(patch(&url, UPLOAD_TOKEN, 1000, &rest), 204);
    assert_eq!(offset_of(&url, UPLOAD_TOKEN), 2000);
    assert!(std::fs::read(&file).expect("file")[..] == data[..2000]);
}

#[test]
fn an_upload_never_replaces_an_asset_it_did_not_create_and_location_ignores_host() {
    let site = OriginSite::new("sec-shared");
    // Published by another origin sharing this storage: this origin's database has no row.
    write_fake_asset(&site.storage_root(), "shared");
    let _origin = site.start();
    let (status, _, before) = fetch(&site.url("/v/shared/master.m3u8"), &[]);
    assert_eq!(status, 200);
    let (status, _) = create(&site, UPLOAD_TOKEN, 10, Some("shared"));
    assert_eq!(status, 409, "an upload took over another origin's asset");
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, after) = fetch(&site.url("/v/shared/master.m3u8"), &[]);
    assert_eq!((status, after), (200, before));

    // Location is a path: a hostile Host header is never echoed into it.
    let (status, h, _) = call(
        "POST",
        &site.url("/uploads/"),
        UPLOAD_TOKEN,
        &[
            "-H",
            "Host: evil.example",
            "-H",
            "Upload-Length: 10",
            "-H",
            &format!("Upload-Metadata: filename {}", b64("x.mp4")),
        ],
    );
    assert_eq!(status, 201);
    let location = header(&h, "location").expect("Location");
    assert!(
        location.starts_with("/uploads/") && !location.contains("evil"),
        "{location}"
    );
}
