//! A meeting keeps its SFU across control-plane replicas and restarts: the meeting table lives
//! in the control plane's database, not in one process. Real control planes, real PostgreSQL,
//! real `estuary sfu` processes registered by their own heartbeats.
//!
//! 1. Two replicas share one PostgreSQL: a meeting placed through one is found through the
//!    other (same SFU), a later participant sent through the other to a cascade SFU is
//!    recorded for both (the stored meeting names it), and with the first replica killed the
//!    second keeps answering the meeting.
//! 2. One control plane on SQLite, killed (-9) and started again: the meeting is still there,
//!    on the same SFU while the control plane has not checked it yet, and moves off it once
//!    it has and found it gone.
mod common;

use std::time::Duration;

use common::cp_site::{
    ControlPlane, OPS, cred, joined, joined_all, meetings_config, paris_and_tokyo,
};
use common::postgres::Postgres;
use common::sfu::Sfu;
use serde_json::{Value, json};

/// `POST` (with a body) or `GET` `path` on `cp` with the operator token: (status, JSON or text).
fn call(cp: &ControlPlane, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text;
    let mut args: Vec<&str> = Vec::new();
    if let Some(b) = body {
        text = b.to_string();
        args.extend_from_slice(&["-X", "POST", "-H", "Content-Type: application/json"]);
        args.extend_from_slice(&["--data", &text]);
    }
    let (status, _, out) = cp.get(path, OPS, &args);
    let out = String::from_utf8_lossy(&out).into_owned();
    (
        status,
        serde_json::from_str(&out).unwrap_or(Value::String(out)),
    )
}

fn sfu(id: &str, site: &str, control_planes: &str) -> Sfu {
    Sfu::start_node(
        &format!("shared-{id}"),
        id,
        site,
        None,
        "127.0.0.1",
        control_planes,
    )
}

#[test]
fn replicas_on_one_postgres_give_a_meeting_the_same_sfu_and_cascades() {
    let pg = Postgres::start("cp-meetings-shared");
    let database = pg.database("estuary_cp");
    let mut one = ControlPlane::with_database("cp-meetings-1", &database);
    one.extra = meetings_config();
    let mut two = ControlPlane::with_database("cp-meetings-2", &database);
    two.extra = meetings_config();
    let (p1, p2) = std::thread::scope(|s| {
        let h1 = s.spawn(|| one.start());
        let h2 = s.spawn(|| two.start());
        (h1.join().expect("replica 1"), h2.join().expect("replica 2"))
    });
    let mut replica_one = p1;
    let _replica_two = p2;
    paris_and_tokyo(&one);
    // Each SFU knows both replicas and beats to the first while it answers; the second
    // learns of it through the database.
    let _paris = sfu(
        "sfu-paris-1",
        "paris",
        &joined_all(&[&one, &two], &cred("sfu-paris-1")),
    );
    let _tokyo = sfu(
        "sfu-tokyo",
        "tokyo",
        &joined_all(&[&one, &two], &cred("sfu-tokyo")),
    );
    for cp in [&one, &two] {
        for id in ["sfu-paris-1", "sfu-tokyo"] {
            cp.wait_node(id, true, Duration::from_secs(30));
        }
    }

    let (s, placed) = call(&one, "/v1/meetings", Some(&json!({"region": "paris"})));
    assert_eq!(s, 201, "{placed}");
    assert_eq!(placed["sfu"]["node"], "sfu-paris-1", "{placed}");
    let room = placed["room"].as_str().expect("room").to_owned();

    // Found through the other replica, on the same SFU.
    let (s, found) = call(&two, &format!("/v1/meetings/{room}"), None);
    assert_eq!(s, 200, "replica two knows the meeting: {found}");
    assert_eq!(found["sfu"]["node"], "sfu-paris-1", "{found}");

    // A Tokyo participant through replica two goes to the Tokyo SFU, which relays the room;
    // the stored meeting records the cascade for replica one too.
    let (s, joined_tokyo) = call(
        &two,
        &format!("/v1/meetings/{room}/participants"),
        Some(&json!({"region": "tokyo"})),
    );
    assert_eq!(s, 200, "{joined_tokyo}");
    assert_eq!(joined_tokyo["sfu"]["node"], "sfu-tokyo", "{joined_tokyo}");
    assert_eq!(
        joined_tokyo["cascade"]["upstream_node"], "sfu-paris-1",
        "{joined_tokyo}"
    );
    let stored = pg
        .psql(
            "estuary_cp",
            &format!("SELECT body FROM meetings WHERE room = '{room}'"),
        )
        .expect("stored meeting");
    let stored: Value = serde_json::from_str(&stored).expect("JSON body");
    assert_eq!(stored["node"], "sfu-paris-1", "{stored}");
    assert_eq!(stored["cascades"]["tokyo"], "sfu-tokyo", "{stored}");
    let (s, again) = call(
        &one,
        &format!("/v1/meetings/{room}/participants"),
        Some(&json!({"region": "tokyo"})),
    );
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["sfu"]["node"], "sfu-tokyo", "{again}");

    // Replica one dies; replica two keeps answering the meeting.
    replica_one.signal("KILL");
    replica_one.wait_exit(Duration::from_secs(10));
    let (s, found) = call(&two, &format!("/v1/meetings/{room}"), None);
    assert_eq!(s, 200, "{found}");
    assert_eq!(found["sfu"]["node"], "sfu-paris-1", "{found}");

    // A room no replica placed is still unknown.
    let (s, _) = call(&two, "/v1/meetings/m-0000000000000000", None);
    assert_eq!(s, 404);
}

