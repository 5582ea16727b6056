//! The steering API against real edges, from a static state file: clients in different
//! coverage zones (`?client=`, `X-Forwarded-For` from a trusted proxy; an untrusted proxy's
//! header is ignored) get their own site's edge first, a site whose edge is down overflows to
//! the nearest other site, the signed URLs handed out play from the real edges, steered
//! manifests carry one pathway per edge, the steering server answers from the same ranking,
//! and bad input gets a 4xx JSON error.

mod common;

use std::process::Command;
use std::time::Duration;

use common::origin_site::*;
use common::steering_site::*;
use common::*;

const MPD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT4.000S" minBufferTime="PT2.000S">
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video" mimeType="video/mp4">
      <Representation id="720p" codecs="avc1.64001f" bandwidth="3000000" width="1280" height="720">
        <SegmentTemplate timescale="1000" initialization="720p/init.mp4" media="720p/seg_00$Number$.m4s" startNumber="0" duration="4000"/>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#;

fn node(id: &str, site: &str, edge: Option<&Site>, up: bool) -> serde_json::Value {
    let (http, https) = match edge {
        Some(e) => (e.url(""), e.surl("")),
        // An edge that is down: nothing listens at its address.
        None => {
            let port = free_port();
            (
                format!("http://127.0.0.1:{port}"),
                format!("https://127.0.0.1:{port}"),
            )
        }
    };
    serde_json::json!({
        "id": id, "site": site, "role": "edge",
        "addresses": {"http": http, "https": https},
        "capacity": {"gbps": 10.0},
        "up": up, "last_heartbeat": 0,
        "load": {}, "usage": {}, "version": "test", "assets": []
    })
}

