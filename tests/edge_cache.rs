//! The pull-through cache against a real HTTP/1.1 origin on loopback: one upstream fetch for
//! many concurrent clients, read-while-fill, integrity, stale-if-error and 502 on a dead
//! origin, the disk tier across restarts and kill -9, negative caching, purge, and the disk
//! tier's space claimed at start and a damaged one never served.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::origin::{Object, Origin};
use common::*;

/// GET over plain HTTP/1.1 with the Rust client: (status, headers, body).
async fn get(site: &Site, path: &str) -> (u16, http::HeaderMap, bytes::Bytes) {
    plain_get(site, path, &[]).await
}

/// `GET path` over a raw connection, read until the server ends it (cleanly or not): the
/// response head and every body byte received. `progress` sees the body length as it grows.
async fn read_raw(
    addr: std::net::SocketAddr,
    path: &str,
    mut progress: impl FnMut(usize),
) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut body_at = None;
    let mut piece = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = s.read(&mut piece).await {
        buf.extend_from_slice(&piece[..n]);
        if body_at.is_none() {
            body_at = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(at) = body_at {
            progress(buf.len() - at);
        }
    }
    let at = body_at.expect("a response head");
    (
        String::from_utf8_lossy(&buf[..at]).into_owned(),
        buf[at..].to_vec(),
    )
}

/// The operator's token of [`cached_site`].
const OPERATOR: &str = "0123456789abcdef-operator";

