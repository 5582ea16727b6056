//! The same file over HTTP/1.1 (plain and TLS), HTTP/2 and HTTP/3, with curl, a Rust client
//! and the in-tree HTTP/3 client; Alt-Svc advertises h3 on TLS responses.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_over_every_protocol() {
    let site = Site::new("protocols");
    let edge = site.start();
    let want = pattern(8_000_000);
    let cacert = site.cert.to_string_lossy().into_owned();

    // curl, HTTP/1.1 plain.
    let (body, err, ok) = curl(&[&site.url("/pub/big.mp4")]);
    assert!(ok, "{err}");
    assert_eq!(body, want, "h1 plain body");

    // curl, HTTP/1.1 over TLS (certificate verified) and HTTP/2.
    for flag in ["--http1.1", "--http2"] {
        let (body, err, ok) = curl(&[flag, "--cacert", &cacert, &site.surl("/pub/big.mp4")]);
        assert!(ok, "{flag}: {err}");
        assert_eq!(body, want, "{flag} body");
    }
    let (_, head) = curl_head(&["--http2", "--cacert", &cacert, &site.surl("/pub/hello.txt")]);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains(&format!("alt-svc: h3=\":{}\"; ma=86400", site.https.port())),
        "{head}"
    );
    let (_, head) = curl_head(&[&site.url("/pub/hello.txt")]);
    assert!(
        !head.contains("alt-svc"),
        "plain HTTP must not advertise h3: {head}"
    );

    // The Rust client, HTTP/1.1 and HTTP/2 over TLS.
    for h2 in [false, true] {
        let (resp, body) = rust_get(site.https, &site.cert, h2, "/pub/big.mp4", &[])
            .await
            .expect("rust client");
        assert_eq!(resp.status(), 200);
        let want_version = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(resp.version(), want_version);
        assert_eq!(&body[..], &want[..]);
    }

    // HTTP/3 with the in-tree quinn/h3 client, several requests on one connection.
    let mut h3 = estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
        .await
        .expect("h3 connect");
    let r = h3.get("/pub/big.mp4").await.expect("h3 get");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "video/mp4");
    assert_eq!(&r.body[..], &want[..]);
    assert!(r.headers.get("alt-svc").is_none());
    assert!(r.headers.get("date").is_some(), "h3 responses carry Date");
    assert!(r.headers.get("etag").is_some());
    let r = h3
        .request(
            http::Method::GET,
            "/pub/big.mp4",
            &[("range", "bytes=100-199")],
        )
        .await
        .expect("h3 range");
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &want[100..200]);
    let r = h3.get("/pub/missing").await.expect("h3 404");
    assert_eq!(r.status, 404);
    // Concurrent streams on the same connection.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut send = h3.sender();
        let url = format!("https://localhost:{}/pub/hello.txt", site.https.port());
        tasks.push(tokio::spawn(async move {
            let mut s = send
                .send_request(http::Request::get(url).body(()).expect("req"))
                .await
                .expect("send");
            s.finish().await.expect("finish");
            let resp = s.recv_response().await.expect("resp");
            let mut n = 0;
            while let Some(c) = s.recv_data().await.expect("data") {
                n += bytes::Buf::remaining(&c);
            }
            (resp.status(), n)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), (http::StatusCode::OK, 6));
    }
    h3.close().await;

    // Every protocol was counted.
    for p in ["h1", "h2", "h3"] {
        let n = edge.metric(
            "estuary_edge_requests_total",
            &[&format!("protocol=\"{p}\""), "status_class=\"2xx\""],
        );
        assert!(n >= 1.0, "{p}: {n}");
    }
    let bytes = edge.metric(
        "estuary_edge_response_body_bytes_total",
        &["protocol=\"h3\""],
    );
    assert!(bytes >= 8_000_100.0, "h3 bytes {bytes}");

    // The access log has one JSON line per request, without tokens.
    let h3_range =
        |l: &serde_json::Value| l["protocol"] == "h3" && l["status"] == 206 && l["bytes"] == 100;
    let log = edge.access_log_until(|log| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| h3_range(&l))
    });
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
        .collect();
    assert!(lines.iter().any(h3_range), "{log}");
    assert!(
        lines.iter().all(|l| l["time"].is_string()
            && l["client"] == "127.0.0.1"
            && l["duration"].is_number())
    );
}
