//! Every outbound call speaks TLS with the fleet's CA (the one client, `estuary_common::http`).
//! A control plane behind TLS: its API speaks HTTPS only, and every client of it (an edge's
//! heartbeats, steering's state feed and heartbeats, the operator CLI) reaches it with the
//! fleet's CA from `ca_file` (`ESTUARY_CA_FILE` for the CLI); a node that does not trust the
//! certificate is refused at the handshake and says why. An edge fills from an `https://`
//! parent it trusts through `[upstream] ca_file`, and from no other.

mod common;

use std::time::{Duration, Instant};

use common::cp_site::*;
use common::steering_site::SteeringSite;
use common::*;

#[test]
fn nodes_steering_and_the_cli_reach_a_control_plane_over_https() {
    let mut cp = ControlPlane::new("cp-tls");
    let (cert, key) = make_cert(cp.dir.path(), "cp");
    cp.tls = Some((cert.clone(), key));
    let _cp = cp.start();
    assert!(cp.url().starts_with("https://"));
    // Plain HTTP is not served.
    let plain = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .arg(format!("http://{}/readyz", cp.http))
        .output()
        .expect("curl");
    assert_ne!(plain.stdout, b"200", "plain HTTP was served");

    let trusted = format!(
        "[control_plane]\nurl = \"{}\"\ntoken = \"{LAB}\"\ninterval = \"1s\"\nca_file = \"{}\"\n",
        cp.url(),
        cert.display()
    );
    let mut edge = Site::new("tls-edge");
    edge.node_id = "edge-tls".into();
    edge.extra = trusted;
    let _edge = edge.start();
    // The CLI (with ESTUARY_CA_FILE) sees the edge registered over TLS and up.
    cp.wait_node("edge-tls", true, Duration::from_secs(30));

    // Steering follows the feed over HTTPS: ready means a snapshot came in.
    let mut steering = SteeringSite::new("tls-steering");
    steering.with_control_plane(&cp.url(), &cred("steering-test"));
    steering
        .source
        .push_str(&format!("ca_file = \"{}\"\n", cert.display()));
    let _steering = steering.start();
    cp.wait_node("steering-test", true, Duration::from_secs(30));

    // An edge that does not trust the certificate never registers, and says why.
    let mut stranger = Site::new("tls-stranger");
    stranger.node_id = "edge-stranger".into();
    stranger.extra = format!(
        "[control_plane]\nurl = \"{}\"\ntoken = \"{LAB}\"\ninterval = \"1s\"\n",
        cp.url()
    );
    let stranger_process = stranger.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = stranger_process.log();
        if log.contains("A heartbeat to the control plane failed") {
            assert!(
                log.contains("certificate") || log.contains("UnknownIssuer"),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed heartbeat logged: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !cp.nodes().iter().any(|n| n["id"] == "edge-stranger"),
        "an edge that does not trust the control plane registered"
    );
}

#[test]
fn an_edge_fills_from_an_https_parent_it_trusts_and_from_no_other() {
    let parent = Site::new("tls-parent");
    let _parent = parent.start();
    let origin = format!("https://127.0.0.1:{}", parent.https.port());
    let child_with = |name: &str, ca: Option<&std::path::Path>| {
        let mut child = Site::new(name);
        child.protected.clear();
        child.extra = format!(
            "[cache]\nram = \"16MiB\"\n[upstream]\norigin = [\"{origin}\"]\nconnect_timeout = \"1s\"\nread_timeout = \"3s\"\n{}",
            ca.map(|c| format!("ca_file = \"{}\"\n", c.display()))
                .unwrap_or_default()
        );
        // Nothing pre-positioned: whatever it serves, it filled.
        let _ = std::fs::remove_dir_all(&child.content);
        std::fs::create_dir_all(&child.content).expect("mkdir");
        child
    };
    let trusting = child_with("tls-child", Some(&parent.cert));
    let _trusting = trusting.start();
    let (status, _, body) = fetch(&trusting.url("/pub/hello.txt"), &[]);
    assert_eq!((status, body.as_slice()), (200, &b"hello\n"[..]));

    let stranger = child_with("tls-stranger-child", None);
    let stranger_process = stranger.start();
    let (status, _, _) = fetch(&stranger.url("/pub/hello.txt"), &[]);
    assert_eq!(status, 502, "{}", stranger_process.log());
}
