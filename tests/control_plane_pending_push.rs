//! A push is desired state: pushed before any origin or edge is up, it is recorded as pending
//! with the reason, shown in `fill status`, and placed (then filled) as soon as an origin
//! holds the asset and an edge is up; a pending push can be removed; nothing is lost across a
//! control-plane restart.

mod common;

use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::*;

fn audit_actions(cp: &ControlPlane) -> Vec<String> {
    let (status, _, body) = cp.get("/v1/audit", OPS, &[]);
    assert_eq!(status, 200);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
    entries
        .iter()
        .map(|e| format!("{} {}", e["action"], e["target"]))
        .collect()
}

#[test]
fn a_push_made_before_its_edges_are_up_is_kept_and_placed_when_they_are_on_sqlite() {
    a_push_made_before_its_edges_are_up_is_kept_and_placed_when_they_are(Backend::Sqlite);
}

#[test]
fn a_push_made_before_its_edges_are_up_is_kept_and_placed_when_they_are_on_postgres() {
    a_push_made_before_its_edges_are_up_is_kept_and_placed_when_they_are(Backend::Postgres);
}

fn a_push_made_before_its_edges_are_up_is_kept_and_placed_when_they_are(backend: Backend) {
    let (cp, _database) = ControlPlane::on(&backend, "cp-pending");
    let mut cp_process = cp.start();

    // Nothing is up: the push is accepted as pending, with the reason.
    let text = cp.cli(&["push", "movie", "--replicas", "1"]);
    assert!(text.contains("movie is pending"), "{text}");
    let rows = cp.fill_status("movie");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "pending", "{rows:?}");
    assert!(
        rows[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("origin")),
        "{rows:?}"
    );
    // A second pending asset, removed before it could be placed.
    cp.cli(&["push", "trailer"]);
    cp.cli(&["push", "trailer", "--remove"]);
    assert!(cp.fill_status("trailer").is_empty());

    // The intent outlives a restart of the control plane.
    cp_process.signal("TERM");
    assert!(cp_process.wait_exit(Duration::from_secs(20)));
    drop(cp_process);
    let _cp_process = cp.start();
    assert_eq!(cp.fill_status("movie")[0]["state"], "pending");

    // An origin holding the asset and an edge come up: the push is placed and filled.
    let mut origin_site = OriginSite::new("pending-origin");
    origin_site.extra = joined(&cp, &cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "movie");
    let _origin = origin_site.start();
    let mut edge_site = Site::new("pending-edge");
    edge_site.node_id = "edge-a".into();
    edge_site.extra = joined(&cp, LAB);
    let _edge = edge_site.start();
    cp.wait_fill("movie", "edge-a", "present");
    for (path, data) in fake_asset_files() {
        let on_disk = std::fs::read(edge_site.content.join("v/movie").join(&path)).expect("filled");
        assert!(on_disk == data, "{path} differs");
    }
    // Placed, so no longer pending.
    let rows = cp.fill_status("movie");
    assert!(rows.iter().all(|r| r["state"] != "pending"), "{rows:?}");
    let actions = audit_actions(&cp);
    for want in [
        "\"push.pending\" \"movie\"",
        "\"push.placed\" \"movie\"",
        "\"push.remove\" \"trailer\"",
    ] {
        assert!(actions.iter().any(|a| a == want), "{want}: {actions:?}");
    }
    // The removed push never came back.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(cp.fill_status("trailer").is_empty());
        std::thread::sleep(Duration::from_millis(200));
    }
}
