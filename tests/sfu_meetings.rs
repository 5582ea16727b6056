//! `POST /v1/meetings` end to end: a real control plane and three real `estuary sfu`
//! processes in two sites (Paris and Tokyo), registered by their own heartbeats with their
//! node credentials. Meetings go to the least-loaded SFU of the site nearest the first
//! participant (by region or by client address), the room token handed out works for WHIP
//! and WHEP on the chosen SFU (aiortc publishes and watches, frames decoded), a room keeps
//! its SFU, and moves when that SFU is killed. Later participants from another site are sent
//! to a cascade SFU there only once it takes the order to relay the room.
mod common;

use std::time::{Duration, Instant};

use common::KEY_HEX;
use common::cp_site::{ControlPlane, OPS, cred, joined, meetings_config, paris_and_tokyo};
use common::sfu::{Sfu, synthetic_offer};
use serde_json::{Value, json};

/// `METHOD /v1/meetings[/<room>]` with `token` (none: no header) and a body: (status, JSON
/// or text).
fn call(cp: &ControlPlane, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let mut args: Vec<&str> = Vec::new();
    if let Some(b) = body {
        args.extend_from_slice(&["-X", "POST", "-H", "Content-Type: application/json"]);
        args.extend_from_slice(&["--data", b]);
    }
    let (status, _, out) = match token {
        Some(t) => cp.get(path, t, &args),
        None => common::fetch(&format!("{}{path}", cp.url()), &args),
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn create(cp: &ControlPlane, body: &Value) -> (u16, Value) {
    call(cp, "/v1/meetings", Some(OPS), Some(&body.to_string()))
}

fn sfu_node(cp: &ControlPlane, id: &str, site: &str) -> Sfu {
    Sfu::start_node(
        &format!("meetings-{id}"),
        id,
        site,
        None,
        "127.0.0.1",
        &(joined(cp, &cred(id)) + "[media]\nconnect_timeout = \"120s\"\n"),
    )
}

/// Waits until `ok` holds for node `id` as the control plane lists it.
fn wait_for(cp: &ControlPlane, id: &str, what: &str, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = cp
            .nodes()
            .into_iter()
            .find(|n| n["id"] == id)
            .unwrap_or_default();
        if ok(&node) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never {what}: {node}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn meetings_go_to_the_least_loaded_sfu_nearest_the_first_participant_and_stay_there() {
    let mut cp = ControlPlane::new("meetings-cp");
    cp.extra = meetings_config();
    let _cp_process = cp.start();
    paris_and_tokyo(&cp);

    // The API's refusals: no operator token, bad bodies, and no SFU up yet.
    let (s, _) = call(&cp, "/v1/meetings", None, Some(r#"{"region":"paris"}"#));
    assert_eq!(s, 401);
    for bad in [
        "not json",
        "{}",
        r#"{"region":"paris","client":"192.0.2.1"}"#,
        r#"{"client":"not-an-ip"}"#,
        r#"{"region":"mars"}"#,
        r#"{"region":"paris","colour":"blue"}"#,
    ] {
        let (s, answer) = call(&cp, "/v1/meetings", Some(OPS), Some(bad));
        assert_eq!(s, 400, "{bad}: {answer}");
    }
    let (s, answer) = create(&cp, &json!({"region": "paris"}));
    assert_eq!(s, 503, "no SFU is up yet: {answer}");

    let paris_1 = sfu_node(&cp, "sfu-paris-1", "paris");
    let paris_2 = sfu_node(&cp, "sfu-paris-2", "paris");
    let tokyo = sfu_node(&cp, "sfu-tokyo", "tokyo");
    for id in ["sfu-paris-1", "sfu-paris-2", "sfu-tokyo"] {
        cp.wait_node(id, true, Duration::from_secs(30));
    }
    // sfu-paris-1 carries three sessions, a load of 3/4 (it would win the tie by node id
    // otherwise); the control plane learns it from its heartbeats. The others have settled
    // after their start (CPU counts too).
    for room in ["busy-1", "busy-2", "busy-3"] {
        let (s, _, body) = paris_1.offer("whep", room, &synthetic_offer("recvonly"));
        assert_eq!(s, 201, "{body}");
    }
    wait_for(&cp, "sfu-paris-1", "reported 3 peers", |n| {
        n["load"]["peers"] == 3
    });
    for id in ["sfu-paris-2", "sfu-tokyo"] {
        wait_for(&cp, id, "settled", |n| {
            n["load"]["cpu"].as_f64().is_some_and(|c| c < 0.5)
        });
    }

    // By region and by client address: the least-loaded SFU of the nearest site.
    let (s, by_region) = create(&cp, &json!({"region": "paris"}));
    assert_eq!(s, 201, "{by_region}");
    assert_eq!(
        by_region["sfu"]["node"],
        "sfu-paris-2",
        "{by_region}\n{:?}",
        cp.nodes()
    );
    let (s, by_client) = create(&cp, &json!({"client": "198.51.100.7"}));
    assert_eq!(s, 201, "{by_client}");
    assert_eq!(by_client["sfu"]["node"], "sfu-tokyo", "{by_client}");
    let (s, paris_client) = create(&cp, &json!({"client": "192.0.2.9"}));
    assert_eq!(s, 201, "{paris_client}");
    assert_eq!(paris_client["sfu"]["node"], "sfu-paris-2", "{paris_client}");
    assert_ne!(
        paris_client["room"], by_region["room"],
        "each meeting its own room"
    );
    assert_eq!(
        by_client["sfu"]["whip"],
        format!(
            "{}/whip/{}",
            tokyo.url(),
            by_client["room"].as_str().unwrap_or("")
        ),
    );

    // The token really opens the room on the chosen SFU: aiortc publishes over WHIP and
    // watches over WHEP with it, and decodes frames.
    let room = by_region["room"].as_str().expect("room").to_owned();
    let token = by_region["token"].as_str().expect("token").to_owned();
    assert_eq!(
        by_region["sfu"]["whep"],
        format!("{}/whep/{room}", paris_2.url())
    );
    assert_eq!(
        by_region["sfu"]["ws"],
        format!("ws://{}/rooms/{room}/ws", paris_2.http)
    );
    let out = paris_2.client_with("pair", &room, &token, &["--seconds", "3"]);
    let watchers = out["watchers"].as_array().expect("watchers");
    assert!(
        watchers
            .iter()
            .all(|w| w["video_frames"].as_u64().unwrap_or(0) >= 20),
        "{out}"
    );
    // The token is for that room only.
    let (s, _, _) = paris_2.request(
        "POST",
        "/whip/another-room",
        Some(&token),
        Some("application/sdp"),
        &synthetic_offer("sendonly"),
    );
    assert_eq!(s, 403);

    // Late joiners: the same room keeps its SFU (though sfu-paris-2 is now the busier
    // Paris SFU), with a fresh token.
    let path = format!("/v1/meetings/{room}");
    let (s, again) = call(&cp, &path, Some(OPS), None);
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["sfu"]["node"], "sfu-paris-2", "{again}");
    assert_eq!(again["room"], room.as_str());
    let (s, _) = call(&cp, "/v1/meetings/m-nonesuch", Some(OPS), None);
    assert_eq!(s, 404);
    let (s, _) = call(&cp, &path, None, None);
    assert_eq!(s, 401);

    // The meeting's SFU dies: the next request for the room moves it to the other Paris SFU,
    // whose token works there.
    paris_2.process.signal("KILL");
    wait_for(&cp, "sfu-paris-2", "went down", |n| n["up"] == false);
    let (s, moved) = call(&cp, &path, Some(OPS), None);
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["sfu"]["node"], "sfu-paris-1", "{moved}");
    assert_eq!(moved["room"], room.as_str());
    let (s, _, body) = paris_1.request(
        "POST",
        &format!("/whip/{room}"),
        moved["token"].as_str(),
        Some("application/sdp"),
        &synthetic_offer("sendonly"),
    );
    assert_eq!(s, 201, "{body}");

    // Every SFU gone: new meetings get 503.
    paris_1.process.signal("KILL");
    tokyo.process.signal("KILL");
    wait_for(&cp, "sfu-paris-1", "went down", |n| n["up"] == false);
    wait_for(&cp, "sfu-tokyo", "went down", |n| n["up"] == false);
    let (s, answer) = create(&cp, &json!({"region": "tokyo"}));
    assert_eq!(s, 503, "{answer}");
}

/// Past its grace a meeting lasts while its SFU lists the room in its heartbeats, and ends
/// once the room closes (the next `GET` answers 404).
#[test]
fn a_meeting_lasts_while_its_sfu_lists_the_room_and_ends_with_it() {
    let mut cp = ControlPlane::new("meetings-grace-cp");
    cp.extra = meetings_config().replace("grace = \"10min\"", "grace = \"10s\"");
    let _cp_process = cp.start();
    cp.put_site("paris", &json!({"location": [48.86, 2.35]}));
    let sfu = sfu_node(&cp, "sfu-paris-1", "paris");
    cp.wait_node("sfu-paris-1", true, Duration::from_secs(30));
    let (s, meeting) = create(&cp, &json!({"region": "paris"}));
    assert_eq!(s, 201, "{meeting}");
    let room = meeting["room"].as_str().expect("room").to_owned();
    let token = meeting["token"].as_str().expect("token").to_owned();
    // A publisher joins with the meeting's token (its session stays open, not connected).
    let (s, head, body) = sfu.request(
        "POST",
        &format!("/whip/{room}"),
        Some(&token),
        Some("application/sdp"),
        &synthetic_offer("sendonly"),
    );
    assert_eq!(s, 201, "{body}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("location")
        .trim()
        .to_owned();
    // Well past the 10 s grace the meeting is still there: the SFU lists its room.
    std::thread::sleep(Duration::from_secs(12));
    let path = format!("/v1/meetings/{room}");
    let (s, again) = call(&cp, &path, Some(OPS), None);
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["sfu"]["node"], "sfu-paris-1");
    // The publisher leaves, the room closes, the next beats no longer list it: it ended.
    let (s, _, _) = sfu.request("DELETE", &location, Some(&token), None, "");
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, answer) = call(&cp, &path, Some(OPS), None);
        if s == 404 {
            break;
        }
        assert_eq!(s, 200, "{answer}");
        assert!(
            Instant::now() < deadline,
            "the meeting never ended: {answer}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `POST /v1/meetings/<room>/participants`: a later participant at the meeting's own site (or
/// at no known site) joins the meeting's SFU, with no `cascade`; one at another site with an
/// SFU up is sent there only once that SFU takes the order to relay the room. Here the order
/// is refused for real: the control plane signs with a key (`k2`) no SFU holds, so a real SFU
/// turns `PUT /cascade/<room>` down whether or not it serves that route (404 without it,
/// 401/403 with it), and the participant joins the meeting's SFU, counted `cascade_failed`.
#[test]
fn later_participants_join_the_meetings_sfu_unless_a_cascade_sfu_at_home_takes_the_room() {
    // Without `[meetings]` the route is not there.
    let plain = ControlPlane::new("meetings-participants-off-cp");
    let _plain_process = plain.start();
    let body = r#"{"region":"paris"}"#;
    let (s, answer) = call(
        &plain,
        "/v1/meetings/m-1/participants",
        Some(OPS),
        Some(body),
    );
    assert_eq!(s, 404, "{answer}");

    let mut cp = ControlPlane::new("meetings-participants-cp");
    let other_key = "f0e0d0c0b0a090807060504030201000f0e0d0c0b0a090807060504030201000";
    cp.extra = meetings_config()
        .replace("key_id = \"k1\"", "key_id = \"k2\"")
        .replace(KEY_HEX, other_key);
    let cp_process = cp.start();
    paris_and_tokyo(&cp);
    let _paris = sfu_node(&cp, "sfu-paris-1", "paris");
    let _tokyo = sfu_node(&cp, "sfu-tokyo", "tokyo");
    // Both up, and settled after their start (a CPU share above the threshold would send
    // the meeting to Tokyo).
    for id in ["sfu-paris-1", "sfu-tokyo"] {
        cp.wait_node(id, true, Duration::from_secs(30));
        wait_for(&cp, id, "settled", |n| {
            n["load"]["cpu"].as_f64().is_some_and(|c| c < 0.5)
        });
    }
    let (s, meeting) = create(&cp, &json!({"region": "paris"}));
    assert_eq!(s, 201, "{meeting}");
    assert_eq!(meeting["sfu"]["node"], "sfu-paris-1", "{meeting}");
    let room = meeting["room"].as_str().expect("room").to_owned();
    let path = format!("/v1/meetings/{room}/participants");
    let join = |body: &Value| call(&cp, &path, Some(OPS), Some(&body.to_string()));
    let results = |result: &str| {
        cp_process.metric(
            "estuary_cp_meeting_requests_total",
            &[&format!("result=\"{result}\"")],
        )
    };

    // The refusals: no operator token, a bad room name, bad bodies (as for a new meeting), an
    // unknown region, an unknown meeting.
    let (s, _) = call(&cp, &path, None, Some(body));
    assert_eq!(s, 401);
    let (s, _) = call(&cp, &path, Some("not-a-token-0123456789"), Some(body));
    assert_eq!(s, 403);
    let (s, answer) = call(
        &cp,
        "/v1/meetings/bad!room/participants",
        Some(OPS),
        Some(body),
    );
    assert_eq!(s, 400, "{answer}");
    for bad in [
        "not json",
        "{}",
        r#"{"region":"paris","client":"192.0.2.1"}"#,
        r#"{"client":"not-an-ip"}"#,
        r#"{"region":"mars"}"#,
        r#"{"region":"paris","colour":"blue"}"#,
    ] {
        let (s, answer) = call(&cp, &path, Some(OPS), Some(bad));
        assert_eq!(s, 400, "{bad}: {answer}");
    }
    let (s, answer) = call(
        &cp,
        "/v1/meetings/m-nonesuch/participants",
        Some(OPS),
        Some(body),
    );
    assert_eq!(s, 404, "{answer}");

    // The meeting's own site, by region or address, or no known site: its SFU, no cascade.
    let kept_before = results("kept");
    for near in [
        json!({"region": "paris"}),
        json!({"client": "192.0.2.9"}),
        json!({"client": "10.9.8.7"}),
    ] {
        let (s, answer) = join(&near);
        assert_eq!(s, 200, "{near}: {answer}");
        assert_eq!(answer["room"], room.as_str(), "{answer}");
        assert_eq!(answer["sfu"]["node"], "sfu-paris-1", "{near}: {answer}");
        assert_eq!(answer["sfu"]["whip"], meeting["sfu"]["whip"], "{answer}");
        assert!(answer["token"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(answer.get("cascade").is_none(), "{near}: {answer}");
    }
    assert_eq!(results("kept"), kept_before + 3.0);

    // Tokyo, by region or address: sfu-tokyo is up, but refuses the order, so the participant
    // joins the meeting's SFU uncascaded, and the control plane says why.
    for (i, near) in [
        json!({"region": "tokyo"}),
        json!({"client": "198.51.100.7"}),
    ]
    .iter()
    .enumerate()
    {
        let (s, answer) = join(near);
        assert_eq!(s, 200, "{near}: {answer}");
        assert_eq!(answer["sfu"]["node"], "sfu-paris-1", "{near}: {answer}");
        assert!(answer.get("cascade").is_none(), "{near}: {answer}");
        assert_eq!(results("cascade_failed"), (i + 1) as f64);
    }
    assert_eq!(results("cascaded"), 0.0);
    assert_eq!(results("kept"), kept_before + 3.0);
    let log = cp_process.log();
    let warned = log
        .lines()
        .find(|l| l.contains("did not take the order"))
        .unwrap_or_else(|| panic!("no warning in the log:\n{log}"));
    assert!(
        warned.contains("WARN") && warned.contains(&room) && warned.contains("sfu-tokyo"),
        "{warned}"
    );
    // The meeting is still there, on its SFU.
    let (s, again) = call(&cp, &format!("/v1/meetings/{room}"), Some(OPS), None);
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["sfu"]["node"], "sfu-paris-1", "{again}");
}