/// Restarted, the control plane has not checked any node yet: the meeting keeps its SFU
/// until it has had time to (here `poll_timeout` is long, so that time is about 7 s), and only
/// then moves off an SFU that is really gone.
#[test]
fn a_meeting_outlives_a_control_plane_restart_on_sqlite() {
    let mut cp = ControlPlane::new("cp-meetings-restart");
    cp.extra = meetings_config();
    cp.poll_timeout = "2s";
    let mut process = cp.start();
    paris_and_tokyo(&cp);
    let paris_1 = sfu("sfu-paris-1", "paris", &joined(&cp, &cred("sfu-paris-1")));
    let paris_2 = sfu("sfu-paris-2", "paris", &joined(&cp, &cred("sfu-paris-2")));
    for id in ["sfu-paris-1", "sfu-paris-2"] {
        cp.wait_node(id, true, Duration::from_secs(30));
    }
    let (s, placed) = call(&cp, "/v1/meetings", Some(&json!({"region": "paris"})));
    assert_eq!(s, 201, "{placed}");
    let room = placed["room"].as_str().expect("room").to_owned();
    let node = placed["sfu"]["node"].as_str().expect("node").to_owned();

    // The control plane dies, and so does the meeting's SFU while it is away.
    process.signal("KILL");
    process.wait_exit(Duration::from_secs(10));
    let mut sfus = vec![("sfu-paris-1", paris_1), ("sfu-paris-2", paris_2)];
    let victim = sfus
        .iter()
        .position(|(id, _)| *id == node)
        .expect("placed on a Paris SFU");
    drop(sfus.remove(victim));
    let other = sfus[0].0;
    let started = std::time::Instant::now();
    let _process = cp.start();
    let (s, found) = call(&cp, &format!("/v1/meetings/{room}"), None);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the test was too slow to ask before the control plane settled"
    );
    assert_eq!(s, 200, "the meeting outlived the restart: {found}");
    assert_eq!(
        found["sfu"]["node"],
        node.as_str(),
        "kept while unchecked: {found}"
    );

    // Settled: its SFU is gone, so it moves to the other one.
    cp.wait_node(other, true, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    let (s, moved) = call(&cp, &format!("/v1/meetings/{room}"), None);
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["sfu"]["node"], other, "{moved}");
}
