//! The demo chat page the relay serves at `/` and `/chat`: self-contained, under a strict
//! Content-Security-Policy, and working in a real browser. Two headless Chromium tabs
//! (tests/clients/chat_page.mjs) open it as alice and bob at URLs signed with
//! `estuary token sign`, as scripts/demo.sh prints them: alice's message reaches bob's tab,
//! and her tick goes from sent to delivered to read only when bob's tab has it.
mod common;

use std::process::Command;

use common::chat::ChatRelay;
use common::*;

#[test]
fn chat_relay_page() {
    let relay = ChatRelay::start("chat-page", "");
    for path in ["/", "/chat"] {
        let (status, headers, body) = fetch(&format!("http://{}{path}", relay.addr), &[]);
        assert_eq!(status, 200, "GET {path}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = header(&headers, "content-security-policy").expect("a CSP");
        assert!(
            csp.starts_with("default-src 'none';")
                && csp.contains("script-src 'sha256-")
                && csp.contains("connect-src 'self'")
                && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("<title>Estuary chat</title>"));
        // Self-contained: nothing is loaded from anywhere.
        assert!(!body.contains(" src=") && !body.contains("http://") && !body.contains("https://"));
    }
    let (status, _, _) = fetch(&format!("http://{}/chat/other", relay.addr), &[]);
    assert_eq!(status, 404);

    let report = two_tabs(&relay, &[]);
    eprintln!("{report}");
}

/// Runs tests/clients/chat_page.mjs: alice's and bob's tabs on `relay`'s page (`extra`: its
/// further arguments); fails the test unless it reports `ok`, and returns its report.
fn two_tabs(relay: &ChatRelay, extra: &[&str]) -> serde_json::Value {
    let url = |user: &str, peer: &str| common::chat::page_url(relay.addr, user, peer);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/chat_page.mjs");
    let out = run(Command::new("node")
        .args([script, &url("alice", "bob"), &url("bob", "alice")])
        .args(extra));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
    assert!(
        out.status.success() && report["ok"] == true,
        "the chat page failed in Chromium: {stdout}\n{}\nrelay log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.process().log()
    );
    report
}

/// The page with `[media]`: alice attaches a real JPEG in her tab; it goes up to a real origin
/// over TUS from the browser (CORS), and bob's tab shows it loaded from a real edge.
#[test]
fn chat_relay_page_media() {
    let sites = common::chat::MediaSites::start("chat-page-media");
    let (origin, edge) = (&sites.origin, &sites.edge);
    let relay = ChatRelay::start("chat-page-media", &sites.relay_toml(""));
    let (_, headers, _) = fetch(&format!("http://{}/chat", relay.addr), &[]);
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(
        csp.contains(&format!("connect-src 'self' {};", origin.url("")))
            && csp.contains(&format!("img-src {};", edge.url(""))),
        "{csp}"
    );
    let jpeg = relay.dir.path().join("photo.jpg");
    common::chat::test_jpeg(&jpeg, "160x120");
    let report = two_tabs(&relay, &[jpeg.to_str().expect("path")]);
    assert!(
        report["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "alice: her image shown and read")),
        "{report}"
    );
}