fn get_json(url: &str, extra: &[&str]) -> (u16, serde_json::Value) {
    let (status, h, body) = fetch(url, extra);
    if status != 302 {
        assert_eq!(
            header(&h, "content-type"),
            Some("application/json"),
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

fn sites_of(v: &serde_json::Value) -> Vec<String> {
    v["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["site"].as_str().expect("site").to_owned())
        .collect()
}

#[test]
fn clients_are_steered_by_zone_with_signed_urls_that_play_from_real_edges() {
    let mut paris = Site::new("steer-paris");
    paris.node_id = "edge-paris".into();
    let mut berlin = Site::new("steer-berlin");
    berlin.node_id = "edge-berlin".into();
    for site in [&paris, &berlin] {
        std::fs::write(site.content.join("v/abc/manifest.mpd"), MPD).expect("mpd");
    }
    let _paris_edge = paris.start();
    let _berlin_edge = berlin.start();
    // An origin that has one asset no edge holds.
    let origin_site = OriginSite::new("steer-origin");
    write_fake_asset(&origin_site.storage_root(), "fromorigin");
    let _origin = origin_site.start();
    let mut paris_node = node("edge-paris", "paris", Some(&paris), true);
    paris_node["assets"] = serde_json::json!(["abc"]);

    let mut steering = SteeringSite::new("steer-api");
    steering.with_state_file(&serde_json::json!({
        "version": 3, "generated_at": 0,
        "sites": {
            "paris": {"name": "paris", "location": [48.85, 2.35], "coverage": []},
            "berlin": {"name": "berlin", "location": [52.52, 13.40], "coverage": []},
            "tokyo": {"name": "tokyo", "location": [35.68, 139.69], "coverage": []},
        },
        "nodes": {
            "edge-paris": paris_node,
            "origin-test": {
                "id": "origin-test", "site": "paris", "role": "origin",
                "addresses": {"http": origin_site.url("")},
                "capacity": {}, "up": true, "last_heartbeat": 0,
                "load": {}, "usage": {}, "version": "test"
            },
            "edge-berlin": node("edge-berlin", "berlin", Some(&berlin), true),
            "edge-tokyo": node("edge-tokyo", "tokyo", None, false),
        }
    }));
    steering.coverage = serde_json::json!({"coverageZones": {
        "paris": {"network": ["198.51.100.0/24"]},
        "berlin": {"network": ["203.0.113.0/24"], "network6": ["2001:db8:b::/48"]},
        "tokyo": {"network": ["192.0.2.0/24"]},
    }})
    .to_string();
    steering.steering = "trusted_proxies = [\"127.0.0.2/32\"]\nttl = \"7s\"\npathways = 3\n".into();
    let mut service = steering.start();
    service.assert_fd_table_sized(1 << 16);

    // A Paris client, named by an operator.
    let (status, v) = get_json(&steering.url("/v1/playback/abc?client=198.51.100.7"), &[]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["client"], "198.51.100.7");
    assert_eq!(sites_of(&v), ["paris", "berlin"], "{v}");
    let first = &v["edges"][0];
    assert_eq!(first["node"], "edge-paris");
    assert_eq!(first["prepositioned"], true);
    assert_eq!(v["edges"][1]["prepositioned"], false);
    let hls = first["hls"].as_str().expect("hls url");
    assert!(
        hls.starts_with(&format!("{}/t/", paris.surl(""))),
        "not a path-form token on the https address: {hls}"
    );
    // The signed URL plays from the real edge, and so does a relative URL under it.
    let (status, _, body) = fetch(hls, &["-k"]);
    assert_eq!(status, 200, "{hls}");
    assert_eq!(body, MASTER.as_bytes());
    let seg = hls.replace("master.m3u8", "720p/seg_000.m4s");
    let (status, _, body) = fetch(&seg, &["-k"]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 700_000);
    let (status, _, _) = fetch(first["dash"].as_str().expect("dash"), &["-k"]);
    assert_eq!(status, 200);
    // The token is what lets it in: the bare path is refused.
    let (status, _, _) = fetch(&paris.surl("/v/abc/master.m3u8"), &["-k"]);
    assert_eq!(status, 403);

    // A Berlin client behind the trusted proxy (127.0.0.2), by X-Forwarded-For.
    let xff = [
        "--interface",
        "127.0.0.2",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
    ];
    let (status, v) = get_json(&steering.url("/v1/playback/abc"), &xff);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["client"], "203.0.113.9");
    assert_eq!(sites_of(&v), ["berlin", "paris"], "{v}");
    // The same header from an untrusted peer (127.0.0.1) is ignored.
    let (status, v) = get_json(
        &steering.url("/v1/playback/abc"),
        &["-H", "X-Forwarded-For: 203.0.113.9"],
    );
    assert_eq!(status, 200);
    assert_eq!(v["client"], "127.0.0.1");
    // IPv6 zones work too.
    let (_, v) = get_json(&steering.url("/v1/playback/abc?client=2001:db8:b::5"), &[]);
    assert_eq!(sites_of(&v)[0], "berlin");

    // Tokyo's only edge is down: its clients overflow to the nearest site that is up
    // (Berlin is nearer to Tokyo than Paris), and the down edge is never offered.
    let (_, v) = get_json(&steering.url("/v1/playback/abc?client=192.0.2.44"), &[]);
    assert_eq!(sites_of(&v), ["berlin", "paris"], "{v}");
    assert!(!v.to_string().contains("edge-tokyo"));

    // The redirect goes to the best edge, signed, and the edge serves it.
    let (status, h, _) = fetch(
        &steering.url("/v1/playback/abc/master.m3u8?client=203.0.113.1"),
        &[],
    );
    assert_eq!(status, 302);
    let location = header(&h, "location").expect("location").to_owned();
    assert!(
        location.starts_with(&format!("{}/t/", berlin.surl(""))),
        "{location}"
    );
    let (status, _, body) = fetch(&location, &["-k"]);
    assert_eq!((status, body), (200, MASTER.as_bytes().to_vec()));
    let (status, h, _) = fetch(
        &steering.url("/v1/playback/abc/manifest.mpd?client=198.51.100.1"),
        &[],
    );
    assert_eq!(status, 302);
    let location = header(&h, "location").expect("location").to_owned();
    assert!(location.starts_with(&paris.surl("/t/")), "{location}");
    assert!(location.ends_with("/v/abc/manifest.mpd"));

    // The steered HLS manifest: every variant once per pathway (edge), absolute and signed.
    let (status, h, body) = fetch(
        &steering.url("/v1/playback/abc/steered.m3u8?client=198.51.100.7"),
        &[],
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        header(&h, "content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    let server = steering.url("/v1/steering/hls/abc?client=198.51.100.7");
    assert!(
        text.contains(&format!(
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{server}\",PATHWAY-ID=\"edge-paris\""
        )),
        "{text}"
    );
    let variants: Vec<&str> = text.lines().filter(|l| l.starts_with("https://")).collect();
    assert_eq!(variants.len(), 2, "{text}");
    assert!(text.contains("PATHWAY-ID=\"edge-berlin\""), "{text}");
    for (uri, edge) in variants.iter().zip([&paris, &berlin]) {
        assert!(uri.starts_with(&edge.surl("/t/")), "{uri}");
        let (status, _, body) = fetch(uri, &["-k"]);
        assert_eq!(status, 200, "{uri}");
        assert_eq!(body, MEDIA.as_bytes());
    }

    // The steered MPD: one BaseURL per service location and the ContentSteering element.
    let (status, h, body) = fetch(
        &steering.url("/v1/playback/abc/steered.mpd?client=203.0.113.1"),
        &[],
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&h, "content-type"), Some("application/dash+xml"));
    assert!(
        text.contains(
            "<ContentSteering defaultServiceLocation=\"edge-berlin\" queryBeforeStart=\"true\">"
        ),
        "{text}"
    );
    let bases: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("<BaseURL serviceLocation=\""))
        .collect();
    assert_eq!(bases.len(), 2, "{text}");
    assert!(bases[0].starts_with(&format!("edge-berlin\">{}/t/", berlin.surl(""))));
    let base = bases[1]
        .split_once("\">")
        .and_then(|(_, rest)| rest.strip_suffix("</BaseURL>"))
        .expect("base url");
    let (status, _, _) = fetch(&format!("{base}720p/init.mp4"), &["-k"]);
    assert_eq!(status, 200, "{base}");

    // The steering server: the same ranking, a player's pathway and throughput accepted.
    let (status, v) = get_json(
        &steering.url(
            "/v1/steering/hls/abc?client=198.51.100.7&_HLS_pathway=edge-berlin&_HLS_throughput=5000000",
        ),
        &[],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["VERSION"], 1);
    assert_eq!(v["TTL"], 7);
    assert_eq!(
        v["PATHWAY-PRIORITY"],
        serde_json::json!(["edge-paris", "edge-berlin"])
    );
    assert_eq!(v["RELOAD-URI"], server.as_str());
    let (status, v) = get_json(
        &steering.url("/v1/steering/dash/abc?client=192.0.2.1&_DASH_pathway=%22edge-paris%22"),
        &[],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["SERVICE-LOCATION-PRIORITY"],
        serde_json::json!(["edge-berlin", "edge-paris"])
    );
    assert!(
        v["RELOAD-URI"]
            .as_str()
            .is_some_and(|u| u.ends_with("/v1/steering/dash/abc?client=192.0.2.1")),
        "{v}"
    );

    // Assets: one no edge holds but the origin has is answered; one nobody has is a 404.
    let (status, v) = get_json(
        &steering.url("/v1/playback/fromorigin?client=198.51.100.7"),
        &[],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(sites_of(&v), ["paris", "berlin"]);
    let (status, v) = get_json(&steering.url("/v1/playback/nosuchasset"), &[]);
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("unknown asset")),
        "{v}"
    );
    let (status, _, _) = fetch(&steering.url("/v1/playback/nosuchasset/master.m3u8"), &[]);
    assert_eq!(status, 404);

    // Bad input: clear 4xx answers in JSON.
    for (url, want) in [
        ("/v1/playback/bad.id", 400),
        ("/v1/playback/-abc", 400),
        ("/v1/playback/abc?client=not-an-address", 400),
        ("/v1/playback/abc/other.txt", 404),
        ("/v1/playback/nosuchasset/steered.m3u8", 404),
        ("/v1/steering/flash/abc", 404),
        ("/v1/nothing", 404),
    ] {
        let (status, v) = get_json(&steering.url(url), &[]);
        assert_eq!(status, want, "{url}: {v}");
        assert!(v["error"].is_string(), "{url}: {v}");
    }
    let long = "a".repeat(65);
    let (status, _) = get_json(&steering.url(&format!("/v1/playback/{long}")), &[]);
    assert_eq!(status, 400);

    // Operations: readiness, health, metrics.
    assert_eq!(
        http_get_raw(steering.http, "/readyz").expect("readyz").0,
        200
    );
    assert_eq!(
        http_get_raw(steering.http, "/healthz").expect("healthz").0,
        200
    );
    assert!(
        service.metric(
            "estuary_steering_requests_total",
            &["route=\"playback\"", "status_class=\"2xx\""]
        ) >= 5.0
    );
    assert!(
        service.metric(
            "estuary_steering_requests_total",
            &["route=\"playback\"", "status_class=\"4xx\""]
        ) >= 4.0
    );
    assert_eq!(
        service.metric("estuary_steering_edges", &["up=\"false\""]),
        1.0
    );
    assert_eq!(
        service.metric("estuary_steering_choices_total", &["outcome=\"overflow\""]),
        // The Tokyo clients: one playback answer, one steering answer.
        2.0
    );
    for (result, at_least) in [
        ("held", 10.0),
        ("found", 1.0),
        ("missing", 1.0),
        ("cached", 1.0),
    ] {
        let n = service.metric(
            "estuary_steering_asset_lookups_total",
            &[&format!("result=\"{result}\"")],
        );
        assert!(n >= at_least, "asset lookups {result}: {n}");
    }
    let (_, text) = http_get_raw(steering.http, "/metrics").expect("metrics");
    assert!(text.contains("estuary_steering_state_version 3"), "{text}");

    // check-config knows the file and names a bad key.
    let config = steering.write_config();
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("check-config")
        .arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a valid steering config"));
    let text = std::fs::read_to_string(&config).expect("read");
    let bad = steering.dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("pathways = 3", "pathway = 3")).expect("write");
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("check-config")
        .arg(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("steering config") && err.contains("steering.pathway"),
        "{err}"
    );

    // A broken coverage zone file fails the check too, naming the key and the zone.
    let zones = steering.dir.path().join("coverage.json");
    std::fs::write(
        &zones,
        r#"{"coverageZones": {"paris": {"network": ["300.1.2.0/24"]}}}"#,
    )
    .expect("write");
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("check-config")
        .arg(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("geo.coverage_zones") && err.contains("zone paris"),
        "{err}"
    );

    // SIGTERM: a clean exit.
    service.signal("TERM");
    assert!(
        service.wait_exit(Duration::from_secs(10)),
        "{}",
        service.log()
    );
}

#[test]
fn without_a_snapshot_steering_is_alive_but_not_ready() {
    let mut steering = SteeringSite::new("steer-unready");
    // Nothing listens at the control plane's address.
    steering.with_control_plane(
        &format!("http://127.0.0.1:{}", free_port()),
        "lab-node-token-0123456789",
    );
    let config = steering.write_config();
    let log = std::fs::File::create(steering.dir.path().join("steering.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("steering")
        .arg("--config")
        .arg(&config)
        .stderr(log)
        .spawn()
        .expect("start estuary");
    let mut service = EdgeProcess {
        child: Some(child),
        admin: steering.http,
        log_dir: steering.dir.path().to_owned(),
        log_file: steering.dir.path().join("steering.log"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_get_raw(steering.http, "/healthz")
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "{}", service.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give the state follower time to fail a few times: still not ready, still alive.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        http_get_raw(steering.http, "/readyz").expect("readyz").0,
        503
    );
    let (status, v) = get_json(&steering.url("/v1/playback/abc"), &[]);
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("snapshot")),
        "{v}"
    );
    assert!(
        service.metric(
            "estuary_steering_state_fetches_total",
            &["result=\"error\""]
        ) >= 1.0
    );
    assert!(
        service.log().contains("could not be read"),
        "{}",
        service.log()
    );
    service.signal("TERM");
    assert!(
        service.wait_exit(Duration::from_secs(10)),
        "{}",
        service.log()
    );
}
