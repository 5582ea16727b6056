//! An origin's state (job database, uploads) belongs to its storage: restarted with the same
//! `[state] dir` but another `[storage]`, the origin refuses to start and names both, instead
//! of answering `409 asset exists` for assets the new storage does not hold.

mod common;

use std::time::Duration;

use common::origin_site::*;
use common::*;

/// Starts creating an upload of `asset` (a TUS creation without its bytes); the status.
fn create_upload(site: &OriginSite, asset: &str) -> u16 {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (status, _, _) = fetch(
        &site.url("/uploads/"),
        &[
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &format!("Authorization: Bearer {UPLOAD_TOKEN}"),
            "-H",
            "Upload-Length: 100",
            "-H",
            &format!(
                "Upload-Metadata: filename {},asset {}",
                b64("clip.mp4"),
                b64(asset)
            ),
        ],
    );
    status
}

#[test]
fn another_storage_with_the_same_state_is_refused_at_start_naming_both() {
    let mut site = OriginSite::new("state-storage");
    let mut origin = site.start();
    assert_eq!(create_upload(&site, "movie"), 201);
    // The same storage again: the state is its own, and the asset is known.
    origin.signal("TERM");
    assert!(
        origin.wait_exit(Duration::from_secs(30)),
        "{}",
        origin.log()
    );
    let mut origin = site.start();
    assert_eq!(create_upload(&site, "movie"), 409);
    origin.signal("TERM");
    assert!(
        origin.wait_exit(Duration::from_secs(30)),
        "{}",
        origin.log()
    );

    // Storage B with A's state: storage B holds no "movie", so the state must not be used.
    let storage_a = site.storage_root();
    let storage_b = site.dir.path().join("storage-b");
    site.storage = format!("root = \"{}\"", storage_b.display());
    let config = site.write_config();
    let mut refused = spawn_service("origin", &config, site.admin, site.dir.path());
    // An origin that starts anyway is caught here (it would answer 409 for "movie").
    assert!(!refused.wait_exit(Duration::from_secs(30)));
    let log = refused.log();
    for needle in [
        format!("state.dir {}", site.state_dir().display()),
        format!("file://{}", storage_a.display()),
        format!("file://{}", storage_b.display()),
    ] {
        assert!(log.contains(&needle), "expected {needle} in: {log}");
    }
}
