//! RFC 9530 integrity fields: `Content-Digest` and `Repr-Digest` with `sha-256`, as sent by
//! upstreams, checked by the edge before a filled object counts as cached.

use base64::Engine as _;

/// The sha-256 value of a `Content-Digest`/`Repr-Digest` field (a structured-field dictionary
/// such as `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:...:`), if the
/// field holds one that is well formed. Other algorithms are ignored.
pub fn sha256_of_field(value: &str) -> Option<[u8; 32]> {
    if value.len() > 4096 {
        return None;
    }
    for member in value.split(',') {
        let Some((name, rest)) = member.trim().split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let b64 = rest.trim().strip_prefix(':')?.strip_suffix(':')?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return bytes.try_into().ok();
    }
    None
}

/// Formats a sha-256 digest as a `Content-Digest` field value.
pub fn field_of_sha256(digest: &[u8; 32]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_9530_examples() {
        // The digest of `{"hello": "world"}` from RFC 9530, appendix.
        let d = sha256_of_field("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")
            .expect("parses");
        assert_eq!(
            field_of_sha256(&d),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        let both = "sha-512=:YMAam51Jz/jOATT6/zvHrLVgOYTGFy1d6GJiOHTohq4yP+pgk4vf2aCsyRZOtw8MjkM7iw7yZ/WkppmM44T3qg==:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        assert_eq!(sha256_of_field(both), Some(d));
        assert_eq!(sha256_of_field("sha-256=:short:"), None);
        assert_eq!(
            sha256_of_field("sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="),
            None
        );
        assert_eq!(sha256_of_field("md5=:abc:"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = sha256_of_field(&s);
        }
    }
}
