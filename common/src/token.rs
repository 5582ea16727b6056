//! The signed-URL token format shared by every program that mints or checks tokens.
//!
//! A token is `name=value` fields joined by `~`:
//! `exp=<unix seconds>~acl=<patterns>~kid=<key id>[~st=<unix seconds>][~ip=<addr or CIDR>]~hmac=<64 lowercase hex>`.
//! The hmac is HMAC-SHA256, keyed with the hex-decoded secret of key `kid`, over the exact
//! text before `~hmac=`. `acl` holds one or more path patterns separated by `!`; a pattern
//! that ends in `*` matches every path with that prefix, any other must equal the path.
//!
//! Verification is a pure function of the token text, the key set, the request path, the
//! client address and the current time, so it is tested without clocks or sockets.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The longest token text accepted, in bytes; longer ones are malformed.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token was refused. Each reason is counted and logged under [`Rejection::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("no token was presented")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token names an unknown key id")]
    UnknownKid,
    #[error("the token's hmac does not match")]
    BadHmac,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the path is outside the token's acl")]
    OutsideAcl,
    #[error("the client address does not match the token")]
    IpMismatch,
    #[error("the token expires further ahead than the longest lifetime accepted")]
    LifetimeTooLong,
}

impl Rejection {
    /// Every reason, in a stable order (for metrics that pre-register one series per reason).
    pub const ALL: [Rejection; 9] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::UnknownKid,
        Rejection::BadHmac,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::OutsideAcl,
        Rejection::IpMismatch,
        Rejection::LifetimeTooLong,
    ];

    /// The short label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::BadHmac => "bad_hmac",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::OutsideAcl => "outside_acl",
            Rejection::IpMismatch => "ip_mismatch",
            Rejection::LifetimeTooLong => "lifetime_too_long",
        }
    }
}

/// The parsed fields of a token, before its hmac is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// Expiry, unix seconds: the token is valid while `now < exp`.
    pub exp: u64,
    /// Start of validity, unix seconds, if any.
    pub st: Option<u64>,
    /// The raw acl text: patterns separated by `!`.
    pub acl: &'a str,
    /// The key id.
    pub kid: &'a str,
    /// The network the client must be in, if any.
    pub ip: Option<IpNet>,
    /// The signed text: everything before `~hmac=`.
    pub signed_text: &'a str,
    /// The 32-byte MAC decoded from the token.
    pub mac: [u8; 32],
}

/// Parses a token without checking its MAC. Field order is free, except that `hmac` is last;
/// unknown, duplicate or missing required fields make it malformed.
pub fn parse(text: &str) -> Result<Token<'_>, Rejection> {
    if text.is_empty() || text.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Malformed);
    }
    let (signed_text, hex_mac) = text.rsplit_once("~hmac=").ok_or(Rejection::Malformed)?;
    if hex_mac.len() != 64
        || !hex_mac
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Rejection::Malformed);
    }
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hex_mac, &mut mac).map_err(|_| Rejection::Malformed)?;

    let (mut exp, mut st, mut acl, mut kid, mut ip) = (None, None, None, None, None);
    for field in signed_text.split('~') {
        let (name, value) = field.split_once('=').ok_or(Rejection::Malformed)?;
        let duplicate = match name {
            "exp" => exp.replace(parse_unix_seconds(value)?).is_some(),
            "st" => st.replace(parse_unix_seconds(value)?).is_some(),
            "acl" => acl.replace(parse_acl(value)?).is_some(),
            "kid" if !value.is_empty() => kid.replace(value).is_some(),
            "ip" => ip.replace(parse_ip(value)?).is_some(),
            _ => return Err(Rejection::Malformed),
        };
        if duplicate {
            return Err(Rejection::Malformed);
        }
    }
    Ok(Token {
        exp: exp.ok_or(Rejection::Malformed)?,
        st,
        acl: acl.ok_or(Rejection::Malformed)?,
        kid: kid.ok_or(Rejection::Malformed)?,
        ip,
        signed_text,
        mac,
    })
}

