//! A hostile upstream SFU on a cascade link (tests/clients/hostile_upstream.py): the real
//! `estuary sfu` is ordered to relay a room from it, an honest participant joins, and the
//! "upstream" abuses the link (garbage, bogus SDP, hundreds of participants with huge names,
//! an oversized frame, silence). The SFU must stay up and serving, never stand in for more of
//! the other site's participants than the room holds, cut names to size, drop every stand-in
//! when the link ends, try the link again only a bounded number of times, and keep its log
//! from being flooded.
mod common;

use std::process::Command;

use common::KEY_HEX;
use common::sfu::{Sfu, room_token, sign};
use serde_json::Value;

#[test]
fn a_hostile_upstream_sfu_cannot_crash_flood_or_overfill_a_room() {
    let sfu = Sfu::start(
        "sfu-hostile-upstream",
        "[rooms]\nmax_participants = 8\nmax_publishers = 8\n",
    );
    let fake = format!("127.0.0.1:{}", common::free_port());
    let room = "r1";
    let order = format!(r#"{{"upstream":"http://{fake}","upstream_node":"sfu-evil"}}"#);
    let (s, _, body) = sfu.request(
        "PUT",
        &format!("/cascade/{room}"),
        Some(&sign(&format!("/cascade/{room}"), "k1", KEY_HEX)),
        Some("application/json"),
        &order,
    );
    assert!(s == 200 || s == 201, "order taken: {s} {body}");

    let out = common::run(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/hostile_upstream.py"
            ))
            .args(["--listen", &fake, "--sfu", &format!("ws://{}", sfu.http)])
            .args([
                "--room",
                room,
                "--token",
                &room_token(room),
                "--seconds",
                "12",
            ]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hostile_upstream.py failed: {stdout}\n{}\nSFU log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sfu.process.log()
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON");
    eprintln!("{r}");

    // The link was opened, and opened again after each failure, a bounded number of times
    // (backing off: 2 s, then 4 s, ...).
    let connections = r["connections"].as_array().cloned().unwrap_or_default();
    assert!((2..=4).contains(&connections.len()), "link attempts: {r}");
    assert_eq!(connections[0]["path"], format!("/cascade/{room}/ws"));
    // The honest participant was told of the other site's participants, never more than the
    // room holds (8, itself and the link among them), with names cut to size, and of each
    // one's leaving; the SFU still answers it.
    let joined = r["joined"].as_array().map(Vec::len).unwrap_or(0);
    assert!((1..=7).contains(&joined), "stand-ins announced: {r}");
    assert!(
        r["longest_name"].as_u64().unwrap_or(u64::MAX) <= 64,
        "names are cut: {r}"
    );
    assert_eq!(
        r["joined"], r["left"],
        "every stand-in left with its link: {r}"
    );
    // The link is told of this site's participant, never of the stand-ins for the upstream's
    // own participants (neither their joining nor their leaving).
    for c in &connections {
        let relayed = c["relayed"].as_array().cloned().unwrap_or_default();
        assert!(
            !relayed.is_empty(),
            "the honest participant was relayed: {r}\nSFU log:\n{}",
            sfu.process.log()
        );
        for p in relayed {
            assert!(
                !r["joined"].as_array().is_some_and(|j| j.contains(&p)),
                "{p} was relayed back to the side it came from: {r}"
            );
        }
    }
    assert_eq!(r["pong"], true, "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");

    // Nothing is left standing in, nothing panicked, and the SFU serves a new participant.
    assert_eq!(sfu.metric("estuary_sfu_cascade_participants", &[]), 0.0);
    assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    let (s, _, _) = sfu.request("GET", "/healthz", None, None, "");
    assert_eq!(s, 200);
    let (s, _, answer) = sfu.offer("whep", "r2", &common::sfu::synthetic_offer("recvonly"));
    assert_eq!(s, 201, "{answer}");
    // The abuse did not flood the log: a line or two per link attempt, not one per frame.
    let log = sfu.process.log();
    let lines = log.lines().count();
    assert!(lines < 100, "{lines} log lines:\n{log}");
}
