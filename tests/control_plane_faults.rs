//! Faults of the control plane's surroundings stay small: a frozen PostgreSQL, a replica
//! killed, the network between nodes and the control plane cut. Every fault here used to
//! take every healthy node out of rotation (or a replica out of a load balancer); each test
//! starts the real services and the real dependency and checks, all through the fault, that
//! healthy nodes stay up and steering keeps answering.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cp_site::*;
use common::origin_site::*;
use common::postgres::Postgres;
use common::steering_site::SteeringSite;
use common::*;

/// `[health] heartbeat_timeout` of the test control planes.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes `cp` lists as down, with their reasons.
fn down_nodes(cp: &ControlPlane) -> Vec<String> {
    let (status, _, body) = cp.get("/v1/nodes", OPS, &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
    nodes
        .iter()
        .filter(|n| n["up"] != true)
        .map(|n| format!("{}: {}", n["id"], n["down_reason"]))
        .collect()
}

/// The edges steering offers for `movie`.
fn steered_edges(steering: &SteeringSite) -> (u16, Vec<String>) {
    let (status, mut ids, _) = steering.playback_edges("movie");
    ids.sort();
    (status, ids)
}

/// `/healthz` as an operator sees it (`operator` true) or as anyone who reaches the port.
fn healthz_as(cp: &ControlPlane, operator: bool) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {OPS}");
    let args: &[&str] = if operator { &["-H", &auth] } else { &[] };
    let (status, _, body) = fetch(&format!("{}/healthz", cp.url()), args);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("healthz json")
}

fn healthz(cp: &ControlPlane) -> serde_json::Value {
    healthz_as(cp, true)
}