fn parse_unix_seconds(value: &str) -> Result<u64, Rejection> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    value.parse().map_err(|_| Rejection::Malformed)
}

fn parse_acl(value: &str) -> Result<&str, Rejection> {
    if value.is_empty() || value.split('!').any(|p| !p.starts_with('/')) {
        return Err(Rejection::Malformed);
    }
    Ok(value)
}

fn parse_ip(value: &str) -> Result<IpNet, Rejection> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| Rejection::Malformed)
}

/// Whether `path` (decoded and normalized) is covered by one of the acl's patterns.
pub fn acl_allows(acl: &str, path: &str) -> bool {
    acl.split('!')
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == pattern,
        })
}

/// The secrets that tokens may be signed with, by key id. Several keys are valid at once so
/// that keys can be rotated without refusing tokens already handed out.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs; only the key ids do.
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

/// A key secret that is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the secret is not hex: {0}")]
    NotHex(#[from] hex::FromHexError),
    #[error("the secret is {0} bytes long; use at least 16 bytes (32 hex digits)")]
    TooShort(usize),
    #[error("{}", crate::key_id::RULE)]
    BadKeyId,
}

/// Decodes a hex secret and checks that it is long enough to be a key.
pub fn decode_secret(hex_secret: &str) -> Result<Vec<u8>, KeyError> {
    let secret = hex::decode(hex_secret.trim())?;
    if secret.len() < 16 {
        return Err(KeyError::TooShort(secret.len()));
    }
    Ok(secret)
}

impl KeySet {
    /// Builds a key set from key ids and hex secrets.
    pub fn from_hex<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, (String, KeyError)> {
        let mut set = KeySet::default();
        for (kid, hex_secret) in keys {
            if !crate::key_id::valid(kid) {
                return Err((kid.to_owned(), KeyError::BadKeyId));
            }
            let secret = decode_secret(hex_secret).map_err(|e| (kid.to_owned(), e))?;
            set.keys.insert(kid.to_owned(), secret);
        }
        Ok(set)
    }

    /// Builds a key set from a config table of key ids and hex secrets; the error names
    /// the key as `<table>.<kid>`.
    pub fn from_config(
        keys: &std::collections::BTreeMap<String, String>,
        table: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        Self::from_hex(keys.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|(kid, e)| {
            crate::config::ConfigError::new(format!("{table}.{kid}"), e.to_string())
        })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a request looks like to the token check.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The decoded, normalized request path (without a `/t/<token>` prefix).
    pub path: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The current time in unix seconds.
    pub now: u64,
    /// The longest accepted time from `now` until the token's `exp`, in seconds (`None`: no
    /// limit). A token valid for longer than anyone would mint it is refused: `exp` = 2^64-1
    /// would otherwise be a token that never expires.
    pub max_ttl: Option<u64>,
}

/// Checks a token for a request: format, key, MAC (in constant time), time window, acl, address.
pub fn verify(text: &str, keys: &KeySet, request: Request<'_>) -> Result<(), Rejection> {
    let token = parse(text)?;
    let secret = keys.keys.get(token.kid).ok_or(Rejection::UnknownKid)?;
    let expected = mac(secret, token.signed_text);
    if !bool::from(expected.ct_eq(&token.mac)) {
        return Err(Rejection::BadHmac);
    }
    if request.now >= token.exp {
        return Err(Rejection::Expired);
    }
    if token.st.is_some_and(|st| request.now < st) {
        return Err(Rejection::NotYetValid);
    }
    if request
        .max_ttl
        .is_some_and(|max| token.exp - request.now > max)
    {
        return Err(Rejection::LifetimeTooLong);
    }
    if !acl_allows(token.acl, request.path) {
        return Err(Rejection::OutsideAcl);
    }
    if let Some(net) = token.ip {
        let client = canonical_ip(request.client);
        if !net.contains(&client) {
            return Err(Rejection::IpMismatch);
        }
    }
    Ok(())
}

/// Maps IPv4-mapped IPv6 addresses (from dual-stack sockets) to IPv4 so that v4 CIDRs match
/// (a token's IP binding here, steering's coverage map and client subnets there).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn mac(secret: &[u8], text: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().into()
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct Claims {
    pub kid: String,
    pub acl: String,
    pub exp: u64,
    pub st: Option<u64>,
    pub ip: Option<IpNet>,
}

/// Mints a token for `claims` with `secret`, in the canonical field order.
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let mut text = format!("exp={}~acl={}~kid={}", claims.exp, claims.acl, claims.kid);
    if let Some(st) = claims.st {
        let _ = write!(text, "~st={st}");
    }
    if let Some(ip) = claims.ip {
        let _ = write!(text, "~ip={ip}");
    }
    let digest = mac(secret, &text);
    let _ = write!(text, "~hmac={}", hex::encode(digest));
    text
}

