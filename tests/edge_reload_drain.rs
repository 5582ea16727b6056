//! Operations: SIGHUP swaps the certificate under load without a failed request or a dropped
//! connection (a bad certificate is refused and the old one kept); SIGTERM drains: /readyz
//! turns 503, new connections are refused, in-flight downloads finish, the process exits 0.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load() {
    let site = Site::new("reload");
    let edge = site.start();
    let (cert2, key2) = make_cert(site.dir.path(), "cert2");
    // Clients trust both certificates, so a request fails only if the server fails it.
    let both = site.dir.path().join("both.pem");
    let mut pem = std::fs::read(&site.cert).expect("cert");
    pem.extend(std::fs::read(&cert2).expect("cert2"));
    std::fs::write(&both, pem).expect("write");
    let only_new = cert2.clone();

    // A long-lived HTTP/2 connection opened before the reload must keep working after it.
    let long_lived = {
        let roots = estuary_common::tls::read_certs(&site.cert).expect("roots");
        let tls = estuary_common::tls::client_config_trusting(&roots, &[b"h2"]).expect("tls");
        let tcp = tokio::net::TcpStream::connect(site.https)
            .await
            .expect("tcp");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .expect("tls");
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2");
        tokio::spawn(conn);
        send
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, both) = (stop.clone(), ok.clone(), failed.clone(), both.clone());
        let addr = site.https;
        workers.push(tokio::spawn(async move {
            let mut h2 = false;
            while !stop.load(Ordering::SeqCst) {
                h2 = !h2;
                // A new connection (and handshake) for every request.
                match rust_get(addr, &both, h2, "/pub/hello.txt", &[]).await {
                    Ok((r, body)) if r.status() == 200 && &body[..] == b"hello\n" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Replace the files the way an operator (or certbot) does, then SIGHUP.
    std::fs::rename(&cert2, &site.cert).expect("rename cert");
    std::fs::rename(&key2, &site.key).expect("rename key");
    edge.signal("HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the reload"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "too few requests to mean anything"
    );
    assert_eq!(
        edge.metric("estuary_edge_tls_reloads_total", &["result=\"ok\""]),
        1.0
    );

    // New connections now get the new certificate (TCP and QUIC) ...
    let only_new_path = site.dir.path().join("only-new.pem");
    std::fs::copy(&site.cert, &only_new_path).expect("copy");
    let _ = only_new;
    let (r, _) = rust_get(site.https, &only_new_path, true, "/pub/hello.txt", &[])
        .await
        .expect("new cert");
    assert_eq!(r.status(), 200);
    let mut h3 =
        estuary_bench::h3client::H3Client::connect(site.https, "localhost", &only_new_path)
            .await
            .expect("h3 with the new certificate");
    assert_eq!(h3.get("/pub/hello.txt").await.expect("h3").status, 200);
    h3.close().await;
    // ... and the connection from before the reload is still served.
    let mut send = long_lived;
    let req = http::Request::get(format!(
        "https://localhost:{}/pub/hello.txt",
        site.https.port()
    ))
    .body(http_body_util::Empty::<bytes::Bytes>::new())
    .expect("req");
    assert_eq!(
        send.send_request(req)
            .await
            .expect("old connection")
            .status(),
        200
    );

    // A broken certificate is refused; the good one stays in use.
    std::fs::write(
        &site.cert,
        b"-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    edge.signal("HUP");
    let mut failed_reloads = 0.0;
    for _ in 0..100 {
        failed_reloads = edge.metric("estuary_edge_tls_reloads_total", &["result=\"failed\""]);
        if failed_reloads >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed_reloads, 1.0);
    let (r, _) = rust_get(site.https, &only_new_path, false, "/pub/hello.txt", &[])
        .await
        .expect("kept cert");
    assert_eq!(r.status(), 200);
    assert!(edge.log().contains("could not be reloaded"));
}

/// Waits (up to 2 s) until the edge's admin listener answers `/readyz` with 503.
fn wait_for_readyz_503(site: &Site, edge: &EdgeProcess) {
    for _ in 0..200 {
        if let Ok((503, _)) = http_get_raw(site.admin, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("readyz never turned 503: {}", edge.log());
}

/// Waits until a download is in flight: the edge counts its connection open and the client
/// has received part of the body in `out_file` (a fixed sleep may come before either).
fn wait_until_downloading(edge: &EdgeProcess, out_file: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = edge.metric("estuary_edge_open_connections", &["protocol=\"h1\""]);
        let received = std::fs::metadata(out_file).map_or(0, |m| m.len());
        if open >= 1.0 && received > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started ({open} open, {received} bytes): {}",
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An edge (30 s drain) serving a 48 MB store file, large enough that loopback socket buffers
/// (several MB) cannot hold the whole response, to a slow curl (12 MB/s, about 4 s; `extra`
/// curl arguments) that has started receiving it: the site, the edge, curl, its output file
/// and the file's bytes.
fn slow_download_in_flight(
    name: &str,
    extra: &[&str],
) -> (
    Site,
    EdgeProcess,
    std::process::Child,
    std::path::PathBuf,
    Vec<u8>,
) {
    let mut site = Site::new(name);
    site.extra = "[shutdown]\ndrain_timeout = \"30s\"\n".into();
    let want = pattern(48_000_000);
    std::fs::write(site.content.join("pub/huge.mp4"), &want).expect("write");
    let edge = site.start();
    let out_file = site.dir.path().join("download.bin");
    let download = Command::new("curl")
        .args(["-s", "--limit-rate", "12M"])
        .args(extra)
        .arg("-o")
        .arg(&out_file)
        .arg(site.url("/pub/huge.mp4"))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    wait_until_downloading(&edge, &out_file);
    (site, edge, download, out_file, want)
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let (site, mut edge, mut download, out_file, want) = slow_download_in_flight("drain", &[]);
    edge.signal("TERM");
    // readyz turns 503 on the admin listener while the download goes on.
    wait_for_readyz_503(&site, &edge);
    // New connections to the content listeners are refused (once the listener has closed,
    // which follows readyz's turn).
    let mut refused = false;
    for _ in 0..100 {
        if http_get_raw(site.http, "/pub/hello.txt").is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "accepted new connections while draining");
    assert_eq!(edge.metric("estuary_edge_draining", &[]), 1.0);
    // The in-flight download completes, byte for byte.
    let status = download.wait().expect("curl");
    assert!(status.success());
    assert!(
        std::fs::read(&out_file).expect("download") == want,
        "the download is not byte-exact"
    );
    assert!(
        edge.wait_exit(Duration::from_secs(30)),
        "exit status not 0: {}",
        edge.log()
    );
    assert!(edge.log().contains("Drained; exiting."));
}

#[test]
fn sigterm_waits_for_a_store_file_read_slowly_with_connection_close() {
    // A pre-positioned file is one body hyper takes at once and then writes out as the client
    // reads it. The drain must wait until its last byte is written, not until hyper has queued
    // it: the parked HTTP/1.1 path once dropped what was still queued when a `Connection:
    // close` request (as the lab's rolling client sends) was in flight at SIGTERM.
    let (_site, mut edge, mut download, out_file, want) =
        slow_download_in_flight("drain-store", &["-H", "Connection: close"]);
    edge.signal("TERM");
    let status = download.wait().expect("curl");
    assert!(status.success(), "curl: {status}");
    assert!(
        std::fs::read(&out_file).expect("download") == want,
        "the download is not byte-exact ({} bytes): {}",
        std::fs::metadata(&out_file).map_or(0, |m| m.len()),
        edge.log()
    );
    assert!(edge.wait_exit(Duration::from_secs(30)), "{}", edge.log());
    assert!(edge.log().contains("Drained; exiting."));
}

#[test]
fn a_lame_duck_edge_answers_readyz_503_and_still_serves_before_it_stops_accepting() {
    let mut site = Site::new("lame-duck");
    site.extra = "[shutdown]\nlame_duck = \"2s\"\n".into();
    let mut edge = site.start();
    edge.signal("TERM");
    wait_for_readyz_503(&site, &edge);
    // Out of rotation, yet a request on a new connection is still served.
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt")
            .expect("served while lame duck")
            .0,
        200
    );
    // Then it stops accepting and exits.
    assert!(edge.wait_exit(Duration::from_secs(20)), "{}", edge.log());
    assert!(edge.log().contains("lame-duck period"), "{}", edge.log());
}

#[test]
fn the_drain_deadline_cuts_very_slow_clients() {
    let mut site = Site::new("drain-deadline");
    site.extra = "[shutdown]\ndrain_timeout = \"1s\"\n".into();
    let mut edge = site.start();
    std::fs::write(site.content.join("pub/huge.mp4"), pattern(48_000_000)).expect("write");
    // 48 MB at 50 kB/s would take minutes.
    let out_file = site.dir.path().join("download.bin");
    let mut download = Command::new("curl")
        .args(["-s", "--limit-rate", "50K", "-o"])
        .arg(&out_file)
        .arg(site.url("/pub/huge.mp4"))
        .spawn()
        .expect("curl");
    wait_until_downloading(&edge, &out_file);
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(20)));
    assert!(edge.log().contains("drain deadline passed"));
    let _ = download.kill();
    let _ = download.wait();
}