fn push(cp: &ControlPlane, asset: &str) -> (u16, String) {
    let auth = format!("Authorization: Bearer {OPS}");
    let (status, _, body) = fetch(
        &format!("{}/v1/assets/{asset}/push", cp.url()),
        &["-X", "POST", "-H", &auth, "-d", "{\"replicas\": 2}"],
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Checks, every 300 ms for `how_long`, that both edges are up on every control plane in
/// `cps` and that steering offers both.
fn hold_steady(cps: &[&ControlPlane], steering: &SteeringSite, how_long: Duration, what: &str) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        for cp in cps {
            let down = down_nodes(cp);
            assert!(down.is_empty(), "{what}: {} lists {down:?} down", cp.url());
        }
        let (status, edges) = steered_edges(steering);
        assert_eq!(
            (status, edges.clone()),
            (200, vec!["edge-a".to_owned(), "edge-b".to_owned()]),
            "{what}: steering answered {status} with {edges:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_frozen_database_and_a_killed_replica_leave_every_healthy_node_up() {
    let pg = Postgres::start("cp-faults");
    let database = pg.database("estuary_cp");
    let one = ControlPlane::with_database("cp-fault-1", &database);
    let two = ControlPlane::with_database("cp-fault-2", &database);
    let mut replica_one = one.start();
    let _replica_two = two.start();

    // Every node knows both replicas; edge-b prefers replica two, so each replica receives
    // some heartbeats directly and learns of the others through the database only.
    let mut origin_site = OriginSite::new("fault-origin");
    origin_site.extra = joined_all(&[&one, &two], &cred("origin-test"));
    write_fake_asset(&origin_site.storage_root(), "movie");
    write_fake_asset(&origin_site.storage_root(), "second");
    let _origin = origin_site.start();
    let mut a = Site::new("fault-edge-a");
    a.node_id = "edge-a".into();
    a.extra = joined_all(&[&one, &two], LAB);
    let mut b = Site::new("fault-edge-b");
    b.node_id = "edge-b".into();
    b.extra = joined_all(&[&two, &one], LAB);
    let _edge_a = a.start();
    let _edge_b = b.start();
    let mut steering = SteeringSite::new("fault-steering");
    steering.with_control_plane(&one.url(), &cred("steering-test"));
    steering.source = format!(
        "urls = [\"{}\", \"{}\"]\ntoken = \"{}\"\npoll_wait = \"20s\"\n",
        one.url(),
        two.url(),
        cred("steering-test")
    );
    let steering_process = steering.start();
    for cp in [&one, &two] {
        for node in ["edge-a", "edge-b", "origin-test", "steering-test"] {
            cp.wait_node(node, true, Duration::from_secs(30));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while steered_edges(&steering).1 != ["edge-a", "edge-b"] {
        assert!(
            Instant::now() < deadline,
            "steering never offered both edges"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // PostgreSQL hangs for three heartbeat timeouts.
    pg.freeze();
    hold_steady(
        &[&one, &two],
        &steering,
        HEARTBEAT_TIMEOUT * 3,
        "database frozen",
    );
    for cp in [&one, &two] {
        // Still ready (the state feed answers from memory); the database's state is told.
        let (status, body) = http_get_raw(cp.http, "/readyz").expect("readyz");
        assert_eq!(status, 200, "{body}");
        let h = healthz(cp);
        assert_eq!(h["database"]["up"], false, "{h}");
        assert!(
            h["database"]["unavailable_for_seconds"].as_u64() >= Some(5),
            "{h}"
        );
        assert!(h["database"]["pending_writes"].as_u64() > Some(0), "{h}");
        // Without an operator token: up or not, and nothing more (the reason names the
        // database's host and user).
        let anonymous = healthz_as(cp, false);
        assert_eq!(anonymous["database"]["up"], false, "{anonymous}");
        assert!(anonymous["database"].get("reason").is_none(), "{anonymous}");
        assert!(anonymous.get("panic_held_edges").is_none(), "{anonymous}");
        let (_, _, metrics) = fetch(&format!("{}/metrics", cp.url()), &[]);
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics.contains("estuary_cp_database_up 0"),
            "{}",
            metrics
                .lines()
                .filter(|l| l.contains("database"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // A write says why it cannot be made.
        let (status, body) = push(cp, "movie");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("database is unavailable"), "{body}");
    }

    // Back: queued writes are made and writes work again.
    pg.thaw();
    let deadline = Instant::now() + Duration::from_secs(20);
    for cp in [&one, &two] {
        loop {
            let h = healthz(cp);
            if h["database"]["up"] == true && h["database"]["pending_writes"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database never came back: {h}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (status, body) = push(&two, "movie");
    assert_eq!(status, 202, "{body}");
    one.wait_fill("movie", "edge-a", "present");
    one.wait_fill("movie", "edge-b", "present");
    assert!(down_nodes(&one).is_empty() && down_nodes(&two).is_empty());

    // Replica one dies: the nodes that beat to it move to replica two, which never takes
    // them for down; steering's feed moves too; pushes go on through replica two.
    replica_one.signal("KILL");
    replica_one.wait_exit(Duration::from_secs(10));
    hold_steady(
        &[&two],
        &steering,
        HEARTBEAT_TIMEOUT * 2,
        "replica one killed",
    );
    let (status, body) = push(&two, "second");
    assert_eq!(status, 202, "{body}");
    two.wait_fill("second", "edge-a", "present");
    two.wait_fill("second", "edge-b", "present");
    let log = std::fs::read_to_string(&steering_process.log_file).unwrap_or_default();
    assert!(
        log.contains("moves to the next control-plane replica"),
        "steering never moved to replica two"
    );
}

/// `estuary control-plane` with `database`: its exit status and standard error.
fn start_and_fail(name: &str, database: &str) -> String {
    let cp = ControlPlane::with_database(name, database);
    let config = cp.dir.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{}\"\n[database]\nurl = \"{database}\"\n[auth.operator_tokens]\nops = \"{OPS}\"\n",
            cp.http
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_estuary"))
        .args(["control-plane", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "{name}: started");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name}: the control plane neither started nor failed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

#[test]
fn a_database_that_refuses_says_which_of_login_database_or_permission_failed() {
    let pg = Postgres::start("cp-db-errors");
    let owned = pg.database("owned");
    let _ = owned;
    for sql in [
        "CREATE ROLE withpassword LOGIN PASSWORD 'right-password'",
        "CREATE ROLE limited LOGIN",
    ] {
        pg.psql("postgres", sql).expect(sql);
    }
    // Since PostgreSQL 15 only a schema's owner may create in `public`; `owned` belongs to
    // the test's superuser, so `limited` may connect but not create tables.
    pg.hba_first("host all withpassword 127.0.0.1/32 scram-sha-256");
    let server = pg.addr;

    let wrong_password = start_and_fail(
        "cp-wrong-password",
        &format!("postgres://withpassword:wrong@{server}/owned"),
    );
    assert!(
        wrong_password.contains("authentication failed")
            && wrong_password.contains("refused the password of user")
            && wrong_password.contains("withpassword"),
        "{wrong_password}"
    );
    let missing = start_and_fail(
        "cp-missing-db",
        &format!("postgres://estuary@{server}/nope"),
    );
    assert!(
        missing.contains("nope") && missing.contains("does not exist"),
        "{missing}"
    );
    let denied = start_and_fail("cp-denied", &format!("postgres://limited@{server}/owned"));
    assert!(
        denied.contains("permission denied") && denied.contains("GRANT CREATE"),
        "{denied}"
    );
    // And a server that is not there at all.
    let port = free_port();
    let unreachable = start_and_fail(
        "cp-no-server",
        &format!("postgres://estuary@127.0.0.1:{port}/x"),
    );
    assert!(
        unreachable.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}")),
        "{unreachable}"
    );
}

/// A TCP relay to `target` that can be cut: while off, it closes every connection, new and
/// established, as a broken network path between nodes and the control plane does.
struct Relay {
    addr: SocketAddr,
    on: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let on = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&on);
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let flag = Arc::clone(&flag);
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 16384];
                        while flag.load(Ordering::SeqCst) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, on }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }
}

#[test]
fn heartbeats_lost_from_most_edges_keep_them_in_rotation_and_alarm() {
    let mut cp = ControlPlane::new("cp-panic");
    // Below one edge in two: the first edge to fall silent already trips it, so no edge ever
    // leaves rotation in this test (with 50%, one of the two could, for a moment).
    cp.health = "panic_threshold = 0.3\n".into();
    // Polls must not time out on a busy machine while heartbeats are cut: an edge whose
    // polls fail goes down regardless of the threshold.
    cp.poll_timeout = "2s";
    let cp_process = cp.start();
    // The edges' heartbeats go through a relay that can be cut; the control plane still
    // reaches their admin addresses directly.
    let relay = Relay::start(cp.http);
    let via_relay = format!(
        "[control_plane]\nurl = \"http://{}\"\ntoken = \"{LAB}\"\ninterval = \"1s\"\n",
        relay.addr
    );
    let mut a = Site::new("panic-edge-a");
    a.node_id = "edge-a".into();
    a.extra = via_relay.clone();
    let mut b = Site::new("panic-edge-b");
    b.node_id = "edge-b".into();
    b.extra = via_relay;
    let _edge_a = a.start();
    let mut edge_b = b.start();
    for node in ["edge-a", "edge-b"] {
        cp.wait_node(node, true, Duration::from_secs(30));
    }

    // Every edge goes silent while answering its polls: more than the threshold's share of
    // the site, so the panic threshold keeps them in rotation, and says so.
    relay.set(false);
    let held_since = Instant::now();
    let mut alarmed = false;
    while held_since.elapsed() < HEARTBEAT_TIMEOUT * 3 {
        let (_, _, body) = cp.get("/v1/nodes", OPS, &[]);
        let nodes: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
        for n in &nodes {
            assert_eq!(n["up"], true, "an edge went out of rotation: {n}");
        }
        if held_since.elapsed() > HEARTBEAT_TIMEOUT + Duration::from_secs(2) {
            for n in &nodes {
                let why = n["held_up"].as_str().unwrap_or_default();
                assert!(
                    why.contains("panic threshold") && why.contains("2 of site \"lab\""),
                    "{n}"
                );
            }
            let h = healthz(&cp);
            assert_eq!(
                h["panic_held_edges"]["lab"],
                serde_json::json!(["edge-a", "edge-b"]),
                "{h}"
            );
            let (_, _, metrics) = fetch(&format!("{}/metrics", cp.url()), &[]);
            alarmed |= String::from_utf8_lossy(&metrics)
                .contains("estuary_cp_panic_held_edges{scope=\"lab\"} 2");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(alarmed, "no alarm in the metrics");
    let log = std::fs::read_to_string(&cp_process.log_file).unwrap_or_default();
    assert!(
        log.contains("more edges than the panic threshold allows"),
        "no alarm logged"
    );

    // An edge that stops answering its polls as well is really down: it goes out, whatever
    // the threshold; the silent one (one of two, still above 30%) stays held.
    edge_b.signal("KILL");
    edge_b.wait_exit(Duration::from_secs(10));
    let gone = cp.wait_node("edge-b", false, Duration::from_secs(20));
    // The poll reads /readyz and then /metrics: a kill between the two fails the second,
    // so the reason names whichever of the poll's requests failed (a CI run saw "metrics").
    assert!(
        gone["down_reason"]
            .as_str()
            .is_some_and(|r| r.contains("; readyz") || r.contains("; metrics")),
        "{gone}"
    );
    let kept = cp.wait_node("edge-a", true, Duration::from_secs(1));
    assert!(
        kept["held_up"]
            .as_str()
            .is_some_and(|r| r.contains("1 of site \"lab\"'s 2 edges")),
        "{kept}"
    );

    // The path comes back: edge-a beats again and holds nothing up any more.
    relay.set(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = cp.wait_node("edge-a", true, Duration::from_secs(20));
        if n.get("held_up").is_none_or(serde_json::Value::is_null) {
            break;
        }
        assert!(Instant::now() < deadline, "edge-a is still held: {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
