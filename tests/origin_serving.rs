//! The origin serves published assets from a local folder and from an S3-compatible bucket
//! (moto in server mode): strong ETags, byte ranges, RFC 9530 digests, only files listed in a
//! published `asset.json`, nothing for hostile paths; and an edge fills from it.

mod common;

use base64::Engine as _;
use common::origin_site::*;
use common::*;

fn digest_of(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
    )
}

/// Checks every rule of serving one published asset through `base`.
fn check_published_asset(base: &str, asset: &str) {
    let files = fake_asset_files();
    for (path, data) in &files {
        let (status, h, body) = fetch(&format!("{base}/v/{asset}/{path}"), &[]);
        assert_eq!(status, 200, "{path}");
        assert!(body == *data, "{path}: body differs");
        assert_eq!(header(&h, "content-digest"), Some(digest_of(data).as_str()));
        assert_eq!(header(&h, "repr-digest"), Some(digest_of(data).as_str()));
        assert!(header(&h, "etag").is_some_and(|e| e.starts_with('"')));
    }
    let (_, data) = &files[3];
    let url = format!("{base}/v/{asset}/360p/seg_00001.m4s");
    let (_, h, _) = fetch(&url, &[]);
    let etag = header(&h, "etag").expect("etag").to_owned();
    assert_eq!(header(&h, "content-type"), Some("video/mp4"));
    let (status, _, body) = fetch(&url, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!((status, body.len()), (304, 0));
    // A range: the part, with the whole file's Repr-Digest and no Content-Digest.
    let (status, h, body) = fetch(&url, &["-H", "Range: bytes=1000-1999"]);
    assert_eq!(status, 206);
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes 1000-1999/{}", data.len()).as_str())
    );
    assert!(body[..] == data[1000..2000]);
    assert_eq!(header(&h, "content-digest"), None);
    assert_eq!(header(&h, "repr-digest"), Some(digest_of(data).as_str()));
    let (status, h, _) = fetch(&url, &["-H", "Range: bytes=99999999-"]);
    assert_eq!(status, 416);
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );
    // HEAD: the head alone.
    let (status, h, _) = fetch(&url, &["-I"]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-length"),
        Some(data.len().to_string().as_str())
    );
    // The manifest itself, and it matches what was published.
    let (status, _, body) = fetch(&format!("{base}/v/{asset}/asset.json"), &[]);
    assert_eq!(status, 200);
    let m: estuary_common::asset::AssetManifest = serde_json::from_slice(&body).expect("json");
    assert_eq!(m, fake_manifest(asset));
    // Hostile or unknown paths: never served.
    for bad in [
        format!("/v/{asset}/../{asset}/master.m3u8"),
        format!("/v/{asset}/%2e%2e/master.m3u8"),
        format!("/v/{asset}/.hidden"),
        format!("/v/{asset}/360p/missing.m4s"),
        "/v/../etc/passwd".to_owned(),
        format!("/v/{asset}/360p%2fseg_00001.m4s"),
    ] {
        let (status, _, body) = fetch(&format!("{base}{bad}"), &[]);
        assert!(
            status == 404 || status == 400,
            "{bad}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn published_assets_are_served_with_etags_ranges_and_digests() {
    let site = OriginSite::new("origin-serve");
    write_fake_asset(&site.storage_root(), "clip1");
    // Files of an asset whose asset.json is not written yet are not served.
    let half = site.storage_root().join("v/half/360p");
    std::fs::create_dir_all(&half).expect("mkdir");
    std::fs::write(half.join("seg_00001.m4s"), pattern(1000)).expect("write");
    // A file in storage that the manifest does not list is not served either.
    std::fs::write(site.storage_root().join("v/clip1/stray.m4s"), b"stray").expect("write");
    let _origin = site.start();
    check_published_asset(&site.url(""), "clip1");
    for path in [
        "/v/half/360p/seg_00001.m4s",
        "/v/clip1/stray.m4s",
        "/v/nope/master.m3u8",
    ] {
        let (status, _, _) = fetch(&site.url(path), &[]);
        assert_eq!(status, 404, "{path}");
    }
}

#[test]
fn an_edge_fills_from_the_origin_and_verifies_its_digests() {
    let site = OriginSite::new("origin-edge");
    write_fake_asset(&site.storage_root(), "clip2");
    let origin = site.start();
    // Both services size their descriptor tables at start: the origin for 65,536 slots, the
    // edge for twice its connection cap (50,000 by default) and 1,024 more.
    origin.assert_fd_table_sized(1 << 16);
    let mut edge_site = Site::new("edge-over-origin");
    edge_site.protected.clear();
    edge_site.extra = format!(
        "[cache]\nram = \"64MiB\"\n[upstream]\norigin = [\"{}\"]\n",
        site.url("")
    );
    let edge = edge_site.start();
    edge.assert_fd_table_sized(2 * 50_000 + 1024);
    for (path, data) in fake_asset_files() {
        let url = edge_site.url(&format!("/v/clip2/{path}"));
        let (status, h, body) = fetch(&url, &[]);
        assert_eq!(
            (status, header(&h, "x-cache")),
            (200, Some("MISS")),
            "{path}"
        );
        assert!(body == data, "{path} through the edge differs");
        let (_, h, _) = fetch(&url, &[]);
        assert_eq!(header(&h, "x-cache"), Some("HIT"), "{path}");
    }
    assert_eq!(
        edge.metric("estuary_edge_integrity_failures_total", &[]),
        0.0
    );
}

#[test]
fn assets_are_served_from_an_s3_compatible_bucket() {
    let moto = start_moto();
    moto.create_bucket("assets");
    let mut site = OriginSite::new("origin-s3");
    for (path, data) in fake_asset_files() {
        moto.put(
            "assets",
            &format!("lab/v/clip3/{path}"),
            &data,
            site.dir.path(),
        );
    }
    moto.put(
        "assets",
        "lab/v/clip3/asset.json",
        &serde_json::to_vec(&fake_manifest("clip3")).expect("json"),
        site.dir.path(),
    );
    site.storage = moto.storage_config("assets", "lab");
    let _origin = site.start();
    check_published_asset(&site.url(""), "clip3");
}
