//! Key ids: the names token secrets (an edge's `[auth.keys]`, steering's `[tokens] kid`,
//! `estuary token sign --key-id`) and manifest signing keys (`[signing] key_id`,
//! `[manifest_keys]`) are configured and carried under. One rule for both: short, printable,
//! and free of the token's separators (`~`, `=`, `!`), so an id can stand in a token, a URL
//! and a config key as it is. Pure.

/// The rule, as config errors and the CLI state it.
pub const RULE: &str = "a key id is 1 to 32 of A-Z a-z 0-9 - _ .";

/// Whether `id` is a key id: 1 to 32 of `A-Z a-z 0-9 - _ .`.
pub fn valid(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_ids() {
        for good in ["k1", "origin-1", "edge_2026.a", &"k".repeat(32)] {
            assert!(valid(good), "{good}");
        }
        for bad in ["", "k~1", "k=1", "k!1", "k 1", "k/1", "ké", &"k".repeat(33)] {
            assert!(!valid(bad), "{bad}");
        }
    }

    proptest! {
        /// A valid key id survives a token: what is signed under it parses back to it.
        #[test]
        fn a_valid_key_id_round_trips_through_a_token(id in "\\PC{0,40}") {
            if valid(&id) {
                let claims = crate::token::Claims {
                    kid: id.clone(),
                    acl: "/v/*".into(),
                    exp: 10,
                    st: None,
                    ip: None,
                };
                let text = crate::token::sign(&claims, &[7; 16]);
                let token = crate::token::parse(&text);
                prop_assert!(token.is_ok());
                if let Ok(token) = token {
                    prop_assert_eq!(token.kid, id.as_str());
                }
            }
        }
    }
}
