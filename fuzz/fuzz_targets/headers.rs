//! Header values the services parse themselves: an upstream's `Content-Range` (the edge's
//! slices), a client's `Range` (edge and origin, `common::http_semantics`) and a TUS client's
//! `Upload-Metadata` and `Upload-Checksum` (the origin). Never a panic; a parsed range is
//! well formed and within the length it was chosen for.
#![no_main]

use estuary_common::http_semantics::{RangeChoice, parse_range};
use estuary_edge::slice::{ContentRange, parse_content_range};
use estuary_origin::tus::{Checksum, parse_metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(ContentRange::Bytes {
        first,
        last,
        complete,
    }) = parse_content_range(text)
    {
        assert!(first <= last && last < complete, "{text:?}");
    }
    let _ = Checksum::parse(text);
    let len = u64::from(data.first().copied().unwrap_or(0)) * 97;
    if let RangeChoice::Part(first, last) = parse_range(text, len) {
        assert!(first <= last && last < len, "{text:?} of {len}");
    }
    if let Some(pairs) = parse_metadata(text) {
        for (k, _) in pairs {
            assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
});
