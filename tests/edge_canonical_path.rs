//! One canonical path on the edge's request path: decoded once, normalized, and used for the
//! token check, the cache key, the purge key and the upstream request, which is re-encoded from
//! it. Paths that cannot be forwarded are a 400 and never open an upstream's breaker; paths a
//! second decoding would read differently (`%25`, `%3F`, `%23`) are refused. Also: a client's
//! `X-Estuary-Fill` header does not steer the fill, a streamed miss logs and counts its bytes,
//! and a token valid for longer than `[auth] max_ttl` is refused.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::origin::{Object, Origin};
use common::*;
use http_body_util::BodyExt as _;

/// The operator's token of [`cached_site`].
const OPERATOR: &str = "0123456789abcdef-operator";

/// A raw HTTP/1.1 GET (no client-side normalization): (status, body).
fn raw_get(site: &Site, target: &str, headers: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = raw_request(
        site.http,
        &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{target}: {e}"));
    (status, body)
}

/// `DELETE /cache<path>` on the admin listener: the status code.
fn purge(site: &Site, path: &str) -> u16 {
    let (status, _, _) = raw_request(
        site.admin,
        &format!(
            "DELETE /cache{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OPERATOR}\r\nConnection: close\r\n\r\n"
        ),
    )
    .expect("purge");
    status
}

/// Finding 3: paths whose decoded form is not a valid URI (a space, a backquote, `<`) used to
/// fail to build the upstream request, and each failure counted against the origin's breaker:
/// three anonymous requests made every miss a 502 for the cool-down. Now they go upstream
/// re-encoded, and a normal miss still fills, over HTTP/1.1 and HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_bytes_in_a_path_never_open_the_breaker() {
    let origin = Origin::start().await;
    for p in ["/pub/ok-1.m4s", "/pub/ok-2.m4s"] {
        origin.put(p, Object::new(pattern(1000)));
    }
    // A long cool-down: an open breaker would stay open for the whole test.
    let mut site = cached_site("canon-breaker", &[origin.url()], "");
    site.extra = site.extra.replace(
        "[upstream]\n",
        "[upstream]\nbreaker_threshold = 3\nbreaker_cool_down = \"10m\"\n",
    );
    let _edge = site.start();
    for target in ["/x%20", "/x%60", "/x%3C", "/x%20y", "/x%7B%7D"] {
        let (status, _) = raw_get(&site, target, "");
        // Not there upstream: a 404, never a 502 from a request that could not be built.
        assert_eq!(status, 404, "{target}");
    }
    let (status, body) = raw_get(&site, "/pub/ok-1.m4s", "");
    assert_eq!(status, 200, "a normal miss after hostile paths");
    assert!(body == pattern(1000));

    let mut h3 = estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
        .await
        .expect("h3");
    for target in ["/y%20", "/y%60", "/y%3C", "/y%20z"] {
        let r = h3.get(target).await.expect("h3 get");
        assert_eq!(r.status, 404, "{target} over h3");
    }
    let r = h3.get("/pub/ok-2.m4s").await.expect("h3 get");
    assert_eq!(r.status, 200, "a normal miss over h3 after hostile paths");
    h3.close().await;

    // The upstream saw each path re-encoded from the canonical one.
    let seen = origin.requested_paths();
    for want in [
        "/x%20", "/x%60", "/x%3C", "/x%20y", "/x%7B%7D", "/y%20", "/y%60", "/y%3C",
    ] {
        assert!(seen.iter().any(|p| p == want), "{want} not in {seen:?}");
    }
}