/// `DELETE /cache<path>` on the admin listener with curl; the status code.
fn purge(site: &Site, path: &str, token: &str) -> String {
    let (out, _, ok) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-w",
        "\n%{http_code}",
        &format!("http://{}/cache{path}", site.admin),
    ]);
    assert!(ok);
    String::from_utf8_lossy(&out)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_make_one_upstream_fetch() {
    let origin = Origin::start().await;
    let body = pattern(2_000_000);
    // 10 MiB/s: the fill takes about 200 ms, so the requests overlap it.
    origin.put(
        "/v/cold/seg.m4s",
        Object {
            rate: 10 * 1024 * 1024,
            ..Object::new(body.clone())
        },
    );
    let site = cached_site("coalesce", &[origin.url()], "");
    let edge = site.start();
    let site = Arc::new(site);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let site = Arc::clone(&site);
        tasks.push(tokio::spawn(
            async move { get(&site, "/v/cold/seg.m4s").await },
        ));
    }
    for t in tasks {
        let (status, _, got) = t.await.expect("task");
        assert_eq!(status, 200);
        assert!(
            got == body,
            "a body was not byte-exact ({} bytes)",
            got.len()
        );
    }
    assert_eq!(origin.hits("/v/cold/seg.m4s"), 1, "upstream fetches");
    assert!(edge.metric("estuary_edge_fill_coalesced_total", &[]) >= 1.0);
    // Now it is a RAM hit.
    let (status, headers, got) = get(&site, "/v/cold/seg.m4s").await;
    assert_eq!((status, got == body), (200, true));
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(origin.hits("/v/cold/seg.m4s"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_bytes_before_the_fill_completes() {
    let origin = Origin::start().await;
    let body = pattern(3_000_000);
    // 2 MiB/s: about 1.5 s for the whole object.
    origin.put(
        "/v/slow/seg.m4s",
        Object {
            rate: 2 * 1024 * 1024,
            ..Object::new(body.clone())
        },
    );
    let site = cached_site("read-while-fill", &[origin.url()], "");
    let _edge = site.start();
    let leader = {
        let addr = site.http;
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            use tokio::io::AsyncWriteExt;
            s.write_all(b"GET /v/slow/seg.m4s HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut buf = Vec::new();
            use tokio::io::AsyncReadExt;
            s.read_to_end(&mut buf).await.expect("read");
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A follower: note when its first body bytes arrive.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(site.http)
        .await
        .expect("connect");
    s.write_all(b"GET /v/slow/seg.m4s HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let mut first_body_at = None;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_body_at.is_none()
            && let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() > p + 4
        {
            first_body_at = Some(Instant::now());
        }
    }
    leader.await.expect("leader");
    for _ in 0..50 {
        if origin.finished_at("/v/slow/seg.m4s").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first_body_at.expect("the follower got a body");
    let finished = origin
        .finished_at("/v/slow/seg.m4s")
        .expect("origin finished");
    assert!(first < finished, "the follower waited for the whole fill");
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(got[split..] == body[..], "follower body not byte-exact");
    assert_eq!(origin.hits("/v/slow/seg.m4s"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_is_never_served() {
    let bad = Origin::start().await;
    let good = Origin::start().await;
    let body = pattern(10_000);
    bad.put(
        "/v/x/small.m4s",
        Object {
            wrong_digest: true,
            ..Object::new(body.clone())
        },
    );
    good.put("/v/x/small.m4s", Object::new(body.clone()));
    let big = pattern(4_000_000);
    bad.put(
        "/v/x/big.m4s",
        Object {
            wrong_digest: true,
            rate: 20 * 1024 * 1024,
            ..Object::new(big.clone())
        },
    );
    let site = cached_site("digest", &[bad.url(), good.url()], "");
    let edge = site.start();
    // A small object fails its check before anything reached the client: the next origin
    // serves it.
    let (status, _, got) = get(&site, "/v/x/small.m4s").await;
    assert_eq!(status, 200);
    assert!(got == body);
    assert_eq!(
        (bad.hits("/v/x/small.m4s"), good.hits("/v/x/small.m4s")),
        (1, 1)
    );
    // A large one streams, and is cut short instead of completed: the client gets the body's
    // true bytes up to the last one held back, then the connection ends.
    let (head, got) = read_raw(site.http, "/v/x/big.m4s", |_| {}).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 4000000"),
        "{head}"
    );
    assert!(
        got.len() < big.len(),
        "a body with a wrong digest was delivered whole"
    );
    assert!(
        got[..] == big[..got.len()],
        "the bytes before the cut are not the body's"
    );
    assert!(edge.metric("estuary_edge_integrity_failures_total", &[]) >= 2.0);
    // Nothing bad was cached: asking again goes upstream again.
    let before = bad.hits("/v/x/big.m4s");
    let _ = get(&site, "/v/x/big.m4s").await;
    assert!(bad.hits("/v/x/big.m4s") > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_origin_stale_if_error_502_and_the_disk_tier_across_restarts() {
    let mut origin = Origin::start().await;
    let a = pattern(500_000);
    origin.put("/v/t/a.m4s", Object::new(a.clone()));
    origin.put(
        "/v/t/index.m3u8",
        Object {
            // Stale as soon as it is stored: no waiting for it to expire.
            cache_control: "max-age=0",
            ..Object::new(b"#EXTM3U\n".to_vec())
        },
    );
    let site = cached_site("dead-origin", &[origin.url()], "");
    let mut edge = site.start();
    assert_eq!(get(&site, "/v/t/a.m4s").await.0, 200);
    assert_eq!(get(&site, "/v/t/index.m3u8").await.0, 200);
    // Negative caching: a 404 is remembered briefly.
    assert_eq!(get(&site, "/v/t/missing.m4s").await.0, 404);
    assert_eq!(get(&site, "/v/t/missing.m4s").await.0, 404);
    assert_eq!(origin.hits("/v/t/missing.m4s"), 1);

    origin.stop();
    // Cached objects are still served; the expired playlist comes stale with a warning.
    let (status, _, got) = get(&site, "/v/t/a.m4s").await;
    assert_eq!((status, got == a), (200, true));
    let (status, headers, _) = get(&site, "/v/t/index.m3u8").await;
    assert_eq!(status, 200);
    assert!(headers.get("warning").is_some(), "{headers:?}");
    // Uncached objects fail fast with 502.
    let t0 = Instant::now();
    let (status, _, _) = get(&site, "/v/t/never.m4s").await;
    assert_eq!(status, 502);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a dead origin should cost little"
    );

    // Restart the edge with the origin still down: the disk tier answers.
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(30)));
    let _edge = site.start();
    let (status, headers, got) = get(&site, "/v/t/a.m4s").await;
    assert_eq!(status, 200, "{headers:?}");
    assert!(got == a, "disk tier body not byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_fill_leaves_nothing_corrupt() {
    let origin = Origin::start().await;
    let body = pattern(6_000_000);
    origin.put(
        "/v/k/seg.m4s",
        Object {
            rate: 3 * 1024 * 1024,
            ..Object::new(body.clone())
        },
    );
    let site = cached_site("kill9", &[origin.url()], "");
    let mut edge = site.start();
    let addr = site.http;
    // The kill comes once the fill has demonstrably started (the client has part of the
    // body) and before the origin has sent the end (about 2 s at this rate).
    let (started, started_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut started = Some(started);
        read_raw(addr, "/v/k/seg.m4s", |n| {
            if n >= 256 * 1024
                && let Some(tx) = started.take()
            {
                let _ = tx.send(());
            }
        })
        .await
    });
    tokio::time::timeout(Duration::from_secs(20), started_rx)
        .await
        .expect("the fill never reached the client")
        .expect("the reader ended before the fill reached it");
    if let Some(c) = edge.child.as_mut() {
        c.kill().expect("kill -9");
        let _ = c.wait();
    }
    edge.child = None;
    assert!(
        !origin
            .state
            .lock()
            .expect("lock")
            .finished_at
            .contains_key("/v/k/seg.m4s"),
        "the fill had ended before the kill"
    );
    let (_, partial) = reader.await.expect("reader");
    assert!(partial.len() < body.len(), "the client got the whole body");
    let hits_before = origin.hits("/v/k/seg.m4s");
    origin.put("/v/k/seg.m4s", Object::new(body.clone()));
    let _edge = site.start();
    let (status, _, got) = get(&site, "/v/k/seg.m4s").await;
    assert_eq!(status, 200);
    assert!(got == body, "served a corrupt object after kill -9");
    // The cut fill left nothing behind: the object was fetched again.
    assert!(origin.hits("/v/k/seg.m4s") > hits_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tier_damaged_while_the_edge_was_down_is_never_served() {
    let origin = Origin::start().await;
    let bodies: Vec<Vec<u8>> = (0..3u8)
        .map(|k| {
            (0..300_000usize)
                .map(|i| (i * 7 + usize::from(k) * 13) as u8 ^ k)
                .collect()
        })
        .collect();
    let path = |k: usize| format!("/v/d/seg_{k}.m4s");
    for (k, body) in bodies.iter().enumerate() {
        origin.put(&path(k), Object::new(body.clone()));
    }
    let site = cached_site("damaged-disk", &[origin.url()], "");
    let mut edge = site.start();
    for k in 0..bodies.len() {
        assert_eq!(get(&site, &path(k)).await.0, 200);
    }
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(30)));

    // Flip one byte in the middle of each body where it lies in the tier's files (a bad
    // sector, a stray write).
    let mut flipped = 0;
    for entry in std::fs::read_dir(site.dir.path().join("cache")).expect("cache dir") {
        let file = entry.expect("entry").path();
        let mut data = std::fs::read(&file).expect("read");
        // A block that was never written is all zeros from the start.
        if data.iter().take(4096).all(|&b| b == 0) {
            continue;
        }
        let mut changed = false;
        for body in &bodies {
            let needle = &body[150_000..150_064];
            if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
                data[at + 10] ^= 0xff;
                changed = true;
                flipped += 1;
            }
        }
        if changed {
            std::fs::write(&file, &data).expect("write");
        }
    }
    assert_eq!(flipped, bodies.len(), "every body was found on disk");

    // The damaged copies are dropped, not served: each object comes byte-exact from a new
    // fill.
    let _edge = site.start();
    for (k, body) in bodies.iter().enumerate() {
        let (status, _, got) = get(&site, &path(k)).await;
        assert_eq!(status, 200);
        assert!(got == *body, "object {k} served damaged");
        assert_eq!(origin.hits(&path(k)), 2, "object {k} was filled again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_keeps_that_fill_out_of_the_cache() {
    let origin = Origin::start().await;
    let old = pattern(1_000_000);
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    let slow = |body: &Vec<u8>| Object {
        rate: 2 * 1024 * 1024,
        ..Object::new(body.clone())
    };
    let site = cached_site("purge-in-flight", &[origin.url()], "");
    let _edge = site.start();
    for (path, purged) in [
        ("/v/r/exact.m4s", "/v/r/exact.m4s"),
        ("/v/s/under.m4s", "/v/s/*"),
    ] {
        origin.put(path, slow(&old));
        // A viewer starts the fill of the old version (half a second at the origin's pace);
        // meanwhile the operator replaces the object at the origin and purges it.
        let viewer = get(&site, path);
        let operator = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            origin.put(path, slow(&new));
            purge(&site, purged, OPERATOR)
        };
        let ((status, _, body), code) = tokio::join!(viewer, operator);
        assert_eq!(code, "200");
        // The viewer who asked before the purge reads the fill it joined to its end...
        assert_eq!(status, 200);
        assert!(
            body == old,
            "{path}: the first viewer's body is not the old version"
        );
        // ...but that fill is not cached after the purge: the next viewer gets the new one.
        let (status, _, body) = get(&site, path).await;
        assert_eq!(status, 200);
        assert!(
            body == new,
            "{path}: the fill in flight at the purge was cached after it"
        );
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_path_and_prefix() {
    let origin = Origin::start().await;
    let all = ["/v/p/a.m4s", "/v/p/b.m4s", "/v/q/c.m4s", "/v/p/d.m4s"];
    for p in all {
        origin.put(p, Object::new(pattern(1000)));
    }
    let site = cached_site("purge", &[origin.url()], "");
    let mut edge = site.start();
    for p in all {
        assert_eq!(get(&site, p).await.0, 200);
    }
    let purge = |path: &str, token: &str| purge(&site, path, token);
    assert_eq!(purge("/v/p/a.m4s", "wrong-token-wrong-token"), "403");
    assert_eq!(purge("/v/p/a.m4s", OPERATOR), "200");
    assert_eq!(get(&site, "/v/p/a.m4s").await.0, 200);
    assert_eq!(origin.hits("/v/p/a.m4s"), 2);
    assert_eq!(get(&site, "/v/p/b.m4s").await.0, 200);
    assert_eq!(
        origin.hits("/v/p/b.m4s"),
        1,
        "an exact purge touched another object"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(purge("/v/p/*", OPERATOR), "200");
    assert_eq!(get(&site, "/v/p/b.m4s").await.0, 200);
    assert_eq!(origin.hits("/v/p/b.m4s"), 2);
    assert_eq!(get(&site, "/v/q/c.m4s").await.0, 200);
    assert_eq!(
        origin.hits("/v/q/c.m4s"),
        1,
        "a prefix purge reached outside its prefix"
    );
    // A prefix purge survives a restart: the disk tier's copy of an object under it is not
    // served again.
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(30)));
    let _edge = site.start();
    assert_eq!(get(&site, "/v/q/c.m4s").await.0, 200);
    assert_eq!(origin.hits("/v/q/c.m4s"), 1, "the disk tier lost an object");
    assert_eq!(get(&site, "/v/p/d.m4s").await.0, 200);
    assert_eq!(
        origin.hits("/v/p/d.m4s"),
        2,
        "a prefix purge was forgotten across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_fill_each_object_from_the_origin_once() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..12).map(|i| format!("/v/peer/seg_{i:03}.m4s")).collect();
    for p in &paths {
        origin.put(p, Object::new(pattern(50_000)));
    }
    let sites = peer_pair("peer", &[origin.url()]);
    let _a = sites[0].start();
    let _b = sites[1].start();
    let token = sites[0].sign("/v/peer/*", &[]);
    let q = estuary_common::token::query_pair(&token);
    for p in &paths {
        for site in &sites {
            let (status, _, body) = get(site, &format!("{p}?{q}")).await;
            assert_eq!(status, 200, "{p}");
            assert!(body == pattern(50_000));
        }
    }
    origin.assert_fetched_once(&paths, "fetched from the origin more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_into_an_object_being_filled_is_answered_from_arriving_bytes() {
    let origin = Origin::start().await;
    let body = pattern(3_000_000);
    origin.put(
        "/v/r/seg.m4s",
        Object {
            rate: 2 * 1024 * 1024,
            ..Object::new(body.clone())
        },
    );
    let site = cached_site("range-fill", &[origin.url()], "");
    let _edge = site.start();
    let (status, headers, got) = {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(site.http)
            .await
            .expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::get("/v/r/seg.m4s")
            .header("host", "edge")
            .header("range", "bytes=100000-199999")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("req");
        let resp = send.send_request(req).await.expect("head");
        let (parts, b) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            b.collect().await.expect("body").to_bytes(),
        )
    };
    // The range was answered before the origin had sent the whole object.
    assert!(
        origin.finished_at("/v/r/seg.m4s").is_none(),
        "the range waited for the whole fill"
    );
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 100000-199999/3000000");
    assert!(got[..] == body[100_000..200_000]);
    // The fill still completes and is cached; the next range is a hit.
    let deadline = Instant::now() + Duration::from_secs(20);
    while origin.finished_at("/v/r/seg.m4s").is_none() {
        assert!(
            Instant::now() < deadline,
            "the origin never finished sending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The edge publishes once it has checked the last byte: a MISS until then.
    let (status, headers) = loop {
        let (status, headers, _) = get(&site, "/v/r/seg.m4s").await;
        if headers["x-cache"] == "HIT" || Instant::now() > deadline {
            break (status, headers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (status, &headers["x-cache"]),
        (200, &http::HeaderValue::from_static("HIT"))
    );
    assert_eq!(origin.hits("/v/r/seg.m4s"), 1);
}

/// Bytes of the filesystem that the disk tier's files in `dir` hold (allocated blocks, not
/// their sparse lengths).
fn tier_bytes_held(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("foyer-storage-direct-fs-")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| (m.blocks() * 512).min(m.len()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_claims_its_space_and_refuses_what_cannot_fit() {
    let origin = Origin::start().await;
    // 256 MiB of disk tier in blocks of 16 MiB and a head: 15 blocks, all allocated at start,
    // before any object is written, so that a filesystem filled later by others cannot make
    // the tier's writes fail.
    let site = cached_site("disk-claim", &[origin.url()], "");
    let _edge = site.start();
    let held = tier_bytes_held(&site.dir.path().join("cache"));
    assert!(
        held >= 15 * (16 << 20),
        "the disk tier holds {held} bytes of its filesystem"
    );

    // A tier larger than its filesystem: the edge names the key and stops before it makes
    // any file, instead of failing every write once the filesystem is full.
    let cache = "ram = \"64MiB\"\ndisk = \"1EiB\"\nmax_object = \"16MiB\"";
    let site = cached_site_with("disk-too-big", &[origin.url()], cache, "");
    let config = site.write_config();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("edge")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start estuary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("the edge kept running with a 1 EiB disk tier");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cache.disk: 1.0 EiB does not fit in"),
        "{stderr}"
    );
    assert_eq!(tier_bytes_held(&site.dir.path().join("cache")), 0);
    let made = std::fs::read_dir(site.dir.path().join("cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(made, 0, "files were made for a tier that does not fit");
}
