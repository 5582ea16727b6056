//! HTTP/3 abuse: a Rapid Reset flood (streams opened and cancelled at once, CVE-2023-44487's
//! HTTP/3 counterpart) closes its own connection with H3_EXCESSIVE_LOAD and is counted, while
//! another connection is still served.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `tests/clients/h3_abuse.py` and returns its one line of output.
fn abuse(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/h3_abuse.py");
    let out = run(Command::new("python3").arg(script).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !stdout.is_empty(),
        "h3_abuse.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One HTTP/3 GET on a new connection.
async fn h3_status(site: &Site, path: &str) -> u16 {
    let attempt = async {
        let mut h3 =
            estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert).await?;
        let r = h3.get(path).await?;
        anyhow::Ok(r.status.as_u16())
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("HTTP/3 request failed: {e:#}"),
        Err(_) => panic!("HTTP/3 request not answered within 15 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_closes_its_connection_only() {
    let site = Site::new("h3-rapid-reset");
    let edge = site.start();
    let port = site.https.port().to_string();
    // 2,000 cancelled streams on one connection: far past the default limit (20 within 10 s),
    // and a connection that survives them all is reported as "open".
    let verdict = tokio::task::spawn_blocking(move || {
        abuse(&["reset", "127.0.0.1", &port, "2000", "/pub/hello.txt", "5"])
    })
    .await
    .expect("join");
    // H3_EXCESSIVE_LOAD.
    assert_eq!(verdict, format!("closed {}", 0x107), "{}", edge.log());
    assert!(edge.metric("estuary_edge_h3_reset_flood_closes_total", &[]) >= 1.0);
    // Another connection is served.
    assert_eq!(h3_status(&site, "/pub/hello.txt").await, 200);
}
