//! Two control-plane replicas sharing one real PostgreSQL server act as one: a node that beats
//! to either is listed, checked and up on both; an asset pushed through one is filled on edges
//! that talk to the other; purges and the audit log are shared; and when one replica stops,
//! the other keeps the whole site going.

mod common;

use std::time::Duration;

use common::cp_site::*;
use common::origin_site::*;
use common::postgres::Postgres;
use common::*;

#[test]
fn two_replicas_on_one_postgres_share_nodes_placements_purges_and_audit() {
    let pg = Postgres::start("cp-replicas");
    let database = pg.database("estuary_cp");
    let one = ControlPlane::with_database("cp-replica-1", &database);
    let two = ControlPlane::with_database("cp-replica-2", &database);
    // Started together: the schema is created once, under an advisory lock.
    let (p1, p2) = std::thread::scope(|s| {
        let h1 = s.spawn(|| one.start());
        let h2 = s.spawn(|| two.start());
        (h1.join().expect("replica 1"), h2.join().expect("replica 2"))
    });
    let mut replica_one = p1;
    let _replica_two = p2;

    let mut origin_site = OriginSite::new("replica-origin");
    origin_site.extra = joined(&one, &cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "movie");
    let _origin = origin_site.start();
    let mut a = Site::new("replica-a");
    a.node_id = "edge-a".into();
    a.extra = joined(&one, LAB);
    let mut b = Site::new("replica-b");
    b.node_id = "edge-b".into();
    b.extra = joined(&two, LAB);
    let _edge_a = a.start();
    let mut edge_b = b.start();
    for cp in [&one, &two] {
        for node in ["edge-a", "edge-b", "origin-test"] {
            cp.wait_node(node, true, Duration::from_secs(30));
        }
    }

    // Pushed through replica two; edge-a (which talks to replica one only) gets it too.
    let text = two.cli(&["push", "movie", "--replicas", "2"]);
    assert!(text.contains("placed on"), "{text}");
    one.wait_fill("movie", "edge-a", "present");
    one.wait_fill("movie", "edge-b", "present");
    two.wait_fill("movie", "edge-a", "present");
    for (path, data) in fake_asset_files() {
        for site in [&a, &b] {
            let on_disk = std::fs::read(site.content.join("v/movie").join(&path)).expect("filled");
            assert!(on_disk == data, "{path} differs on {}", site.node_id);
        }
    }

    // One audit log: replica one lists the push made through replica two.
    let (status, _, body) = one.get("/v1/audit", OPS, &[]);
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(
        audit.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["action"] == "push" && e["target"] == "movie")),
        "{audit}"
    );

    // A purge through replica one is readable, with its per-edge deliveries, on replica two.
    let out = one.cli(&["purge", "/v/movie/*", "--json"]);
    let purge: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = purge["id"].as_i64().expect("purge id");
    let (status, _, body) = two.get(&format!("/v1/purges/{id}"), OPS, &[]);
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["target"], "/v/movie/*");
    assert_eq!(seen["edges"].as_array().map(Vec::len), Some(2), "{seen}");

    // edge-b, which beats to replica two only, is killed: replica one marks it down too.
    edge_b.signal("KILL");
    edge_b.wait_exit(Duration::from_secs(10));
    one.wait_node("edge-b", false, Duration::from_secs(30));

    // Replica one stops; replica two still knows and serves everything, and edge-a, whose
    // control plane is gone, keeps serving what it holds.
    replica_one.signal("TERM");
    replica_one.wait_exit(Duration::from_secs(20));
    let rows = two.fill_status("movie");
    assert!(
        rows.iter()
            .any(|r| r["node"] == "edge-a" && r["state"] == "present"),
        "{rows:?}"
    );
    let token = a.sign("/v/movie/*", &[]);
    let (status, _, _) = fetch(
        &a.url("/v/movie/360p/seg_00001.m4s"),
        &["-b", &format!("estuary_token={token}")],
    );
    assert_eq!(status, 200);
}
