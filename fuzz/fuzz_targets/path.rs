//! The edge's one canonical path: normalizing arbitrary text never panics; a path it accepts
//! starts with '/', holds no dot segment, backslash or control character, and its encoded
//! form (what goes upstream) normalizes back to itself.
#![no_main]

use estuary_edge::path::{encode, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = normalize(raw) else {
        return;
    };
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.contains('\\') && !p.chars().any(char::is_control), "{p:?}");
    assert!(
        p.split('/').all(|s| s != "." && s != ".."),
        "dot segment in {p:?}"
    );
    let e = encode(&p);
    assert!(e.is_ascii(), "{e:?}");
    assert_eq!(normalize(&e).as_deref(), Ok(p.as_str()), "encoded {e:?}");
});
