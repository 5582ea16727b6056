//! The fleet's trust model, attacked as a hostile node would (issue 15, findings 1 and 2, and
//! the purge-token capture): a node's credential speaks only for its own id, site and role;
//! refusals are audited; two live processes never share an id; a peer that serves a forged
//! asset never gets it published (signed manifests are the trust anchor, whoever serves
//! them); the control plane never pushes an asset whose manifest no trusted key signed; and
//! purges reach each edge with that edge's own credential, never a fleet-wide secret.

mod common;

use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::*;

/// POSTs a heartbeat; its status and body.
fn beat(cp: &ControlPlane, token: &str, body: &serde_json::Value) -> (u16, String) {
    let text = body.to_string();
    let (status, _, answer) = cp.get(
        "/v1/heartbeat",
        token,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &text,
        ],
    );
    (status, String::from_utf8_lossy(&answer).into_owned())
}

fn heartbeat(node: &str, site: &str, role: &str, http: &str) -> serde_json::Value {
    serde_json::json!({
        "node": node, "site": site, "role": role, "ready": true,
        "addresses": {"http": http, "admin": http},
    })
}

/// `POST /v1/purges` of `target` as the operator; the status.
fn post_purge(cp: &ControlPlane, target: &str) -> u16 {
    let body = serde_json::json!({ "target": target }).to_string();
    cp.get(
        "/v1/purges",
        OPS,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
        ],
    )
    .0
}

fn audit(cp: &ControlPlane) -> Vec<serde_json::Value> {
    let (status, _, body) = cp.get("/v1/audit", OPS, &[]);
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("audit json")
}

#[test]
fn a_node_credential_speaks_only_for_its_own_node_site_and_role() {
    let cp = ControlPlane::new("sec-identity");
    let _cp = cp.start();
    let a1 = cred("edge-a1");
    let ok = heartbeat("edge-a1", "a", "edge", "http://127.0.0.1:9");
    assert_eq!(beat(&cp, &a1, &ok).0, 200);

    // Finding 1: any site's node token registered an origin (any site). Now: refused.
    for (token, node, site) in [(OTHER, "0-rogue", "other"), (LAB, "0-rogue", "lab")] {
        let (status, body) = beat(
            &cp,
            token,
            &heartbeat(node, site, "origin", "http://127.0.0.1:9"),
        );
        assert_eq!(status, 403, "a site token registered an origin: {body}");
    }
    // A node's own credential cannot change its role either.
    let (status, _) = beat(
        &cp,
        &a1,
        &heartbeat("edge-a1", "a", "origin", "http://127.0.0.1:9"),
    );
    assert_eq!(status, 403, "an edge's credential registered an origin");

    // Finding 2: site A's credential re-registered site B's node with its own addresses.
    let (status, body) = beat(
        &cp,
        &a1,
        &heartbeat("edge-b1", "b", "edge", "http://127.0.0.1:6666"),
    );
    assert_eq!(status, 403, "{body}");
    // A site token cannot speak for another site's node, nor for a node with a credential.
    assert_eq!(
        beat(
            &cp,
            OTHER,
            &heartbeat("edge-b1", "b", "edge", "http://127.0.0.1:6666")
        )
        .0,
        403
    );
    assert_eq!(
        beat(
            &cp,
            LAB,
            &heartbeat("edge-own", "lab", "edge", "http://127.0.0.1:6666")
        )
        .0,
        403
    );
    // Site a's nodes advertise addresses inside its networks only (127.0.0.0/8 here).
    let (status, body) = beat(
        &cp,
        &a1,
        &heartbeat("edge-a1", "a", "edge", "http://192.0.2.10:80"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("networks"), "{body}");

    // Nothing of it reached the registry.
    let nodes = cp.nodes();
    assert!(
        nodes
            .iter()
            .all(|n| n["id"] != "0-rogue" && n["id"] != "edge-b1"),
        "{nodes:?}"
    );
    let a1_state = nodes
        .iter()
        .find(|n| n["id"] == "edge-a1")
        .expect("edge-a1");
    assert_eq!(a1_state["role"], "edge");
    assert_eq!(a1_state["addresses"]["http"], "http://127.0.0.1:9");

    // Every refusal is in the audit log, with who tried it.
    let log = audit(&cp);
    let refused = |who: &str, target: &str| {
        log.iter()
            .any(|e| e["action"] == "heartbeat-refused" && e["who"] == who && e["target"] == target)
    };
    assert!(refused("node:edge-a1", "edge-b1"), "{log:?}");
    assert!(refused("site-token:other", "0-rogue"), "{log:?}");
    assert!(refused("site-token:lab", "edge-own"), "{log:?}");

    // A second live process claiming the same id is refused (409) and audited; the first
    // keeps it; once it leaves, the id is free at once.
    let with = |instance: &str, leaving: bool| {
        let mut hb = heartbeat("edge-a1", "a", "edge", "http://127.0.0.1:9");
        hb["instance"] = instance.into();
        hb["leaving"] = leaving.into();
        hb
    };
    assert_eq!(beat(&cp, &a1, &with("first", false)).0, 200);
    let (status, body) = beat(&cp, &a1, &with("second", false));
    assert_eq!(status, 409, "{body}");
    assert_eq!(beat(&cp, &a1, &with("first", false)).0, 200);
    // It keeps trying; its refusals (whose text names the holder's heartbeat age) are
    // audited once a minute, not once per try.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(beat(&cp, &a1, &with("second", false)).0, 409);
    let held = audit(&cp)
        .iter()
        .filter(|e| {
            e["action"] == "heartbeat-refused"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("another live process"))
        })
        .count();
    assert_eq!(held, 1, "the second process was audited {held} times");
    assert_eq!(beat(&cp, &a1, &with("first", true)).0, 200);
    assert_eq!(beat(&cp, &a1, &with("second", false)).0, 200);

    // The state feed is for steering and operators only.
    assert_eq!(cp.get("/v1/state", &a1, &[]).0, 403);
    assert_eq!(cp.get("/v1/state", &cred("steering-test"), &[]).0, 200);
}

