//! HTTP semantics a player relies on: MIME types, Cache-Control per kind, validators and
//! conditional requests, byte ranges, HEAD, CORS and methods. Checked with curl.

mod common;

use common::*;

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn mime_types_and_cache_control() {
    let mut site = Site::new("mime");
    site.protected.clear();
    let files = [
        (
            "a.m3u8",
            "application/vnd.apple.mpegurl",
            "public, max-age=2",
        ),
        ("a.mpd", "application/dash+xml", "public, max-age=2"),
        ("a.m4s", "video/mp4", "public, max-age=31536000, immutable"),
        (
            "init.mp4",
            "video/mp4",
            "public, max-age=31536000, immutable",
        ),
        ("a.ts", "video/mp2t", "public, max-age=31536000, immutable"),
        ("a.m4a", "audio/mp4", "public, max-age=31536000, immutable"),
        ("a.aac", "audio/aac", "public, max-age=31536000, immutable"),
        ("a.vtt", "text/vtt; charset=utf-8", "public, max-age=300"),
        ("asset.json", "application/json", "public, max-age=300"),
        ("poster.jpg", "image/jpeg", "public, max-age=300"),
        ("thumb.png", "image/png", "public, max-age=300"),
        ("thumb.webp", "image/webp", "public, max-age=300"),
    ];
    for (name, _, _) in files {
        std::fs::write(site.content.join("pub").join(name), b"x").expect("write");
    }
    site.extra = "[cache_control]\nother = \"public, max-age=300\"\n".into();
    let _edge = site.start();
    for (name, ctype, cc) in files {
        let (status, head) = curl_head(&[&site.url(&format!("/pub/{name}"))]);
        assert_eq!(status, 200, "{name}");
        assert_eq!(header(&head, "content-type"), Some(ctype), "{name}");
        assert_eq!(header(&head, "cache-control"), Some(cc), "{name}");
    }
}

#[test]
fn validators_ranges_and_head() {
    let site = Site::new("ranges");
    let _edge = site.start();
    let url = site.url("/pub/big.mp4");
    let want = pattern(8_000_000);

    let (status, head) = curl_head(&[&url]);
    assert_eq!(status, 200);
    let etag = header(&head, "etag").expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong etag: {etag}"
    );
    let last_modified = header(&head, "last-modified")
        .expect("last-modified")
        .to_owned();
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&head, "content-length"), Some("8000000"));

    // Conditionals.
    let (s, _) = curl_head(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(s, 304);
    let (s, _) = curl_head(&["-H", &format!("If-None-Match: \"nope\", W/{etag}"), &url]);
    assert_eq!(s, 304, "weak comparison for If-None-Match");
    let (s, _) = curl_head(&["-H", "If-None-Match: \"nope\"", &url]);
    assert_eq!(s, 200);
    let (s, _) = curl_head(&["-H", &format!("If-Modified-Since: {last_modified}"), &url]);
    assert_eq!(s, 304);
    let (s, _) = curl_head(&[
        "-H",
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT",
        &url,
    ]);
    assert_eq!(s, 200);
    let (s, _) = curl_head(&["-H", "If-Match: \"nope\"", &url]);
    assert_eq!(s, 412);

    // One range: 206 with Content-Range and exactly those bytes.
    let (body, _, _) = curl(&["-r", "1000-1999", &url]);
    assert_eq!(body, &want[1000..2000]);
    let (s, head) = curl_head(&["-r", "1000-1999", &url]);
    assert_eq!(s, 206);
    assert_eq!(
        header(&head, "content-range"),
        Some("bytes 1000-1999/8000000")
    );
    assert_eq!(header(&head, "content-length"), Some("1000"));
    let (body, _, _) = curl(&["-r", "-10", &url]);
    assert_eq!(body, &want[want.len() - 10..]);
    let (body, _, _) = curl(&["-r", "7999990-", &url]);
    assert_eq!(body, &want[7_999_990..]);
    // Unsatisfiable: 416 with the length.
    let (s, head) = curl_head(&["-r", "8000000-", &url]);
    assert_eq!(s, 416);
    assert_eq!(header(&head, "content-range"), Some("bytes */8000000"));
    // Several ranges: the whole file, 200 (documented behaviour).
    let (s, head) = curl_head(&["-r", "0-0,10-10", &url]);
    assert_eq!(s, 200);
    assert_eq!(header(&head, "content-length"), Some("8000000"));
    // Overlapping ranges too (they were 416).
    let (s, head) = curl_head(&["-r", "0-10,5-20", &url]);
    assert_eq!(s, 200);
    assert_eq!(header(&head, "content-length"), Some("8000000"));
    // A thousand ranges: refused.
    let many = vec!["0-0"; 1000].join(",");
    let (s, _) = curl_head(&["-r", &many, &url]);
    assert_eq!(s, 416);
    // If-Range with a stale validator: the whole file.
    let (s, _) = curl_head(&["-r", "0-9", "-H", "If-Range: \"old\"", &url]);
    assert_eq!(s, 200);
    let (s, _) = curl_head(&["-r", "0-9", "-H", &format!("If-Range: {etag}"), &url]);
    assert_eq!(s, 206);

    // HEAD: the same head, no body.
    let (body, _, ok) = curl(&["-I", &url]);
    assert!(ok);
    let text = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert!(text.contains("content-length: 8000000"), "{text}");
    let (status, head, body) = raw_request(
        site.http,
        "HEAD /pub/big.mp4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("raw head");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 8000000")
    );
    assert!(body.is_empty(), "HEAD sent {} body bytes", body.len());

    // Methods.
    let (s, head) = curl_head(&["-X", "POST", &url]);
    assert_eq!(s, 405);
    assert_eq!(header(&head, "allow"), Some("GET, HEAD, OPTIONS"));
    let (s, _) = curl_head(&["-X", "DELETE", &url]);
    assert_eq!(s, 405);
    let (s, _) = curl_head(&[&site.url("/pub/nothing-here.m4s")]);
    assert_eq!(s, 404);
    let (s, _) = curl_head(&[&site.url("/pub/")]);
    assert_eq!(s, 404, "folders are not listed");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let site = Site::new("keepalive");
    let _edge = site.start();
    let url = site.url("/pub/hello.txt");
    // curl reuses the connection for URLs on the same host and says so on stderr with -v.
    let (_, err, ok) = curl(&["-v", &url, &url, &url]);
    assert!(ok);
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
}

