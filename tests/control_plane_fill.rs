//! Pre-positioning through the control plane: `estuary push` places an asset on edges, each
//! edge pulls it from a same-site peer that holds it, else from the origin, verifies every file
//! against asset.json (a corrupt peer is passed over), serves it from its store, and drops it
//! on `estuary push --remove`.

mod common;

use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::*;

fn origin_hits(origin: &EdgeProcess) -> f64 {
    origin.metric(
        "estuary_origin_asset_requests_total",
        &["status_class=\"2xx\""],
    )
}

#[test]
fn pushed_assets_are_filled_from_peers_or_the_origin_verified_and_removed_on_sqlite() {
    pushed_assets_are_filled_from_peers_or_the_origin_verified_and_removed(Backend::Sqlite);
}

#[test]
fn pushed_assets_are_filled_from_peers_or_the_origin_verified_and_removed_on_postgres() {
    pushed_assets_are_filled_from_peers_or_the_origin_verified_and_removed(Backend::Postgres);
}

fn pushed_assets_are_filled_from_peers_or_the_origin_verified_and_removed(backend: Backend) {
    let (cp, _database) = ControlPlane::on(&backend, "cp-fill");
    let _cp = cp.start();
    let joined = |token: &str| {
        format!(
            "[control_plane]\nurl = \"{}\"\ntoken = \"{token}\"\ninterval = \"1s\"\n",
            cp.url()
        )
    };
    let mut origin_site = OriginSite::new("fill-origin");
    origin_site.extra = joined(&cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "movie");
    let origin = origin_site.start();
    let mut a = Site::new("fill-a");
    a.node_id = "edge-a".into();
    a.extra = joined(LAB);
    let mut b = Site::new("fill-b");
    b.node_id = "edge-b".into();
    b.extra = joined(LAB);
    let _edge_a = a.start();
    let _edge_b = b.start();
    for node in ["edge-a", "edge-b", "origin-test"] {
        cp.wait_node(node, true, Duration::from_secs(20));
    }

    // One replica: one edge fills from the origin.
    let text = cp.cli(&["push", "movie", "--replicas", "1"]);
    assert!(text.contains("placed on"), "{text}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cp.cli(&["fill", "status", "movie", "--json"])).expect("json");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let first = rows[0]["node"].as_str().expect("node").to_owned();
    cp.wait_fill("movie", &first, "present");
    let (first_site, second_site, second) = if first == "edge-a" {
        (&a, &b, "edge-b")
    } else {
        (&b, &a, "edge-a")
    };
    for (path, data) in fake_asset_files() {
        let on_disk =
            std::fs::read(first_site.content.join("v/movie").join(&path)).expect("filled");
        assert!(on_disk == data, "{path} differs on {first}");
    }
    // Served from the store, with a token like any pre-positioned file.
    let token = first_site.sign("/v/movie/*", &[]);
    let (status, h, body) = fetch(
        &first_site.url(&format!(
            "/v/movie/360p/seg_00001.m4s?token={}",
            urlencode(&token)
        )),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-cache"), None, "not from the store: {h:?}");
    assert!(body == fake_asset_files()[3].1);

    // The first edge's copy goes bad (a bit flip, same size): the second edge, told to fetch
    // from its peer first, refuses the bad file and takes the origin's.
    let seg = first_site.content.join("v/movie/360p/seg_00002.m4s");
    let mut bad = std::fs::read(&seg).expect("read");
    bad[1000] ^= 0x01;
    let tmp = seg.with_extension("tmp");
    std::fs::write(&tmp, &bad).expect("write");
    std::fs::rename(&tmp, &seg).expect("rename");
    let before = origin_hits(&origin);
    cp.cli(&["push", "movie", "--replicas", "2"]);
    cp.wait_fill("movie", second, "present");
    for (path, data) in fake_asset_files() {
        let on_disk =
            std::fs::read(second_site.content.join("v/movie").join(&path)).expect("filled");
        assert!(on_disk == data, "{path} differs on {second}");
    }
    let from_origin = origin_hits(&origin) - before;
    assert!(
        from_origin >= 2.0,
        "the second fill did not fall back to the origin"
    );

    // A healthy peer is preferred: a third asset filled on one edge, then pushed to both,
    // costs the origin only the push's own size lookup (asset.json and its signature).
    write_fake_asset(&origin_site.storage_root(), "trailer");
    cp.cli(&["push", "trailer", "--replicas", "1"]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cp.cli(&["fill", "status", "trailer", "--json"])).expect("json");
    let holder = rows[0]["node"].as_str().expect("node").to_owned();
    cp.wait_fill("trailer", &holder, "present");
    let other = if holder == "edge-a" {
        "edge-b"
    } else {
        "edge-a"
    };
    let before = origin_hits(&origin);
    cp.cli(&["push", "trailer", "--replicas", "2"]);
    cp.wait_fill("trailer", other, "present");
    assert!(
        origin_hits(&origin) - before <= 2.0,
        "the second edge did not fill from its peer"
    );

    // Removal: both edges drop the asset.
    cp.cli(&["push", "movie", "--remove"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.content.join("v/movie").exists() || b.content.join("v/movie").exists() {
        assert!(Instant::now() < deadline, "the asset was not removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = cp.cli(&["fill", "status"]);
    assert!(
        table.starts_with("ASSET") && table.contains("trailer"),
        "{table}"
    );

    // The popularity plan: shown first, then applied.
    write_fake_asset(&origin_site.storage_root(), "series1");
    let csv = origin_site.dir.path().join("popularity.csv");
    std::fs::write(
        &csv,
        "asset,site,views\nseries1,lab,500\nghost,lab,900\nquiet,lab,0\n",
    )
    .expect("csv");
    let csv = csv.to_str().expect("path");
    let plan = cp.cli(&["fill", "plan", "--popularity", csv]);
    // series1 draws over a third of the site's predicted views: a copy on each of its two
    // edges.
    assert!(
        plan.lines()
            .any(|l| l.contains("+ series1") && l.ends_with("x2")),
        "{plan}"
    );
    assert!(
        plan.contains("- ghost") && plan.contains("not found on any origin"),
        "{plan}"
    );
    assert!(plan.contains("a plan only"), "{plan}");
    assert_eq!(
        cp.cli(&["fill", "status", "series1", "--json"]).trim(),
        "[]"
    );
    let applied = cp.cli(&["fill", "plan", "--popularity", csv, "--apply"]);
    assert!(applied.contains("applied: 2 placements"), "{applied}");
    let rows = cp.fill_status("series1");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for node in ["edge-a", "edge-b"] {
        cp.wait_fill("series1", node, "present");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