/// An upstream that decodes request paths and resolves dot segments, as a static file server
/// does; it records every raw request target it receives.
struct DecodingOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl DecodingOrigin {
    async fn start(files: &[(&str, &'static [u8])]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files: Arc<Vec<(String, &'static [u8])>> =
            Arc::new(files.iter().map(|(p, b)| ((*p).to_owned(), *b)).collect());
        let s = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, files) = (Arc::clone(&s), Arc::clone(&files));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (s, files) = (Arc::clone(&s), Arc::clone(&files));
                        async move {
                            let raw = req.uri().path().to_owned();
                            s.lock().expect("lock").push(raw.clone());
                            let resolved = resolve(&raw);
                            let body = files.iter().find(|(p, _)| *p == resolved).map(|f| f.1);
                            let mut r = hyper::Response::new(
                                http_body_util::Full::new(Bytes::from_static(
                                    body.unwrap_or(b"no\n"),
                                ))
                                .boxed(),
                            );
                            if body.is_none() {
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            }
                            r.headers_mut().insert(
                                "cache-control",
                                http::HeaderValue::from_static("max-age=3600"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Decodes a path once and resolves `.` and `..` segments (RFC 3986 §5.2.4).
fn resolve(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

const PREMIUM: &[u8] = b"PREMIUM-MOVIE-BYTES";

/// Finding 4: `/pub/%252e%252e/v/premium/movie.m4s` was decoded once to
/// `/pub/%2e%2e/v/premium/movie.m4s`, passed the token check as unprotected `/pub/`, went
/// upstream as such, and an upstream that decodes again served `/v/premium/movie.m4s` without
/// a token (and the edge cached it under the unprotected key). Now it is a 400 that never
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_encoding_cannot_bypass_the_token_check() {
    let origin = DecodingOrigin::start(&[("/v/premium/movie.m4s", PREMIUM)]).await;
    // The test can tell: the origin itself serves the premium file to a double-decoded path.
    assert_eq!(
        resolve("/pub/%2e%2e/v/premium/movie.m4s"),
        "/v/premium/movie.m4s"
    );
    let mut site = cached_site("canon-double", &[origin.url()], "");
    site.protected = vec!["/v/".into()];
    let _edge = site.start();

    for target in [
        "/pub/%252e%252e/v/premium/movie.m4s",
        "/pub/%252E%252E/v/premium/movie.m4s",
        "/pub/.%252e/v/premium/movie.m4s",
        "/pub/%252e%252e%252fv%252fpremium%252fmovie.m4s",
        "/pub/%2e%2e/v/premium/movie.m4s",
    ] {
        let (status, body) = raw_get(&site, target, "");
        assert!(
            !String::from_utf8_lossy(&body).contains("PREMIUM"),
            "{target} served the protected file"
        );
        assert_eq!(status, 400, "{target}");
        let (body, _, _) = curl(&["--path-as-is", &site.url(target)]);
        assert!(!String::from_utf8_lossy(&body).contains("PREMIUM"));
    }
    // Without a token the protected path itself is refused; with one it is served.
    let (status, _) = raw_get(&site, "/v/premium/movie.m4s", "");
    assert_eq!(status, 403);
    let token = site.sign("/v/premium/*", &[]);
    let q = estuary_common::token::query_pair(&token);
    let (status, body) = raw_get(&site, &format!("/v/premium/movie.m4s?{q}"), "");
    assert_eq!((status, body.as_slice()), (200, PREMIUM));
    // Nothing but the signed request reached the upstream.
    assert_eq!(origin.seen(), vec!["/v/premium/movie.m4s".to_owned()]);
}

/// Finding 5: `%3F` and `%23` in a path gave a cache key with a literal `?` or `#` while the
/// upstream URL was cut there: every variant a new cache key (and a new upstream fetch) for
/// the same object. Now they are refused, like `%25`, and nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_query_and_fragment_delimiters_are_refused() {
    let origin = Origin::start().await;
    origin.put("/pub/a.m4s", Object::new(pattern(100_000)));
    let site = cached_site("canon-delims", &[origin.url()], "");
    let _edge = site.start();
    for i in 0..10 {
        for target in [
            format!("/pub/a.m4s%3Fv={i}"),
            format!("/pub/a.m4s%3fv={i}"),
            format!("/pub/a.m4s%23{i}"),
            format!("/pub/a.m4s%25{i}0"),
        ] {
            let (status, _) = raw_get(&site, &target, "Range: bytes=0-0\r\n");
            assert_eq!(status, 400, "{target}");
        }
    }
    assert_eq!(
        origin.hits("/pub/a.m4s"),
        0,
        "a refused path reached upstream"
    );
    assert_eq!(purge(&site, "/pub/a.m4s%3Fv=1"), 400);
    // The object itself: one fetch.
    for _ in 0..3 {
        let (status, body) = raw_get(&site, "/pub/a.m4s", "");
        assert_eq!(status, 200);
        assert!(body == pattern(100_000));
    }
    assert_eq!(origin.hits("/pub/a.m4s"), 1);
}

/// The upstream receives the path re-encoded from the canonical one, whatever form the client
/// used, and every form of one path shares one cache key (and one purge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_a_path_is_one_cache_key_and_one_upstream_target() {
    let origin = Origin::start().await;
    origin.put("/pub/a%20b.m4s", Object::new(pattern(5000)));
    origin.put("/pub/%C3%A9t%C3%A9.m4s", Object::new(pattern(7000)));
    let site = cached_site("canon-forms", &[origin.url()], "");
    let _edge = site.start();
    for target in [
        "/pub/a%20b.m4s",
        "/pub/%61%20b.m4s",
        "//pub/a%20%62.m4s",
        "/pub//a%20b%2Em4s",
    ] {
        let (status, body) = raw_get(&site, target, "");
        assert_eq!(status, 200, "{target}");
        assert!(body == pattern(5000), "{target}");
    }
    assert_eq!(
        origin.hits("/pub/a%20b.m4s"),
        1,
        "one upstream fetch for every form"
    );
    for target in ["/pub/%c3%a9t%c3%a9.m4s", "/pub/%C3%A9t%C3%A9.m4s"] {
        let (status, body) = raw_get(&site, target, "");
        assert_eq!(status, 200, "{target}");
        assert!(body == pattern(7000), "{target}");
    }
    assert_eq!(origin.hits("/pub/%C3%A9t%C3%A9.m4s"), 1);
    // A purge in another form removes the same object.
    assert_eq!(purge(&site, "/pub/%61%20b.m4s"), 200);
    let (status, _) = raw_get(&site, "/pub/a%20b.m4s", "");
    assert_eq!(status, 200);
    assert_eq!(
        origin.hits("/pub/a%20b.m4s"),
        2,
        "the purge missed the object"
    );
    let seen = origin.requested_paths();
    assert_eq!(
        seen,
        ["/pub/a%20b.m4s", "/pub/%C3%A9t%C3%A9.m4s", "/pub/a%20b.m4s"]
    );
}

/// A client's `X-Estuary-Fill` header used to make the edge skip the object's owning peer and
/// fill from the origin itself: each object fetched from the origin twice. Now only a peer's
/// signed fill credential counts, so each object still comes from the origin once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fill_header_does_not_steer_the_fill() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..12)
        .map(|i| format!("/v/steer/seg_{i:03}.m4s"))
        .collect();
    for p in &paths {
        origin.put(p, Object::new(pattern(20_000)));
    }
    let sites = peer_pair("steer", &[origin.url()]);
    let _a = sites[0].start();
    let _b = sites[1].start();
    let token = sites[0].sign("/v/steer/*", &[]);
    let q = estuary_common::token::query_pair(&token);
    for p in &paths {
        for site in &sites {
            let (status, body) =
                raw_get(site, &format!("{p}?{q}"), "X-Estuary-Fill: edge-test\r\n");
            assert_eq!(status, 200, "{p}");
            assert!(body == pattern(20_000));
        }
    }
    origin.assert_fetched_once(&paths, "the client's header steered the fill");
}

/// A streamed cache miss used to be logged with `bytes: 0` and left out of the byte metrics
/// (hyper stops polling a body once its `Content-Length` is sent, so the end was never seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_miss_logs_and_counts_its_bytes() {
    let origin = Origin::start().await;
    let len = 3_000_000;
    origin.put("/pub/big-miss.m4s", Object::new(pattern(len)));
    origin.put("/pub/big-miss-h2.m4s", Object::new(pattern(len)));
    let site = cached_site("canon-bytes", &[origin.url()], "");
    let edge = site.start();
    let (status, headers, body) = plain_get(&site, "/pub/big-miss.m4s", &[]).await;
    assert_eq!((status, body.len()), (200, len));
    assert_eq!(headers["x-cache"], "MISS");
    let (status, _, body) = plain_get(&site, "/pub/big-miss.m4s", &[]).await;
    assert_eq!((status, body.len()), (200, len));
    let (head, body) = rust_get(site.https, &site.cert, true, "/pub/big-miss-h2.m4s", &[])
        .await
        .expect("h2 get");
    assert_eq!((head.status().as_u16(), body.len()), (200, len));
    assert_eq!(head.headers()["x-cache"], "MISS");
    let lines = edge.access_log_json(3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["bytes"], len as u64, "{line}");
        assert_eq!(line["complete"], true, "{line}");
    }
    assert_eq!(
        edge.metric(
            "estuary_edge_response_body_bytes_total",
            &["protocol=\"h1\""]
        ),
        2.0 * len as f64
    );
    assert_eq!(
        edge.metric(
            "estuary_edge_response_body_bytes_total",
            &["protocol=\"h2\""]
        ),
        len as f64
    );
}

/// Tokens had no longest lifetime: `exp` = 2^64-1 was a token valid forever. Now a token whose
/// `exp` is more than `[auth] max_ttl` (default 7 days) after now is refused, with its reason
/// counted.
#[test]
fn tokens_longer_than_max_ttl_are_refused() {
    let site = Site::new("canon-max-ttl");
    let edge = site.start();
    let path = "/v/abc/720p/init.mp4";
    let get = |token: &str| {
        let q = estuary_common::token::query_pair(token);
        raw_get(&site, &format!("{path}?{q}"), "").0
    };
    assert_eq!(get(&site.sign("/v/abc/*", &["--ttl", "3600"])), 200);
    assert_eq!(
        get(&site.sign("/v/abc/*", &["--ttl", &u64::MAX.to_string()])),
        403
    );
    assert_eq!(get(&site.sign("/v/abc/*", &["--ttl", "2592000"])), 403);
    assert_eq!(
        edge.metric(
            "estuary_edge_token_rejections_total",
            &["reason=\"lifetime_too_long\""]
        ),
        2.0
    );

    // A shorter limit from the config.
    let site = Site::new("canon-max-ttl-1h");
    let config = site.write_config();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[auth]\n", "[auth]\nmax_ttl = \"1h\"\n");
    assert!(text.contains("max_ttl"));
    let edge = start_with_config(&site, &text);
    assert_eq!(
        get_from(&site, path, &site.sign("/v/abc/*", &["--ttl", "1800"])),
        200
    );
    assert_eq!(
        get_from(&site, path, &site.sign("/v/abc/*", &["--ttl", "7200"])),
        403
    );
    assert_eq!(
        edge.metric(
            "estuary_edge_token_rejections_total",
            &["reason=\"lifetime_too_long\""]
        ),
        1.0
    );
}

fn get_from(site: &Site, path: &str, token: &str) -> u16 {
    let q = estuary_common::token::query_pair(token);
    raw_get(site, &format!("{path}?{q}"), "").0
}

/// Starts the edge of `site` with `text` as its whole config.
fn start_with_config(site: &Site, text: &str) -> EdgeProcess {
    let config = site.dir.path().join("edge-custom.toml");
    std::fs::write(&config, text).expect("write config");
    site.start_with(&config)
}
