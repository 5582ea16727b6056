//! `GET /v1/chat/relays` against a real control plane, steering and three real chat relays
//! (Paris, Berlin, Tokyo) that register by heartbeat: with no relay it answers 503; then each
//! client gets its own zone's relay first and the others nearest first, with WebSocket URLs a
//! real chat client uses; a relay taken out of rotation by SIGTERM (still running in its lame
//! duck) or killed drops out once the control plane marks it down, and with none left the
//! answer is 503 again.

mod common;

use common::chat::{ChatRelay, scenario_at};
use common::cp_site::{ControlPlane, cred, joined};
use common::steering_site::SteeringSite;
use common::{EdgeProcess, run};

/// A client address in each site's coverage.
const PARIS: &str = "198.51.100.7";
const BERLIN: &str = "203.0.113.9";
const TOKYO: &str = "192.0.2.44";

/// Waits (with `steering`'s deadline) until `client` is offered exactly `want`, in order.
fn wait_relays(steering: &SteeringSite, process: &mut EdgeProcess, client: &str, want: &[&str]) {
    process.wait_until(|| steering.chat_relays(client).1 == want);
}

/// The 503 with a JSON error, as playback answers with no edge.
fn assert_no_relay(steering: &SteeringSite) {
    let (status, h, body) = common::fetch(
        &steering.url(&format!("/v1/chat/relays?client={PARIS}")),
        &[],
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(common::header(&h, "content-type"), Some("application/json"));
    assert_eq!(common::header(&h, "cache-control"), Some("no-store"));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"error": "no chat relay is available"})
    );
}

#[test]
fn chat_relays_are_ranked_by_zone_and_drop_out_when_down() {
    let cp = ControlPlane::new("chat-steer-cp");
    let _cp_process = cp.start();
    for (name, location, net) in [
        ("paris", [48.85, 2.35], "198.51.100.0/24"),
        ("berlin", [52.52, 13.40], "203.0.113.0/24"),
        ("tokyo", [35.68, 139.69], "192.0.2.0/24"),
    ] {
        cp.put_site(
            name,
            &serde_json::json!({"name": name, "location": location, "coverage": [net]}),
        );
    }
    let mut steering = SteeringSite::new("chat-steer");
    steering.with_control_plane(&cp.url(), &cred("steering-test"));
    let mut steering_process = steering.start();

    // A snapshot, but no relay in it.
    assert_no_relay(&steering);

    // Paris's relay keeps serving for a while after SIGTERM, out of rotation (/readyz 503).
    let start = |id: &str, site: &str, shutdown: &str| {
        ChatRelay::start_node(
            &format!("chat-steer-{site}"),
            id,
            site,
            &format!("{shutdown}{}", joined(&cp, &cred(id))),
        )
    };
    let mut paris = start("relay-paris", "paris", "lame_duck = \"120s\"\n");
    let mut berlin = start("relay-berlin", "berlin", "");
    let mut tokyo = start("relay-tokyo", "tokyo", "");
    let all = ["relay-paris", "relay-berlin", "relay-tokyo"];
    steering_process.wait_until(|| {
        let mut ids = steering.chat_relays(PARIS).1;
        ids.sort();
        let mut want = all.to_vec();
        want.sort_unstable();
        ids == want
    });

    // Each client's own zone first, then the nearest sites (from Tokyo, Berlin is nearer
    // than Paris); each relay's URL is its own WebSocket endpoint.
    let url = |relay: &ChatRelay| format!("ws://{}/ws", relay.addr);
    for (client, want) in [
        (PARIS, ["relay-paris", "relay-berlin", "relay-tokyo"]),
        (BERLIN, ["relay-berlin", "relay-paris", "relay-tokyo"]),
        (TOKYO, ["relay-tokyo", "relay-berlin", "relay-paris"]),
    ] {
        let (status, ids, v) = steering.chat_relays(client);
        assert_eq!(status, 200, "{v}");
        assert_eq!(ids, want, "{client}: {v}");
        assert_eq!(v["client"], client);
        for r in v["relays"].as_array().expect("relays") {
            let (relay, site) = match r["node"].as_str() {
                Some("relay-paris") => (&paris, "paris"),
                Some("relay-berlin") => (&berlin, "berlin"),
                _ => (&tokyo, "tokyo"),
            };
            assert_eq!(r["url"], url(relay), "{v}");
            assert_eq!(r["site"], site, "{v}");
        }
    }
    // The URL handed out is a working chat relay: a real WebSocket client chats through it.
    let (_, _, v) = steering.chat_relays(BERLIN);
    let ws = v["relays"][0]["url"].as_str().expect("url");
    let out = run(&mut scenario_at(
        ws.strip_suffix("/ws").expect("ends in /ws"),
        "online",
        &[],
    ));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM: Paris's relay is still running (lame duck) but no longer ready; once the
    // control plane marks it down, Paris's clients overflow to the nearest site.
    paris.process().signal("TERM");
    wait_relays(
        &steering,
        &mut steering_process,
        PARIS,
        &["relay-berlin", "relay-tokyo"],
    );
    let still_running = paris
        .process
        .as_mut()
        .and_then(|p| p.child.as_mut())
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    assert!(still_running, "{}", paris.process().log());
    drop(paris.process.take());

    // Killed outright: the control plane's polls fail and Berlin's relay drops out too.
    drop(berlin.process.take());
    wait_relays(&steering, &mut steering_process, BERLIN, &["relay-tokyo"]);

    // The last one stops: nothing to offer.
    tokyo.process().signal("TERM");
    assert!(
        tokyo
            .process
            .as_mut()
            .expect("running")
            .wait_exit(std::time::Duration::from_secs(20)),
        "{}",
        tokyo.process().log()
    );
    steering_process.wait_until(|| steering.chat_relays(TOKYO).0 == 503);
    assert_no_relay(&steering);
    assert!(
        steering_process.metric(
            "estuary_steering_requests_total",
            &["route=\"chat_relays\"", "status_class=\"5xx\""]
        ) >= 3.0
    );
    assert!(
        steering_process.metric(
            "estuary_steering_requests_total",
            &["route=\"chat_relays\"", "status_class=\"2xx\""]
        ) >= 4.0
    );
}