#[test]
fn cors_for_browser_players() {
    let mut site = Site::new("cors");
    site.extra = "[cors]\nallow_origins = [\"https://player.example\"]\nmax_age = \"10m\"\n".into();
    let _edge = site.start();
    let url = site.url("/pub/hello.txt");

    // Preflight for a range request from an allowed origin.
    let (s, head) = curl_head(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://player.example",
        "-H",
        "Access-Control-Request-Method: GET",
        "-H",
        "Access-Control-Request-Headers: range",
        &url,
    ]);
    assert_eq!(s, 204);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://player.example")
    );
    assert!(
        header(&head, "access-control-allow-methods")
            .expect("methods")
            .contains("GET")
    );
    assert!(
        header(&head, "access-control-allow-headers")
            .expect("headers")
            .contains("Range")
    );
    assert_eq!(header(&head, "access-control-max-age"), Some("600"));

    // A simple request from the allowed origin sees the range headers exposed.
    let (s, head) = curl_head(&["-H", "Origin: https://player.example", "-r", "0-1", &url]);
    assert_eq!(s, 206);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://player.example")
    );
    let exposed = header(&head, "access-control-expose-headers").expect("expose");
    assert!(exposed.contains("Content-Length") && exposed.contains("Content-Range"));
    assert!(header(&head, "vary").expect("vary").contains("Origin"));

    // Another origin gets no grant.
    let (s, head) = curl_head(&["-H", "Origin: https://evil.example", &url]);
    assert_eq!(s, 200);
    assert_eq!(header(&head, "access-control-allow-origin"), None);
}

#[test]
fn cors_any_origin_is_the_default() {
    let site = Site::new("cors-any");
    let _edge = site.start();
    let (_, head) = curl_head(&[
        "-H",
        "Origin: https://anyone.example",
        &site.url("/pub/hello.txt"),
    ]);
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    // Errors carry CORS headers too, so a player can read the status.
    let (s, head) = curl_head(&[
        "-H",
        "Origin: https://anyone.example",
        &site.url("/v/abc/master.m3u8"),
    ]);
    assert_eq!(s, 403);
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
}
