//! No request reads a byte outside the store root: a table of hostile paths sent raw over
//! TCP (no client-side normalization), with curl --path-as-is, and over HTTP/3.

mod common;

use common::*;

const SECRET: &str = "TOP-SECRET-OUTSIDE-ROOT";

/// Raw request targets, each with the statuses it may get (400 when the path is refused,
/// 404 when it is a well-formed name that does not exist).
const HOSTILE: &[(&str, &[u16])] = &[
    ("/../secret.txt", &[400]),
    ("/pub/../../secret.txt", &[400]),
    ("/pub/%2e%2e/%2e%2e/secret.txt", &[400]),
    ("/pub/%2E%2E/%2E%2E/secret.txt", &[400]),
    ("/pub/.%2e/.%2e/secret.txt", &[400]),
    ("/pub/%2e./%2e./secret.txt", &[400]),
    ("/pub/..%2fsecret.txt", &[400]),
    ("/pub/..%2Fsecret.txt", &[400]),
    ("/pub%2f..%2f..%2fsecret.txt", &[400]),
    ("/pub/..%5c..%5csecret.txt", &[400]),
    ("/pub/..\\..\\secret.txt", &[400]),
    ("/pub/%252e%252e/%252e%252e/secret.txt", &[400]),
    ("/pub/%c0%ae%c0%ae/secret.txt", &[400]),
    ("/pub/%e0%80%ae%e0%80%ae/secret.txt", &[400]),
    ("/pub/hello.txt%00.m3u8", &[400]),
    ("/pub/hello.txt%00", &[400]),
    ("/pub/%0d%0aX-Injected:%20yes", &[400]),
    ("/./pub/hello.txt", &[400]),
    ("/pub/./hello.txt", &[400]),
    ("/pub/hello.txt/..", &[400]),
    ("/pub/%", &[400]),
    ("/pub/%g0", &[400]),
    ("/link-out/secret.txt", &[404]),
    ("/pub/escape", &[404]),
    ("/t/Li4vLi4vc2VjcmV0LnR4dA/../secret.txt", &[400]),
    ("//secret.txt", &[404]),
    ("/pub//..//..//secret.txt", &[400]),
];

fn setup() -> Site {
    let site = Site::new("hostile");
    // Symbolic links that lead out of the root must be refused; one that stays inside works.
    std::os::unix::fs::symlink(site.dir.path(), site.content.join("link-out")).expect("link");
    std::os::unix::fs::symlink(
        site.dir.path().join("secret.txt"),
        site.content.join("pub/escape"),
    )
    .expect("link");
    std::os::unix::fs::symlink(
        site.content.join("pub/hello.txt"),
        site.content.join("pub/alias.txt"),
    )
    .expect("link");
    site
}

#[test]
fn hostile_paths_never_leave_the_root() {
    assert!(HOSTILE.len() >= 20);
    let site = setup();
    let edge = site.start();
    for (path, allowed) in HOSTILE {
        let (status, head, body) = raw_request(
            site.http,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains(SECRET), "{path} leaked the secret");
        assert!(
            !head.to_ascii_lowercase().contains("x-injected"),
            "{path}: header injection"
        );
        // hyper refuses some targets (raw backslashes) itself with 400 before the handler.
        assert!(
            allowed.contains(&status),
            "{path}: status {status}, allowed {allowed:?}"
        );

        let (body, _, _) = curl(&["--path-as-is", &site.url(path)]);
        assert!(
            !String::from_utf8_lossy(&body).contains(SECRET),
            "{path} leaked via curl"
        );
    }
    // A link inside the root is followed.
    let (s, _) = curl_head(&[&site.url("/pub/alias.txt")]);
    assert_eq!(s, 200);
    assert!(edge.metric("estuary_edge_bad_paths_total", &[]) >= 15.0);
    assert!(
        edge.metric(
            "estuary_edge_store_lookups_total",
            &["result=\"outside_root\""]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_over_http3() {
    let site = setup();
    let _edge = site.start();
    let mut h3 = estuary_bench::h3client::H3Client::connect(site.https, "localhost", &site.cert)
        .await
        .expect("h3");
    for (path, _) in HOSTILE {
        // Targets that are not valid URIs cannot even be sent; the rest must not leak.
        let Ok(r) = h3.get(path).await else { continue };
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains(SECRET),
            "{path} leaked over h3"
        );
    }
    h3.close().await;
}
