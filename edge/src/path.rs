//! Request-path normalization: the one place that turns a raw request path into the canonical
//! path that tokens are checked against, files are looked up by, the cache and purges are keyed
//! by, and the upstream request is re-encoded from ([`encode`]). Pure and fuzzed. The host is
//! not part of the key: one edge serves one namespace.
//!
//! The canonical path is decoded exactly once. Whatever a second decoding (by an upstream that
//! decodes paths) or a URI parser could read differently is refused rather than passed on: an
//! escaped `%` (`%25`), an escaped `?` (`%3F`) or `#` (`%23`), escaped separators, dot segments.
//! So the canonical path holds no `%`, `?` or `#`, and its re-encoded form decodes back to it.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Why a request path was refused (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path is too long")]
    TooLong,
    #[error("the path holds an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a NUL or control character")]
    ControlCharacter,
    #[error("the path holds a bad percent-escape")]
    BadEscape,
    #[error("the path is not UTF-8 after decoding")]
    NotUtf8,
    #[error("the path holds a '.' or '..' segment")]
    DotSegment,
    #[error("the path holds an escaped '%', '?' or '#'")]
    EncodedDelimiter,
}

/// The longest raw path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 2048;

/// Decodes a raw request path once and normalizes it: empty segments are dropped
/// (`//a` is `/a`), a trailing slash is kept, and anything that could climb out of the content
/// root or mean two things to two parsers is refused: `.` and `..` segments, encoded
/// slashes and backslashes, backslashes, NUL and other control characters, bad escapes and
/// non-UTF-8 bytes. An escaped `%`, `?` or `#` is refused too: decoded, it would be read again
/// as an escape, a query or a fragment by whoever parses the path next (a double-encoded
/// `%252e%252e` is a `..` to an upstream that decodes once more). The result starts with '/'.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let v = hi << 4 | lo;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            if v == b'%' {
                return Err(PathError::EncodedDelimiter);
            }
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    for &b in &decoded {
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        // Escaped (a URI path cannot hold them raw, but this function takes any text).
        if b == b'?' || b == b'#' {
            return Err(PathError::EncodedDelimiter);
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    // The C1 controls (U+0080..U+009F) too: U+009B is a terminal's CSI, as ESC [ is.
    if decoded.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." | ".." => return Err(PathError::DotSegment),
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    // What is accepted here must be acceptable upstream once re-encoded (a parent or peer
    // applies this same limit): found by the fuzz target `path`, a path of raw `"` and `<`
    // within the limit triples past it when escaped.
    // Escaping at most triples a byte, so most paths need no count (this is the hot path).
    if out.len() * 3 > MAX_PATH_LEN && encoded_len(&out) > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(out)
}

/// The length of [`encode`]'s result, without building it.
fn encoded_len(canonical: &str) -> usize {
    percent_encoding::utf8_percent_encode(canonical, PATH_ESCAPED)
        .map(str::len)
        .sum()
}

/// Bytes a canonical path sends escaped upstream: everything but RFC 3986 `pchar`
/// (unreserved, sub-delims, `:` and `@`) and the segment separator `/`.
const PATH_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/');

/// Re-encodes a canonical path (from [`normalize`]) for a request target: every byte outside
/// `pchar` and `/` is percent-encoded, so the result is always a valid URI path and
/// [`normalize`] gives the canonical path back from it.
pub fn encode(canonical: &str) -> String {
    percent_encoding::utf8_percent_encode(canonical, PATH_ESCAPED).to_string()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths() {
        assert_eq!(
            normalize("/v/a/master.m3u8").as_deref(),
            Ok("/v/a/master.m3u8")
        );
        assert_eq!(normalize("//v///a/").as_deref(), Ok("/v/a/"));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("/a%20b").as_deref(), Ok("/a b"));
        assert_eq!(
            normalize("/%2e%2e%2fetc").as_deref(),
            Err(&PathError::EncodedSeparator)
        );
        // Decoded once only, and what a second decoding would read differently is refused.
        assert_eq!(normalize("/%252e%252e/x"), Err(PathError::EncodedDelimiter));
        assert_eq!(normalize("/a%3Fb"), Err(PathError::EncodedDelimiter));
        assert_eq!(normalize("/a%3fb"), Err(PathError::EncodedDelimiter));
        assert_eq!(normalize("/a%23b"), Err(PathError::EncodedDelimiter));
        assert_eq!(normalize("/a%25"), Err(PathError::EncodedDelimiter));
    }

    #[test]
    fn canonical_paths_are_re_encoded() {
        assert_eq!(encode("/v/a/seg_001.m4s"), "/v/a/seg_001.m4s");
        assert_eq!(encode("/a b"), "/a%20b");
        assert_eq!(encode("/x`<>\"{}|^"), "/x%60%3C%3E%22%7B%7D%7C%5E");
        assert_eq!(encode("/\u{e9}t\u{e9}"), "/%C3%A9t%C3%A9");
        assert_eq!(encode("/a:b@c!$&'()*+,;=~"), "/a:b@c!$&'()*+,;=~");
        for raw in ["/x%20", "/x%60", "/x%3C", "/%61%20b", "/a b", "/%C3%A9"] {
            let canonical = normalize(raw).expect(raw);
            let target = encode(&canonical);
            assert!(target.parse::<http::Uri>().is_ok(), "{raw} -> {target}");
            assert_eq!(normalize(&target), Ok(canonical));
        }
    }

    #[test]
    fn hostile_paths() {
        let cases: &[(&str, PathError)] = &[
            ("/../etc/passwd", PathError::DotSegment),
            ("/v/../../etc/passwd", PathError::DotSegment),
            ("/v/%2e%2e/x", PathError::DotSegment),
            ("/v/%2E%2E/x", PathError::DotSegment),
            ("/v/.%2e/x", PathError::DotSegment),
            ("/v/./x", PathError::DotSegment),
            ("/v/..", PathError::DotSegment),
            ("/v%2fx", PathError::EncodedSeparator),
            ("/v%2Fx", PathError::EncodedSeparator),
            ("/v%5c..%5cx", PathError::EncodedSeparator),
            ("/v\\..\\x", PathError::Backslash),
            ("/v/%00.m3u8", PathError::ControlCharacter),
            ("/v/%0a", PathError::ControlCharacter),
            ("/v/%7f", PathError::ControlCharacter),
            // Found by the fuzz target `path`: a C1 control, escaped as UTF-8.
            ("/v/caf%C2%9af", PathError::ControlCharacter),
            ("/v/%C2%9B2J", PathError::ControlCharacter),
            ("/v/%", PathError::BadEscape),
            ("/v/%zz", PathError::BadEscape),
            ("/v/%c0%ae%c0%ae/x", PathError::NotUtf8),
            ("/v/%ff", PathError::NotUtf8),
            ("/v/?", PathError::EncodedDelimiter),
            ("/v/#", PathError::EncodedDelimiter),
            ("v/x", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(*want), "{raw}");
        }
        assert_eq!(normalize(&"/a".repeat(2000)), Err(PathError::TooLong));
        // Within the limit raw, past it once escaped for the upstream (fuzz target `path`).
        let quoted = format!("/{}", "\"".repeat(1000));
        assert_eq!(normalize(&quoted), Err(PathError::TooLong));
        let fits = format!("/{}", "\"".repeat(600));
        assert_eq!(
            normalize(&encode(&normalize(&fits).expect("fits"))),
            normalize(&fits)
        );
    }

    proptest::proptest! {
        #[test]
        fn normalized_paths_are_safe(raw in "/[a-zA-Z0-9%./\\\\_~-]{0,64}") {
            if let Ok(p) = normalize(&raw) {
                proptest::prop_assert!(p.starts_with('/'));
                proptest::prop_assert!(!p.contains('\\'));
                proptest::prop_assert!(!p.contains('\0'));
                proptest::prop_assert!(!p.contains("//"));
                for seg in p.split('/') {
                    proptest::prop_assert!(seg != ".." && seg != ".");
                }
                // Normalizing is idempotent when nothing is left to decode.
                if !p.contains('%') {
                    proptest::prop_assert_eq!(normalize(&p), Ok(p.clone()));
                }
            }
        }

        /// The canonical form, re-encoded, is a valid request target that normalizes back to
        /// itself (so normalizing is idempotent on re-encoded output), and what goes upstream
        /// holds no byte a URI parser would split on.
        #[test]
        fn re_encoding_round_trips(raw in "/[a-zA-Z0-9%./ ?#`<>\"{}|^\u{e9}\u{4e2d}_~!$&'()*+,;=:@-]{0,64}") {
            if let Ok(p) = normalize(&raw) {
                proptest::prop_assert!(!p.contains(['%', '?', '#']));
                let target = encode(&p);
                proptest::prop_assert!(target.parse::<http::uri::PathAndQuery>().is_ok(), "{}", target);
                proptest::prop_assert!(!target.contains(['?', '#', ' ']));
                proptest::prop_assert_eq!(normalize(&target), Ok(p.clone()));
                proptest::prop_assert_eq!(encode(&normalize(&target).unwrap_or_default()), target);
            }
        }

        /// The same oracle as the fuzz target `path` (fuzz/fuzz_targets/path.rs): any escaped
        /// bytes, and what is accepted holds no control character (C0 or C1) and round-trips.
        #[test]
        fn any_escape_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
            let raw: String = std::iter::once("/".to_owned())
                .chain(bytes.iter().map(|b| format!("%{b:02X}")))
                .collect();
            if let Ok(p) = normalize(&raw) {
                proptest::prop_assert!(!p.chars().any(char::is_control), "{:?}", p);
                proptest::prop_assert_eq!(normalize(&encode(&p)), Ok(p.clone()));
            }
        }

        #[test]
        fn never_panics(raw in "\\PC{0,200}") {
            let _ = normalize(&raw);
        }
    }
}