/// The name of the query parameter that carries a token.
pub const QUERY_PARAM: &str = "token";
/// The name of the cookie that carries a token.
pub const COOKIE_NAME: &str = "estuary_token";
/// The first path segment that marks a path-form token: `/t/<base64url token>/<real path>`.
pub const PATH_PREFIX: &str = "/t/";

/// The path form of a token: `/t/<base64url, no padding>`, to be put in front of a path.
pub fn path_prefix(token: &str) -> String {
    format!(
        "{PATH_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    )
}

/// Decodes the base64url segment of a path-form token.
pub fn decode_path_segment(segment: &str) -> Result<String, Rejection> {
    if segment.len() > MAX_TOKEN_LEN * 4 / 3 + 4 {
        return Err(Rejection::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed)?;
    String::from_utf8(bytes).map_err(|_| Rejection::Malformed)
}

/// The query form of a token: `token=<percent-encoded token>`.
pub fn query_pair(token: &str) -> String {
    format!(
        "{QUERY_PARAM}={}",
        percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// The longest lifetime a fill credential may claim, in seconds: peers mint them per request
/// with a short life ([`sign_fill`]), so a longer one is not a peer's.
pub const MAX_FILL_CREDENTIAL_SECS: u64 = 300;

/// The credential a fill from another Estuary node carries (the value of its fill header):
/// `node=<id>~exp=<unix seconds>~kid=<key id>~hmac=<hex>`, the HMAC-SHA256 with key `kid` over
/// `fill\n<path>\n` and the text before `~hmac=`. The `fill` prefix and the path make it
/// mean nothing as a playback token (whose MAC input starts with `exp=`), and a playback
/// token nothing as a credential: a client that holds a token cannot pose as a peer.
/// `path` is the canonical path being filled.
pub fn sign_fill(kid: &str, secret: &[u8], node: &str, path: &str, exp: u64) -> String {
    let text = format!("node={node}~exp={exp}~kid={kid}");
    let digest = mac(secret, &format!("fill\n{path}\n{text}"));
    format!("{text}~hmac={}", hex::encode(digest))
}

/// Whether `text` is a fill credential ([`sign_fill`]) for `path`, signed with a key of `keys`,
/// not expired at `now` and living no longer than [`MAX_FILL_CREDENTIAL_SECS`]. Pure.
pub fn verify_fill(text: &str, keys: &KeySet, path: &str, now: u64) -> bool {
    if text.len() > MAX_TOKEN_LEN {
        return false;
    }
    let Some((signed_text, hex_mac)) = text.rsplit_once("~hmac=") else {
        return false;
    };
    let mut given = [0u8; 32];
    if hex_mac.len() != 64 || hex::decode_to_slice(hex_mac, &mut given).is_err() {
        return false;
    }
    let mut fields = signed_text.split('~');
    let (Some(node), Some(exp), Some(kid), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let (Some(_), Some(exp), Some(kid)) = (
        node.strip_prefix("node="),
        exp.strip_prefix("exp=")
            .and_then(|e| parse_unix_seconds(e).ok()),
        kid.strip_prefix("kid="),
    ) else {
        return false;
    };
    let Some(secret) = keys.keys.get(kid) else {
        return false;
    };
    let expected = mac(secret, &format!("fill\n{path}\n{signed_text}"));
    bool::from(expected.ct_eq(&given)) && now < exp && exp - now <= MAX_FILL_CREDENTIAL_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn keys() -> KeySet {
        KeySet::from_hex([("k1", SECRET_HEX)]).expect("valid key")
    }

    fn claims() -> Claims {
        Claims {
            kid: "k1".into(),
            acl: "/v/abc/*".into(),
            exp: 2000,
            st: None,
            ip: None,
        }
    }

    fn req(path: &str, now: u64) -> Request<'_> {
        Request {
            path,
            client: "192.0.2.7".parse().expect("ip"),
            now,
            max_ttl: None,
        }
    }

    fn signed(c: &Claims) -> String {
        sign(c, &decode_secret(SECRET_HEX).expect("secret"))
    }

    #[test]
    fn fill_credentials() {
        let secret = decode_secret(SECRET_HEX).expect("secret");
        let c = sign_fill("k1", &secret, "edge-1", "/v/a b/x.m4s", 1060);
        assert!(c.starts_with("node=edge-1~exp=1060~kid=k1~hmac="));
        assert!(verify_fill(&c, &keys(), "/v/a b/x.m4s", 1000));
        // Another path, expired, too long-lived, unknown key, altered text: refused.
        assert!(!verify_fill(&c, &keys(), "/v/a b/y.m4s", 1000));
        assert!(!verify_fill(&c, &keys(), "/v/a b/x.m4s", 1060));
        let long = sign_fill(
            "k1",
            &secret,
            "edge-1",
            "/x",
            1000 + MAX_FILL_CREDENTIAL_SECS + 1,
        );
        assert!(!verify_fill(&long, &keys(), "/x", 1000));
        let other = KeySet::from_hex([("k2", SECRET_HEX)]).expect("key");
        assert!(!verify_fill(&c, &other, "/v/a b/x.m4s", 1000));
        let altered = c.replace("edge-1", "edge-2");
        assert!(!verify_fill(&altered, &keys(), "/v/a b/x.m4s", 1000));
        assert!(!verify_fill("edge-test", &keys(), "/v/a b/x.m4s", 1000));
        // A playback token for the path is not a credential, whatever its acl.
        let token = signed(&Claims {
            acl: "/*".into(),
            exp: 1060,
            ..claims()
        });
        assert!(!verify_fill(&token, &keys(), "/v/a b/x.m4s", 1000));
    }

    #[test]
    fn a_signed_token_verifies() {
        let t = signed(&claims());
        assert!(t.starts_with("exp=2000~acl=/v/abc/*~kid=k1~hmac="));
        assert_eq!(verify(&t, &keys(), req("/v/abc/x.m4s", 1000)), Ok(()));
    }

    #[test]
    fn every_rejection_reason() {
        let k = keys();
        let t = signed(&claims());
        assert_eq!(
            verify(&t, &k, req("/v/abc/x", 2000)),
            Err(Rejection::Expired)
        );
        assert_eq!(
            verify(&t, &k, req("/v/abd/x", 10)),
            Err(Rejection::OutsideAcl)
        );
        let mut c = claims();
        c.st = Some(500);
        assert_eq!(
            verify(&signed(&c), &k, req("/v/abc/x", 499)),
            Err(Rejection::NotYetValid)
        );
        // exp - now against the longest lifetime: 1000 s left with 999 accepted, then 1000.
        let limited = |max| Request {
            max_ttl: Some(max),
            ..req("/v/abc/x", 1000)
        };
        assert_eq!(
            verify(&t, &k, limited(999)),
            Err(Rejection::LifetimeTooLong)
        );
        assert_eq!(verify(&t, &k, limited(1000)), Ok(()));
        let forever = signed(&Claims {
            exp: u64::MAX,
            ..claims()
        });
        assert_eq!(
            verify(&forever, &k, limited(7 * 86_400)),
            Err(Rejection::LifetimeTooLong)
        );
        let mut c = claims();
        c.ip = Some("198.51.100.0/24".parse().expect("net"));
        assert_eq!(
            verify(&signed(&c), &k, req("/v/abc/x", 10)),
            Err(Rejection::IpMismatch)
        );
        let mut c = claims();
        c.kid = "k2".into();
        assert_eq!(
            verify(&signed(&c), &k, req("/v/abc/x", 10)),
            Err(Rejection::UnknownKid)
        );
        let tampered = t.replace("exp=2000", "exp=9000");
        assert_eq!(
            verify(&tampered, &k, req("/v/abc/x", 10)),
            Err(Rejection::BadHmac)
        );
        assert_eq!(
            verify("garbage", &k, req("/v/abc/x", 10)),
            Err(Rejection::Malformed)
        );
        let upper = format!("{}{}", &t[..t.len() - 64], t[t.len() - 64..].to_uppercase());
        assert_eq!(
            verify(&upper, &k, req("/v/abc/x", 10)),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn acl_patterns() {
        assert!(acl_allows("/v/a/*", "/v/a/b/c"));
        assert!(!acl_allows("/v/a/*", "/v/ab"));
        assert!(acl_allows("/v/a/m.m3u8!/v/b/*", "/v/a/m.m3u8"));
        assert!(acl_allows("/v/a/m.m3u8!/v/b/*", "/v/b/x"));
        assert!(!acl_allows("/v/a/m.m3u8", "/v/a/m.m3u8x"));
    }

    #[test]
    fn ipv4_mapped_clients_match_v4_networks() {
        let mut c = claims();
        c.ip = Some("192.0.2.0/24".parse().expect("net"));
        let t = signed(&c);
        let r = Request {
            path: "/v/abc/x",
            client: "::ffff:192.0.2.9".parse().expect("ip"),
            now: 1,
            max_ttl: None,
        };
        assert_eq!(verify(&t, &keys(), r), Ok(()));
    }

    #[test]
    fn path_form_round_trips() {
        let t = signed(&claims());
        let prefix = path_prefix(&t);
        let seg = prefix.strip_prefix(PATH_PREFIX).expect("prefix");
        assert!(!seg.contains(['/', '=', '+']));
        assert_eq!(decode_path_segment(seg).expect("decodes"), t);
    }

    #[test]
    fn duplicate_and_unknown_fields_are_malformed() {
        let secret = decode_secret(SECRET_HEX).expect("secret");
        for body in [
            "exp=5~exp=6~acl=/a~kid=k1",
            "exp=5~acl=/a~kid=k1~foo=1",
            "exp=5~acl=a~kid=k1",
            "acl=/a~kid=k1",
            "exp=-5~acl=/a~kid=k1",
            "exp=5~acl=/a~kid=",
        ] {
            let t = format!("{body}~hmac={}", hex::encode(mac(&secret, body)));
            assert_eq!(parse(&t), Err(Rejection::Malformed), "{body}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s);
            let _ = verify(&s, &keys(), req("/v/abc/x", 5));
            let _ = decode_path_segment(&s);
        }

        #[test]
        fn structured_garbage_never_panics(
            exp in "[0-9]{0,25}", acl in "[/a-z*!]{0,20}", kid in "[a-z0-9=~]{0,5}",
            ip in "[0-9a-f.:/]{0,20}", mac in "[0-9a-fA-F]{60,68}")
        {
            let t = format!("exp={exp}~acl={acl}~kid={kid}~ip={ip}~hmac={mac}");
            let _ = verify(&t, &keys(), req("/v/abc/x", 5));
        }

        #[test]
        fn fill_credentials_never_panic(text in "\\PC{0,200}", path in "/[a-z]{0,8}") {
            let _ = verify_fill(&text, &keys(), &path, 5);
        }

        #[test]
        fn any_signed_claims_verify(exp in 1u64..u64::MAX, path in "/[a-z0-9/._-]{0,40}") {
            let c = Claims { kid: "k1".into(), acl: format!("{path}*"), exp, st: None, ip: None };
            let t = signed(&c);
            proptest::prop_assert_eq!(verify(&t, &keys(), req(&path, exp - 1)), Ok(()));
        }
    }
}
