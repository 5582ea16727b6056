//! Signed URLs: every rejection reason, the three carriers, key rotation, and a real player
//! (ffprobe) following relative segment URLs from a manifest fetched by a path-form token URL.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::*;

fn status(site: &Site, args: &[&str], path_and_query: &str) -> (u16, Vec<u8>) {
    let url = site.url(path_and_query);
    let (body, _, ok) = curl(&[args, &["-w", "\n%{http_code}", &url]].concat());
    assert!(ok);
    let text = body;
    let split = text.iter().rposition(|b| *b == b'\n').expect("status line");
    let code = String::from_utf8_lossy(&text[split + 1..])
        .parse()
        .expect("code");
    (code, text[..split].to_vec())
}

fn q(token: &str) -> String {
    estuary_common::token::query_pair(token)
}

#[test]
fn every_rejection_reason_is_a_counted_403() {
    let site = Site::new("tokens");
    let edge = site.start();
    let path = "/v/abc/master.m3u8";
    let good = site.sign("/v/abc/*", &[]);
    let (s, body) = status(&site, &[], &format!("{path}?{}", q(&good)));
    assert_eq!(s, 200);
    assert_eq!(body, MASTER.as_bytes());

    let sign_with = |kid: &str, key: &str, extra: &[&str]| {
        let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
            .args([
                "token", "sign", "--key-id", kid, "--key", key, "--acl", "/v/abc/*",
            ])
            .args(extra));
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let cases: Vec<(&str, String)> = vec![
        ("missing", String::new()),
        ("malformed", q("garbage")),
        ("malformed", q(&good.replace("~hmac=", "~hmac=X"))),
        ("bad_hmac", q(&sign_with("k1", KEY2_HEX, &[]))),
        ("bad_hmac", q(&good.replace("acl=/v/abc/*", "acl=/v/*"))),
        ("unknown_kid", q(&sign_with("k9", KEY_HEX, &[]))),
        ("expired", q(&site.sign("/v/abc/*", &["--ttl", "0"]))),
        (
            "not_yet_valid",
            q(&site.sign("/v/abc/*", &["--start-in", "3600"])),
        ),
        ("outside_acl", q(&site.sign("/v/xyz/*", &[]))),
        ("outside_acl", q(&site.sign("/v/abc/master.m3u8x", &[]))),
        (
            "ip_mismatch",
            q(&site.sign("/v/abc/*", &["--ip", "192.0.2.0/24"])),
        ),
    ];
    for (reason, query) in &cases {
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let (s, body) = status(&site, &[], &target);
        assert_eq!(s, 403, "{reason}");
        // Nothing in the response hints at the reason or the right MAC.
        assert_eq!(body, b"forbidden\n", "{reason}");
    }
    for reason in [
        "missing",
        "bad_hmac",
        "unknown_kid",
        "expired",
        "not_yet_valid",
        "ip_mismatch",
    ] {
        let n = edge.metric(
            "estuary_edge_token_rejections_total",
            &[&format!("reason=\"{reason}\"")],
        );
        let want = cases.iter().filter(|(r, _)| *r == reason).count() as f64;
        assert_eq!(n, want, "{reason}");
    }
    assert_eq!(
        edge.metric(
            "estuary_edge_token_rejections_total",
            &["reason=\"malformed\""]
        ),
        2.0
    );
    assert_eq!(
        edge.metric(
            "estuary_edge_token_rejections_total",
            &["reason=\"outside_acl\""]
        ),
        2.0
    );
    // Every refusal is logged with its reason, and tokens never reach the access log.
    let log = edge.access_log_until(|l| l.contains("\"reason\":\"ip_mismatch\""));
    assert!(log.contains("\"reason\":\"ip_mismatch\""), "{log}");
    assert!(
        !log.contains("~hmac="),
        "a token reached the access log: {log}"
    );
    assert!(
        !log.contains("token="),
        "a token reached the access log: {log}"
    );

    // A token bound to the client's address is accepted; a second key works (rotation).
    let (s, _) = status(
        &site,
        &[],
        &format!(
            "{path}?{}",
            q(&site.sign("/v/abc/*", &["--ip", "127.0.0.0/8"]))
        ),
    );
    assert_eq!(s, 200);
    let (s, _) = status(
        &site,
        &[],
        &format!("{path}?{}", q(&sign_with("k2", KEY2_HEX, &[]))),
    );
    assert_eq!(s, 200);
    // Unprotected paths need no token.
    let (s, _) = status(&site, &[], "/pub/hello.txt");
    assert_eq!(s, 200);
}

