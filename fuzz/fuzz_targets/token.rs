//! Signed-URL tokens (query, cookie or path form), fill credentials and raw-upload credentials:
//! arbitrary text never panics, and whatever `verify` accepts `parse` accepts and the token's
//! acl allows the path.
#![no_main]

use estuary_common::token::{self, KeySet, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The token, then (after a NUL) a request path.
    let (text, path) = text.split_once('\0').unwrap_or((text, "/v/movie/seg.m4s"));
    let Ok(keys) = KeySet::from_hex([("k1", "000102030405060708090a0b0c0d0e0f")]) else {
        return;
    };
    let parsed = token::parse(text);
    let request = Request {
        path,
        client: std::net::IpAddr::from([127, 0, 0, 1]),
        now: 1_700_000_000,
        max_ttl: Some(7 * 86_400),
    };
    if token::verify(text, &keys, request).is_ok() {
        let t = parsed.expect("verified but unparsable");
        assert!(token::acl_allows(t.acl, path));
    }
    let _ = token::verify_fill(text, &keys, path, 1_700_000_000);
    let _ = token::decode_path_segment(text);
    let _ = token::acl_allows(text, path);
    // The origin reads a bearer value as a raw-upload credential (chat media), and the relay
    // a media URL's path.
    if let Some(raw) = estuary_common::media::RawUpload::parse_acl(text) {
        assert_eq!(raw.acl(), text);
    }
    if let Ok(grant) = estuary_origin::app::raw_upload_grant(&keys, text, 1_700_000_000) {
        let raw = grant.raw.expect("a raw-upload grant");
        assert!(estuary_common::media::chat_asset_id(&raw.asset));
    }
    let _ = estuary_common::media::parse_media_path(path);
});
