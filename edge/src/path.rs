//! Request-path normalization: the one place that turns a raw request path into the path that
//! tokens are checked against and files are looked up by. Pure and fuzzed.

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
}

/// The longest raw path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 2048;

/// Decodes a raw request path once and normalizes it: empty segments are dropped
/// (`//a` is `/a`), a trailing slash is kept, and anything that could climb out of the content
/// root or mean two things to two parsers is refused: `.` and `..` segments, encoded
/// slashes and backslashes, backslashes, NUL and other control characters, bad escapes and
/// non-UTF-8 bytes. The result starts with '/'.
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
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
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
    Ok(out)
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
        // Decoded once only: a double-encoded dot stays a literal "%2e" file name.
        assert_eq!(normalize("/%252e%252e/x").as_deref(), Ok("/%2e%2e/x"));
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
            ("/v/%", PathError::BadEscape),
            ("/v/%zz", PathError::BadEscape),
            ("/v/%c0%ae%c0%ae/x", PathError::NotUtf8),
            ("/v/%ff", PathError::NotUtf8),
            ("v/x", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(*want), "{raw}");
        }
        assert_eq!(normalize(&"/a".repeat(2000)), Err(PathError::TooLong));
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

        #[test]
        fn never_panics(raw in "\\PC{0,200}") {
            let _ = normalize(&raw);
        }
    }
}
