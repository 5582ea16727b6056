//! Purges through the control plane: fanned out to every edge's admin listener, reported per
//! edge, and delivered to an edge that was down when it comes back.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin::{Object, Origin};
use common::*;

fn purge(cp: &ControlPlane, target: &str) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .args(["purge", target, "--json", "--control-plane", &cp.url()])
        .env("ESTUARY_TOKEN", OPS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn delivery<'a>(status: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    status["edges"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["node"] == node))
        .unwrap_or_else(|| panic!("no delivery to {node} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_edge_and_a_down_edge_when_it_returns_on_sqlite() {
    purges_reach_every_edge_and_a_down_edge_when_it_returns(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_edge_and_a_down_edge_when_it_returns_on_postgres() {
    purges_reach_every_edge_and_a_down_edge_when_it_returns(Backend::Postgres).await;
}

async fn purges_reach_every_edge_and_a_down_edge_when_it_returns(backend: Backend) {
    let origin = Origin::start().await;
    origin.put("/v/p/a.m4s", Object::new(pattern(5000)));
    let (cp, _database) = ControlPlane::on(&backend, "cp-purge");
    let _cp = cp.start();
    let joined = format!(
        "[control_plane]\nurl = \"{}\"\ntoken = \"{LAB}\"\ninterval = \"1s\"\n",
        cp.url()
    );
    let mut a = cached_site("purge-a", &[origin.url()], &joined);
    a.node_id = "edge-a".into();
    let mut b = cached_site("purge-b", &[origin.url()], &joined);
    b.node_id = "edge-b".into();
    let _edge_a = a.start();
    let mut edge_b = b.start();
    cp.wait_node("edge-a", true, Duration::from_secs(20));
    cp.wait_node("edge-b", true, Duration::from_secs(20));
    for site in [&a, &b] {
        assert_eq!(plain_get(site, "/v/p/a.m4s", &[]).await.0, 200);
        let (_, h, _) = plain_get(site, "/v/p/a.m4s", &[]).await;
        assert_eq!(h["x-cache"], "HIT");
    }
    assert_eq!(origin.hits("/v/p/a.m4s"), 2);

    // Both edges up: the purge lands on both, and the next requests go upstream.
    let status = purge(&cp, "/v/p/a.m4s");
    assert_eq!(delivery(&status, "edge-a")["state"], "done", "{status}");
    assert_eq!(delivery(&status, "edge-b")["state"], "done", "{status}");
    for site in [&a, &b] {
        let (_, h, _) = plain_get(site, "/v/p/a.m4s", &[]).await;
        assert_eq!(h["x-cache"], "MISS");
    }
    assert_eq!(origin.hits("/v/p/a.m4s"), 4);

    // Edge B goes down; a prefix purge reaches A now and B once it is back.
    edge_b.signal("TERM");
    assert!(edge_b.wait_exit(Duration::from_secs(30)));
    cp.wait_node("edge-b", false, Duration::from_secs(20));
    let status = purge(&cp, "/v/p/*");
    assert_eq!(delivery(&status, "edge-a")["state"], "done", "{status}");
    assert_eq!(delivery(&status, "edge-b")["state"], "pending", "{status}");
    let id = status["id"].as_i64().expect("id");
    let _edge_b = b.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = cp.get(&format!("/v1/purges/{id}"), OPS, &[]);
        let s: serde_json::Value = serde_json::from_slice(&body).expect("json");
        if delivery(&s, "edge-b")["state"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the purge never reached edge-b: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Edge B's disk copy survived its restart, but the purge reached it: it asks upstream.
    let before = origin.hits("/v/p/a.m4s");
    let (status, h, _) = plain_get(&b, "/v/p/a.m4s", &[]).await;
    assert_eq!((status, &h["x-cache"]), (200, &"MISS".parse().expect("hv")));
    assert_eq!(origin.hits("/v/p/a.m4s"), before + 1);
    // Bad targets are refused.
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary")).args([
        "purge",
        "v/no-slash",
        "--control-plane",
        &cp.url(),
        "--token",
        OPS,
    ]));
    assert!(!out.status.success());
}
