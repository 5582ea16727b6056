//! The control plane with real nodes: an edge registers and beats, the health monitor marks it
//! down (kill -9) and up again with hysteresis, the state feed long-polls on changes, tokens
//! are enforced, operator actions are audited, the registry survives a restart, and a node
//! whose control plane is gone keeps serving.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cp_site::*;
use common::*;

#[test]
fn nodes_register_go_down_and_up_and_the_state_feed_follows_on_sqlite() {
    nodes_register_go_down_and_up_and_the_state_feed_follows(Backend::Sqlite);
}

#[test]
fn nodes_register_go_down_and_up_and_the_state_feed_follows_on_postgres() {
    nodes_register_go_down_and_up_and_the_state_feed_follows(Backend::Postgres);
}

fn nodes_register_go_down_and_up_and_the_state_feed_follows(backend: Backend) {
    let (cp, _database) = ControlPlane::on(&backend, "cp-health");
    let mut cp_process = cp.start();
    cp_process.assert_fd_table_sized(1 << 16);
    let site = edge_with_control_plane("cp-edge", &cp.url(), LAB);
    let mut edge = site.start();
    let node = cp.wait_node("edge-test", true, Duration::from_secs(20));
    assert_eq!(node["site"], "lab");
    assert_eq!(node["role"], "edge");
    assert_eq!(node["addresses"]["admin"], format!("http://{}", site.admin));

    // The state feed is for steering and operators, not for an edge's token.
    assert_eq!(cp.get("/v1/state", LAB, &[]).0, 403);
    // The state feed: an ETag per version, 304 when nothing changed.
    let steering = cred("steering-test");
    let (status, h, body) = cp.get("/v1/state", &steering, &[]);
    assert_eq!(status, 200);
    let etag = header(&h, "etag").expect("etag").to_owned();
    let snap: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(snap["nodes"]["edge-test"]["up"], true);
    let (status, _, _) = cp.get(
        "/v1/state",
        &steering,
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(status, 304);

    // The monitor scrapes the edge's /metrics itself: requests the edge served show up in
    // the load it measured (next to what the heartbeats claim).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..20 {
            let (status, _, _) = fetch(&site.url("/pub/hello.txt"), &[]);
            assert!(status == 200 || status == 404, "{status}");
        }
        let (_, _, body) = cp.get("/v1/state", OPS, &[]);
        let snap: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let polled = &snap["nodes"]["edge-test"]["polled_load"];
        if polled["requests_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
            && polled["bytes_per_second"].as_f64().is_some_and(|b| b > 0.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor never measured the edge's load: {polled}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A long poll waits for the next change: the edge dies hard.
    let url = format!("{}/v1/state?wait=30", cp.url());
    let waiter = {
        let etag = etag.clone();
        std::thread::spawn(move || {
            fetch(
                &url,
                &[
                    "-H",
                    &format!("Authorization: Bearer {OPS}"),
                    "-H",
                    &format!("If-None-Match: {etag}"),
                ],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    edge.signal("KILL");
    edge.wait_exit(Duration::from_secs(10));
    let (status, h, body) = waiter.join().expect("long poll");
    assert_eq!(status, 200);
    assert_ne!(header(&h, "etag"), Some(etag.as_str()));
    let snap: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(snap["nodes"]["edge-test"]["up"], false, "{snap}");
    assert!(
        snap["nodes"]["edge-test"]["down_reason"]
            .as_str()
            .is_some_and(|r| r.contains("readyz")),
        "{snap}"
    );
    assert!(cp_process.log().contains("A node is down."));

    // Back: up again after its checks pass.
    let _edge = site.start();
    cp.wait_node("edge-test", true, Duration::from_secs(20));

    // Operators manage sites; the change is audited.
    let body = r#"{"name":"lab","location":[48.85,2.35],"coverage":["10.1.0.0/16"]}"#;
    let put = |token: &str, body: &str| {
        cp.get(
            "/v1/sites/lab",
            token,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
            ],
        )
        .0
    };
    assert_eq!(put(OPS, body), 200);
    // The README's form, without a name (the path names the site).
    assert_eq!(
        put(
            OPS,
            r#"{"location":[48.85,2.35],"coverage":["10.1.0.0/16"]}"#
        ),
        200
    );
    assert_eq!(put(LAB, body), 403, "a node token managed a site");
    assert_eq!(put(OPS, r#"{"coverage":["not-a-cidr"]}"#), 400);
    let (_, _, audit) = cp.get("/v1/audit", OPS, &[]);
    let audit: serde_json::Value = serde_json::from_slice(&audit).expect("json");
    assert_eq!(audit[0]["who"], "ops");
    assert_eq!(audit[0]["action"], "site.put");

    // Tokens: none, unknown, another site's.
    assert_eq!(fetch(&format!("{}/v1/nodes", cp.url()), &[]).0, 401);
    assert_eq!(cp.get("/v1/nodes", "not-a-token-at-all-xx", &[]).0, 403);
    let beat = r#"{"node":"intruder","site":"lab","role":"edge","ready":true}"#;
    let (status, _, _) = cp.get(
        "/v1/heartbeat",
        OTHER,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            beat,
        ],
    );
    assert_eq!(status, 403, "a token of another site registered a node");
    let (status, _, _) = cp.get(
        "/v1/heartbeat",
        LAB,
        &["-X", "POST", "--data", "{\"node\": 12}"],
    );
    assert_eq!(status, 400);

    // The registry survives a restart of the control plane; health is measured again.
    cp_process.signal("TERM");
    assert!(cp_process.wait_exit(Duration::from_secs(20)));
    let _cp = cp.start();
    let (_, _, sites) = cp.get("/v1/sites", OPS, &[]);
    let sites: serde_json::Value = serde_json::from_slice(&sites).expect("json");
    assert_eq!(sites[0]["coverage"][0], "10.1.0.0/16");
    cp.wait_node("edge-test", true, Duration::from_secs(20));
    // The dashboard shows it, in a real browser.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/dashboard.mjs");
    let shot = cp.dir.path().join("dashboard.png");
    let out = run(Command::new("node").args([
        script,
        &cp.url(),
        OPS,
        "edge-test",
        shot.to_str().expect("path"),
    ]));
    assert!(
        out.status.success(),
        "dashboard: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a real screenshot: {} bytes",
        png.len()
    );
    // The plots' data: the last hour per site, one point a step.
    let (status, _, body) = cp.get("/v1/history", OPS, &[]);
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(history["step_seconds"], 1);
    assert!(
        history["points"]
            .as_array()
            .is_some_and(|p| p.len() >= 2 && p.iter().all(|x| x["sites"]["lab"].is_object())),
        "{history}"
    );
    assert_eq!(cp.get("/v1/history", LAB, &[]).0, 403);
    // The table form of the CLI, for people.
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary")).args([
        "nodes",
        "--control-plane",
        &cp.url(),
        "--token",
        OPS,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("NODE") && text.contains("edge-test"),
        "{text}"
    );
}

#[test]
fn a_node_keeps_serving_when_its_control_plane_is_gone() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let site = edge_with_control_plane("cp-gone", &dead, LAB);
    let edge = site.start();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = http_get_raw(site.http, "/pub/hello.txt").expect("get");
    assert_eq!((status, body.ends_with("hello\n")), (200, true));
    assert!(
        edge.log()
            .contains("A heartbeat to the control plane failed"),
        "{}",
        edge.log()
    );
}