/// A hostile node: `tests/clients/rogue_node.py` serving `root`, recording what it is sent.
struct Rogue {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Rogue {
    fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let root = dir.join("rogue");
        std::fs::create_dir_all(&root).expect("mkdir");
        let log = dir.join("rogue.log");
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/rogue_node.py"
            ))
            .arg(port.to_string())
            .arg(&root)
            .arg(&log)
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the rogue node did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test asset's files with every media segment's bytes replaced by `fill`: another
/// version of the same asset, with a manifest that matches it.
fn segments_filled_with(fill: u8) -> Vec<(String, Vec<u8>)> {
    fake_asset_files()
        .into_iter()
        .map(|(path, mut data)| {
            if path.ends_with(".m4s") {
                data.iter_mut().for_each(|b| *b = fill);
            }
            (path, data)
        })
        .collect()
}

#[test]
fn a_forged_asset_from_a_peer_is_never_published_and_purges_carry_no_fleet_secret() {
    let cp = ControlPlane::new("sec-forged");
    let _cp = cp.start();
    let mut origin_site = OriginSite::new("sec-origin");
    origin_site.extra = joined(&cp, &cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "movie");
    let _origin = origin_site.start();
    let edge_site = edge_with_control_plane("sec-edge", &cp.url(), LAB);
    let _edge = edge_site.start();

    // The rogue: a registered edge of the same site (its own, valid credential) that
    // claims to hold "movie" and serves forged files with a manifest that matches them,
    // signed with a key of its own under the trusted key's id.
    let rogue_dir = TempDir::new("sec-rogue");
    let rogue = Rogue::start(rogue_dir.path());
    let forged = segments_filled_with(b'X');
    let rogue_asset = rogue_dir.path().join("rogue/v/movie");
    write_asset(&rogue_dir.path().join("rogue"), "movie", &forged);
    let rogue_key =
        estuary_common::signing::ManifestSigner::generate(MANIFEST_KEY_ID).expect("rogue key");
    estuary_common::signing::sign_folder(&rogue_key, &rogue_asset).expect("rogue signature");
    // And "trailer" in an older version that the origin's key really signed (a replay).
    let old_trailer = segments_filled_with(b'O');
    write_asset(&rogue_dir.path().join("rogue"), "trailer", &old_trailer);
    write_fake_asset(&origin_site.storage_root(), "trailer");
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let stop = Arc::clone(&stop);
        let url = cp.url();
        let rogue_url = rogue.url();
        let token = cred("edge-own");
        std::thread::spawn(move || {
            let body = serde_json::json!({
                "node": "edge-own", "site": "lab", "role": "edge", "ready": true,
                "addresses": {"http": rogue_url, "admin": rogue_url},
                "inventory": [
                    {"asset": "movie", "state": "present"},
                    {"asset": "trailer", "state": "present"},
                ],
            })
            .to_string();
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-X", "POST"])
                    .args(["-H", &format!("Authorization: Bearer {token}")])
                    .args(["-H", "Content-Type: application/json", "--data", &body])
                    .arg(format!("{url}/v1/heartbeat"))
                    .output();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    for node in ["edge-test", "edge-own", "origin-test"] {
        cp.wait_node(node, true, Duration::from_secs(20));
    }

    // The control plane never places an asset whose manifest no trusted key signed: without
    // a signature the push waits (pending, placed nowhere); with a signature that does not
    // verify it is refused.
    write_asset(&origin_site.storage_root(), "unsigned", &fake_asset_files());
    let sig = origin_site.storage_root().join("v/unsigned/asset.json.sig");
    std::fs::remove_file(&sig).expect("unsign");
    let push_unsigned = || {
        let (status, _, body) = cp.get(
            "/v1/assets/unsigned/push",
            OPS,
            &["-X", "POST", "--data", "{}"],
        );
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = push_unsigned();
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status, 202, "{body}");
    assert!(
        reply["placements"].as_array().is_some_and(|p| p.is_empty()),
        "{body}"
    );
    assert!(
        reply["pending"]
            .as_str()
            .is_some_and(|p| p.contains("asset.json.sig")),
        "{body}"
    );
    std::fs::write(&sig, b"a signature no key made").expect("forge");
    let (status, body) = push_unsigned();
    assert_eq!(
        status, 409,
        "an asset that does not verify was pushed: {body}"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cp.cli(&["fill", "status", "unsigned", "--json"])).expect("json");
    assert!(rows.iter().all(|r| r["state"] == "pending"), "{rows:?}");
    cp.cli(&["push", "unsigned", "--remove"]);

    // Both edges of the site get "movie"; the real one is offered the rogue first (it says
    // it holds the asset), refuses its manifest, and fills from the origin.
    let text = cp.cli(&["push", "movie", "--replicas", "2"]);
    assert!(
        text.contains("edge-test") && text.contains("edge-own"),
        "{text}"
    );
    cp.wait_fill("movie", "edge-test", "present");
    for (path, data) in fake_asset_files() {
        let on_disk = std::fs::read(edge_site.content.join("v/movie").join(&path)).expect("filled");
        assert!(
            on_disk == data,
            "{path}: the edge published the rogue's bytes"
        );
    }
    assert!(edge_site.content.join("v/movie/asset.json.sig").exists());
    let asked = rogue.requests();
    assert!(
        asked.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v/movie/asset.json"))),
        "the rogue peer was never offered, so the test proved nothing: {asked:?}"
    );
    assert!(
        !asked
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.contains(".m4s"))),
        "the edge fetched segments listed by a manifest it could not trust: {asked:?}"
    );

    // A validly signed manifest of another version is refused too: the placement pins the
    // Merkle root of the manifest the control plane verified.
    let text = cp.cli(&["push", "trailer", "--replicas", "2"]);
    assert!(text.contains("edge-test"), "{text}");
    cp.wait_fill("trailer", "edge-test", "present");
    for (path, data) in fake_asset_files() {
        let on_disk =
            std::fs::read(edge_site.content.join("v/trailer").join(&path)).expect("filled");
        assert!(
            on_disk == data,
            "{path}: the edge published the replayed old version"
        );
    }
    let asked = rogue.requests();
    assert!(
        asked.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v/trailer/asset.json"))),
        "the rogue peer was never offered the trailer: {asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v/trailer/") && p.contains(".m4s"))),
        "the edge fetched segments of a version the control plane did not place: {asked:?}"
    );

    // A purge reaches the rogue with its own credential only: nothing it could use on
    // another node.
    let status = post_purge(&cp, "/v/movie/*");
    assert!(status == 200 || status == 202, "{status}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let deletes = loop {
        let deletes: Vec<serde_json::Value> = rogue
            .requests()
            .into_iter()
            .filter(|r| r["method"] == "DELETE")
            .collect();
        if !deletes.is_empty() {
            break deletes;
        }
        assert!(
            Instant::now() < deadline,
            "the purge never reached the rogue"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for d in &deletes {
        assert_eq!(
            d["authorization"],
            format!("Bearer {}", cred("edge-own")),
            "the rogue was sent another credential"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = beats.join();
}

#[test]
fn absurd_heartbeat_figures_and_unappliable_purge_targets_are_refused() {
    let cp = ControlPlane::new("sec-figures");
    let _cp = cp.start();
    let a1 = cred("edge-a1");
    let mut hb = heartbeat("edge-a1", "a", "edge", "http://127.0.0.1:9");
    assert_eq!(beat(&cp, &a1, &hb).0, 200);
    for (field, value) in [
        ("capacity", serde_json::json!({"gbps": -5.0})),
        ("capacity", serde_json::json!({"gbps": 1e300})),
        ("load", serde_json::json!({"cpu": 7.0})),
        ("load", serde_json::json!({"requests_per_second": -1.0})),
        ("usage", serde_json::json!({"cache_hit_ratio": 3.0})),
        ("version", serde_json::json!("x".repeat(5000))),
        (
            "inventory",
            serde_json::json!([{"asset": "../etc", "state": "present"}]),
        ),
    ] {
        let mut bad = hb.clone();
        bad[field] = value.clone();
        let (status, body) = beat(&cp, &a1, &bad);
        assert_eq!(status, 400, "{field} = {value}: {body}");
    }
    // The registry kept the last good figures.
    let nodes = cp.nodes();
    let a1_state = nodes
        .iter()
        .find(|n| n["id"] == "edge-a1")
        .expect("edge-a1");
    assert!(
        a1_state["capacity"]["gbps"]
            .as_f64()
            .is_some_and(|g| (0.0..=10_000.0).contains(&g))
    );
    hb["capacity"] = serde_json::json!({"gbps": 40.0});
    assert_eq!(beat(&cp, &a1, &hb).0, 200);

    // A purge target no edge can apply (an escaped '%', '?', '#' or '/', a bad escape) is
    // refused at once instead of being retried forever.
    for target in [
        "/v/a%25b", "/v/a%3Fb", "/v/a%23b", "/v/a%2Fb", "/v/a%zz", "/v/a?b",
    ] {
        assert_eq!(post_purge(&cp, target), 400, "{target}");
    }
}

#[test]
fn a_shared_site_token_registers_a_bounded_number_of_nodes() {
    let cp = ControlPlane::new("sec-census");
    let _cp = cp.start();
    // Made-up edges, each a target the health monitor would poll: the deprecated site token
    // registers at most 256 of them (one Python process posts them, curl would take long).
    let script = format!(
        r#"
import json, urllib.request
ok = 0
for i in range(257):
    body = json.dumps({{"node": "fake-%d" % i, "site": "lab", "role": "edge", "ready": True,
                       "addresses": {{"admin": "http://127.0.0.1:9"}}}}).encode()
    req = urllib.request.Request("{url}/v1/heartbeat", data=body, method="POST",
        headers={{"Authorization": "Bearer {LAB}", "Content-Type": "application/json"}})
    try:
        urllib.request.urlopen(req, timeout=5)
        ok += 1
    except urllib.error.HTTPError as e:
        print(json.dumps({{"ok": ok, "refused_at": i, "status": e.code}}))
        break
else:
    print(json.dumps({{"ok": ok}}))
"#,
        url = cp.url()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], 256, "{v}");
    assert_eq!(v["status"], 403, "{v}");
    // A node already registered keeps beating, and nodes with their own credential are not
    // counted against the site token.
    assert_eq!(
        beat(
            &cp,
            LAB,
            &heartbeat("fake-0", "lab", "edge", "http://127.0.0.1:9")
        )
        .0,
        200
    );
    assert_eq!(
        beat(
            &cp,
            &cred("edge-own"),
            &heartbeat("edge-own", "lab", "edge", "http://127.0.0.1:9")
        )
        .0,
        200
    );
}
