//! Pre-positioning respects the edge's fill window: an asset pushed outside the window stays
//! assigned (nothing is fetched) until the edge may fill, then it is filled and verified.

mod common;

use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::*;

#[test]
fn a_push_outside_the_fill_window_waits_for_it() {
    let cp = ControlPlane::new("cp-window");
    let _cp = cp.start();
    let mut origin_site = OriginSite::new("window-origin");
    origin_site.extra = joined(&cp, &cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "late");
    let _origin = origin_site.start();
    // A window two hours ahead (UTC): closed now, and still closed if the hour turns.
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 3600
        % 24;
    let (start, end) = ((hour + 2) % 24, (hour + 3) % 24);
    let mut a = Site::new("window-a");
    a.node_id = "edge-a".into();
    a.extra = format!(
        "{}[prepositioning]\nwindow = [{start}, {end}]\n",
        joined(&cp, LAB)
    );
    let mut edge = a.start();
    for node in ["edge-a", "origin-test"] {
        cp.wait_node(node, true, Duration::from_secs(20));
    }
    cp.cli(&["push", "late", "--replicas", "1"]);
    // Several heartbeats (one a second) pass; the edge does not start the fill.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let rows = cp.fill_status("late");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            rows[0]["state"], "assigned",
            "filled outside its window: {rows:?}"
        );
        assert!(!a.content.join(".fill/late").exists());
        std::thread::sleep(Duration::from_millis(250));
    }
    // The window opened (here: the edge restarts without one): the fill runs.
    edge.signal("TERM");
    edge.wait_exit(Duration::from_secs(20));
    a.extra = joined(&cp, LAB);
    let _edge = a.start();
    cp.wait_fill("late", "edge-a", "present");
    for (path, data) in fake_asset_files() {
        let on_disk = std::fs::read(a.content.join("v/late").join(&path)).expect("filled");
        assert!(on_disk == data, "{path} differs");
    }
}
