//! Cascading: one meeting on two real `estuary sfu` processes at two sites, placed by a real
//! control plane (`POST /v1/meetings`, then `POST /v1/meetings/<room>/participants` for a
//! participant at the other site), with aiortc participants (tests/clients/meeting_cascade.py)
//! on each. The SFU a participant was steered to relays the room from the meeting's SFU over
//! one link: every participant decodes every
//! other, names and mutes cross the link, leaving is told across it, and no SFU makes more
//! than one link for the room, however many of its participants watch.
mod common;

use std::process::Command;
use std::time::Duration;

use common::KEY_HEX;
use common::cp_site::{ControlPlane, OPS, cred, joined};
use common::sfu::{ClientSlot, Sfu, room_token, sign};
use serde_json::{Value, json};

/// The two media tests (aiortc, Chromium) run one after the other: on a 2-core machine
/// Chromium's three tabs beside three aiortc peers and four SFUs starve each other.
static ONE_MEDIA_TEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cascade_token(room: &str) -> String {
    sign(&format!("/cascade/{room}"), "k1", KEY_HEX)
}

/// Runs the three participants (ann on `a`, bob and cid on `b`) and returns their report.
fn meeting(a_url: &str, b_url: &str, a: &Sfu, b: &Sfu) -> Value {
    let slot = ClientSlot::take();
    let out = common::run(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/meeting_cascade.py"
            ))
            .args(["--a", a_url, "--b", b_url, "--seconds", "3"]),
    );
    drop(slot);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "meeting_cascade.py failed: {stdout}\n{}\nSFU A log:\n{}\nSFU B log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.process.log(),
        b.process.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// What the participants saw: everyone decodes everyone, by the names they joined with.
fn check_meeting(r: &Value) {
    for (pair, kinds) in [
        ("bob_from_ann", &["audio", "video"][..]),
        ("cid_from_ann", &["audio", "video"][..]),
        ("ann_from_bob", &["audio", "video"][..]),
        ("ann_from_cid", &["audio", "video"][..]),
        ("bob_from_cid", &["audio", "video"][..]),
    ] {
        for k in kinds {
            // 3 s after everyone decodes everyone: 150 audio frames of 20 ms and 45 video
            // frames at 15 fps are sent; half of them is plenty on a loaded machine.
            let floor = if *k == "audio" { 75 } else { 20 };
            assert!(n(&r["counts"][pair][k]) >= floor, "{pair} {k}: {r}");
        }
    }
    // Everyone sees the two others by name, once: nobody sees the link, nor themselves
    // relayed back.
    let names = |who: &str| r["participants"][who]["names"].clone();
    assert_eq!(names("ann"), json!(["bob", "cid"]), "{r}");
    assert_eq!(names("bob"), json!(["ann", "cid"]), "{r}");
    assert_eq!(names("cid"), json!(["ann", "bob"]), "{r}");
    assert_eq!(r["ann_muted"], json!(["video"]), "{r}");
    assert_eq!(r["left"], json!(["bob", "cid"]), "{r}");
}

/// `POST` `body` to the control plane's `path` with the operator token: (status, JSON).
fn post(cp: &ControlPlane, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let args = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        body.as_str(),
    ];
    let (status, _, out) = cp.get(path, OPS, &args);
    let text = String::from_utf8_lossy(&out).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_meeting_steered_to_two_sites_is_relayed_between_their_sfus_over_one_link() {
    let _one = common::lock(&ONE_MEDIA_TEST_AT_A_TIME);
    let mut cp = ControlPlane::new("cascade-cp");
    cp.extra = format!(
        "[meetings]\nkey_id = \"k1\"\nkey = \"{KEY_HEX}\"\ntoken_ttl = \"1h\"\ngrace = \"10min\"\n"
    );
    let _cp_process = cp.start();
    cp.put_site("paris", &json!({"location": [48.86, 2.35]}));
    cp.put_site("tokyo", &json!({"location": [35.68, 139.69]}));
    let node = |id: &str, site: &str| {
        let extra = joined(&cp, &cred(id)) + "[media]\nconnect_timeout = \"60s\"\n";
        Sfu::start_node(
            &format!("cascade-{id}"),
            id,
            site,
            None,
            "127.0.0.1",
            &extra,
        )
    };
    let a = node("sfu-paris-1", "paris");
    let b = node("sfu-tokyo", "tokyo");
    for id in ["sfu-paris-1", "sfu-tokyo"] {
        cp.wait_node(id, true, Duration::from_secs(30));
    }
    // The meeting is placed at site a; a participant at site b is sent to b's SFU, which the
    // control plane ordered to relay the room from a's.
    let (s, placed) = post(&cp, "/v1/meetings", &json!({"region": "paris"}));
    assert_eq!(s, 201, "{placed}");
    assert_eq!(placed["sfu"]["node"], "sfu-paris-1", "{placed}");
    let room = placed["room"].as_str().expect("room").to_owned();
    let path = format!("/v1/meetings/{room}/participants");
    let (s, at_b) = post(&cp, &path, &json!({"region": "tokyo"}));
    assert_eq!(s, 200, "{at_b}");
    assert_eq!(at_b["sfu"]["node"], "sfu-tokyo", "{at_b}");
    assert_eq!(at_b["cascade"]["upstream_node"], "sfu-paris-1", "{at_b}");
    let (s, at_a) = post(&cp, &path, &json!({"region": "paris"}));
    assert_eq!(
        (s, &at_a["sfu"]["node"]),
        (200, &json!("sfu-paris-1")),
        "{at_a}"
    );
    assert!(at_a.get("cascade").is_none(), "{at_a}");
    let (s, _, body) = b.request(
        "GET",
        &format!("/cascade/{room}"),
        Some(&cascade_token(&room)),
        None,
        "",
    );
    assert_eq!(s, 200, "{body}");
    let order: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(order["upstream"], a.url(), "{order}");
    assert_eq!(
        order["link"], "idle",
        "no link before anyone joins: {order}"
    );

    let url = |answer: &Value| {
        format!(
            "{}?token={}",
            answer["sfu"]["ws"].as_str().expect("ws"),
            answer["token"].as_str().expect("token")
        )
    };
    let r = meeting(&url(&placed), &url(&at_b), &a, &b);
    eprintln!("{r}");
    check_meeting(&r);
    // One link for the room on each side, though two of b's participants watched a's.
    for sfu in [&a, &b] {
        assert_eq!(
            sfu.metric("estuary_sfu_peers_total", &["kind=\"cascade\""]),
            1.0
        );
        assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    }
    // Once b's participants are gone, b closes the link and a forgets them.
    for sfu in [&a, &b] {
        let links = sfu.wait_metric("estuary_sfu_cascade_links", &[], |v| v == 0.0);
        assert_eq!(links, 0.0);
        let relayed = sfu.wait_metric("estuary_sfu_cascade_participants", &[], |v| v == 0.0);
        assert_eq!(relayed, 0.0);
    }
    assert!(b.process.log().contains("A cascade link opened."));
}