#[test]
fn three_carriers_and_relative_urls() {
    let site = Site::new("carriers");
    let _edge = site.start();
    let token = site.sign("/v/abc/*", &[]);

    // Query.
    let (s, _) = status(&site, &[], &format!("/v/abc/720p/init.mp4?{}", q(&token)));
    assert_eq!(s, 200);
    // Cookie.
    let (s, _) = status(
        &site,
        &["-b", &format!("estuary_token={token}")],
        "/v/abc/720p/init.mp4",
    );
    assert_eq!(s, 200);
    // Path prefix, as printed by `estuary token sign --path`.
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary")).args([
        "token",
        "sign",
        "--key-id",
        "k1",
        "--key",
        KEY_HEX,
        "--acl",
        "/v/abc/*",
        "--path",
        "/v/abc/master.m3u8",
        "--base",
        &format!("http://{}", site.http),
    ]));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for url in &lines[1..] {
        let (body, _, ok) = curl(&[url]);
        assert!(ok);
        assert_eq!(body, MASTER.as_bytes(), "{url}");
    }
    let path_form = lines[2];
    let segment = path_form
        .split("/t/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("segment");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("b64url");
    assert_eq!(String::from_utf8_lossy(&decoded), lines[0]);

    // A relative URI inside the manifest, resolved against the path-form manifest URL as a
    // player does, carries the token by itself: master -> media playlist -> init and segment.
    let resolve =
        |base: &str, rel: &str| format!("{}/{rel}", &base[..base.rfind('/').expect("slash")]);
    let media_url = resolve(path_form, "720p/index.m3u8");
    let (body, _, _) = curl(&[&media_url]);
    assert_eq!(body, MEDIA.as_bytes());
    for rel in ["init.mp4", "seg_000.m4s"] {
        let (s, head) = curl_head(&[&resolve(&media_url, rel)]);
        assert_eq!(s, 200, "{rel}: {head}");
    }
    // The path-form token still only opens its acl.
    let outside = path_form.replace("/v/abc/master.m3u8", "/v/other.m4s");
    let (s, _) = curl_head(&[&outside]);
    assert_eq!(s, 403);
    // A path-form token that is not base64url is malformed.
    let (s, _) = curl_head(&[&site.url("/t/%%%/v/abc/master.m3u8")]);
    assert!(s == 400 || s == 403, "{s}");
    let (s, _) = curl_head(&[&site.url("/t/bm90LWEtdG9rZW4/v/abc/master.m3u8")]);
    assert_eq!(s, 403);
}

#[test]
fn ffprobe_plays_an_hls_stream_through_a_path_token() {
    let site = Site::new("ffprobe");
    let out_dir = site.content.join("v/stream");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let out = run(Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_segment_type",
            "fmp4",
            "-hls_playlist_type",
            "vod",
        ])
        .arg(out_dir.join("index.m3u8")));
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edge = site.start();
    let token = site.sign("/v/stream/*", &[]);
    let prefix = estuary_common::token::path_prefix(&token);
    for url in [
        format!("http://{}{prefix}/v/stream/index.m3u8", site.http),
        format!(
            "https://127.0.0.1:{}{prefix}/v/stream/index.m3u8",
            site.https.port()
        ),
    ] {
        let out = run(Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name:format=duration",
                "-of",
                "json",
            ])
            .arg(&url));
        assert!(
            out.status.success(),
            "ffprobe {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let codecs: Vec<&str> = v["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .filter_map(|s| s["codec_name"].as_str())
            .collect();
        assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{v}");
        let duration: f64 = v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("duration");
        assert!((3.5..4.6).contains(&duration), "duration {duration}");
    }
    // ffprobe fetched every segment through the token: no refusals.
    assert_eq!(
        edge.metric(
            "estuary_edge_token_rejections_total",
            &["reason=\"missing\""]
        ),
        0.0
    );
    assert!(edge.metric("estuary_edge_store_lookups_total", &["result=\"hit\""]) >= 6.0);
}