/// The meeting page in three headless Chromium tabs (tests/clients/meeting_page.mjs): ann on
/// SFU A, bob and cat on SFU B, which relays the room from A (ordered by hand here, as the
/// control plane orders it). Each tab sees and hears the other two, is told the active
/// speaker, and sees cat leave (by name: ids differ per SFU).
#[test]
fn three_chromium_tabs_meet_across_two_sfus() {
    let _one = common::lock(&ONE_MEDIA_TEST_AT_A_TIME);
    let a = Sfu::start_node("cascade-chromium-a", "sfu-a", "a", None, "127.0.0.1", "");
    let b = Sfu::start_node("cascade-chromium-b", "sfu-b", "b", None, "127.0.0.1", "");
    let room = "m-chromium";
    let order = json!({"upstream": a.url(), "upstream_node": "sfu-a"}).to_string();
    let (s, _, body) = b.request(
        "PUT",
        &format!("/cascade/{room}"),
        Some(&cascade_token(room)),
        Some("application/json"),
        &order,
    );
    assert_eq!(s, 201, "{body}");
    let url = |sfu: &Sfu, name: &str| {
        format!(
            "{}/rooms/{room}?name={name}&token={}",
            sfu.url(),
            room_token(room)
        )
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/meeting_page.mjs"
    );
    let out = common::run(Command::new("node").args([
        script,
        &url(&a, "ann"),
        &url(&b, "bob"),
        &url(&b, "cat"),
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
    assert!(
        out.status.success() && report["ok"] == true,
        "the cascaded meeting failed in Chromium: {stdout}\n{}\nSFU A log:\n{}\nSFU B log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.process.log(),
        b.process.log()
    );
    eprintln!("{report}");
    for sfu in [&a, &b] {
        assert_eq!(
            sfu.metric("estuary_sfu_peers_total", &["kind=\"cascade\""]),
            1.0
        );
        assert_eq!(sfu.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
    }
}

#[test]
fn cascade_orders_and_links_refuse_what_they_should() {
    let b = Sfu::start_node("cascade-refusals", "sfu-b", "b", None, "127.0.0.1", "");
    let room = "m1";
    let path = format!("/cascade/{room}");
    let good = r#"{"upstream":"http://127.0.0.1:9","upstream_node":"sfu-a"}"#;
    let put = |token: Option<&str>, body: &str| {
        let (s, _, text) = b.request("PUT", &path, token, Some("application/json"), body);
        (s, text)
    };
    assert_eq!(put(None, good).0, 401, "no token");
    // A participant's room token cannot order a cascade, nor one for another room.
    assert_eq!(put(Some(&room_token(room)), good).0, 403);
    assert_eq!(put(Some(&cascade_token("other")), good).0, 403);
    let token = cascade_token(room);
    for bad in [
        "not json",
        "{}",
        r#"{"upstream":"ftp://127.0.0.1:9"}"#,
        r#"{"upstream":"http://127.0.0.1:9/path"}"#,
        r#"{"upstream":"http://user:pw@127.0.0.1:9"}"#,
        r#"{"upstream":"http://127.0.0.1:9","upstream_node":"a b"}"#,
        r#"{"upstream":"http://127.0.0.1:9"}"#,
    ] {
        let (s, text) = put(Some(&token), bad);
        assert_eq!(s, 400, "{bad}: {text}");
    }
    let (s, text) = put(Some(&token), &"x".repeat(5000));
    assert_eq!(s, 413, "{text}");
    let (s, _, _) = b.request(
        "GET",
        "/cascade/nothing",
        Some(&cascade_token("nothing")),
        None,
        "",
    );
    assert_eq!(s, 404);
    // The upstream end of a link wants the cascade token too.
    for (token, want) in [(None, 401), (Some(room_token(room)), 403)] {
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let (s, _, _) = b.request("GET", &format!("/cascade/{room}/ws{query}"), None, None, "");
        assert_eq!(s, want, "{query}");
    }
    assert_eq!(put(Some(&token), good).0, 201);
    assert_eq!(
        put(Some(&token), good).0,
        204,
        "a second order replaces the first"
    );
    assert_eq!(b.metric("estuary_sfu_peer_panics_total", &[]), 0.0);
}
