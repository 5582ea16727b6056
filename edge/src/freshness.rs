//! How long a filled object may be served without asking upstream again: upstream
//! `Cache-Control` (`s-maxage`, `max-age`, `no-store`, `private`, `no-cache`) and `Expires`,
//! with per-kind overrides from config. Pure functions of the response head and the time.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

use crate::content_type::Kind;

/// The directives of a `Cache-Control` response header that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub private: bool,
    pub no_cache: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// Parses every `Cache-Control` field of a response; unknown or malformed directives are
/// ignored, as RFC 9111 asks.
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let (name, arg) = match part.trim().split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            let secs = || arg.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                "private" => d.private = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = secs().or(Some(0)),
                "s-maxage" => d.s_maxage = secs().or(Some(0)),
                "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                "stale-if-error" => d.stale_if_error = secs(),
                _ => {}
            }
        }
    }
    d
}

/// Per-kind lifetimes that override upstream's, from config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub manifest: Option<Duration>,
    pub segment: Option<Duration>,
    pub other: Option<Duration>,
    /// How long a 404 is remembered.
    pub negative: Duration,
}

/// Lifetimes used when upstream says nothing.
pub fn default_ttl(kind: Kind) -> Duration {
    match kind {
        Kind::Manifest => Duration::from_secs(2),
        Kind::Segment => Duration::from_secs(86_400),
        Kind::Other => Duration::from_secs(60),
    }
}

/// How long a response may be served from the cache, or `None` if it must not be stored.
/// Only 200 and 404 are stored (404 for the negative lifetime, unless upstream says
/// `no-store`: a chat media file not uploaded yet, which will be soon); errors never are.
pub fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    kind: Kind,
    overrides: &Overrides,
    now: SystemTime,
) -> Option<Duration> {
    if status == StatusCode::NOT_FOUND {
        let stored = !overrides.negative.is_zero() && !directives(headers).no_store;
        return stored.then_some(overrides.negative);
    }
    if status != StatusCode::OK {
        return None;
    }
    let d = directives(headers);
    if d.no_store || d.private {
        return None;
    }
    let configured = match kind {
        Kind::Manifest => overrides.manifest,
        Kind::Segment => overrides.segment,
        Kind::Other => overrides.other,
    };
    if let Some(ttl) = configured {
        return Some(ttl);
    }
    if d.no_cache {
        return Some(Duration::ZERO);
    }
    if let Some(secs) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(secs));
    }
    if let Some(expires) = headers
        .get(header::EXPIRES)
        .and_then(|v| v.to_str().ok())
        .map(|v| httpdate::parse_http_date(v).unwrap_or(SystemTime::UNIX_EPOCH))
    {
        return Some(expires.duration_since(now).unwrap_or(Duration::ZERO));
    }
    Some(default_ttl(kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(cc: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(cc).expect("hv"),
        );
        m
    }

    #[test]
    fn upstream_directives_decide_unless_overridden() {
        let o = Overrides {
            negative: Duration::from_secs(10),
            ..Default::default()
        };
        let now = SystemTime::now();
        let ok = StatusCode::OK;
        assert_eq!(
            lifetime(ok, &h("public, max-age=60"), Kind::Other, &o, now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime(ok, &h("max-age=60, s-maxage=5"), Kind::Other, &o, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(lifetime(ok, &h("no-store"), Kind::Segment, &o, now), None);
        assert_eq!(
            lifetime(ok, &h("private, max-age=9"), Kind::Segment, &o, now),
            None
        );
        assert_eq!(
            lifetime(ok, &h("no-cache"), Kind::Manifest, &o, now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(ok, &HeaderMap::new(), Kind::Manifest, &o, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            lifetime(
                StatusCode::NOT_FOUND,
                &h("max-age=999"),
                Kind::Segment,
                &o,
                now
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            lifetime(StatusCode::NOT_FOUND, &h("no-store"), Kind::Other, &o, now),
            None
        );
        assert_eq!(
            lifetime(
                StatusCode::BAD_GATEWAY,
                &h("max-age=999"),
                Kind::Segment,
                &o,
                now
            ),
            None
        );
        assert_eq!(
            lifetime(
                StatusCode::INTERNAL_SERVER_ERROR,
                &HeaderMap::new(),
                Kind::Segment,
                &o,
                now
            ),
            None
        );
        let o2 = Overrides {
            segment: Some(Duration::from_secs(7)),
            ..o.clone()
        };
        assert_eq!(
            lifetime(ok, &h("max-age=60"), Kind::Segment, &o2, now),
            Some(Duration::from_secs(7))
        );
        let mut e = HeaderMap::new();
        e.insert(
            header::EXPIRES,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(
            lifetime(ok, &e, Kind::Segment, &o, now),
            Some(Duration::ZERO)
        );
        e.insert(header::EXPIRES, HeaderValue::from_static("garbage"));
        assert_eq!(
            lifetime(ok, &e, Kind::Segment, &o, now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn stale_directives() {
        let d = directives(&h(
            "max-age=2, stale-while-revalidate=10, stale-if-error=\"600\"",
        ));
        assert_eq!(d.stale_while_revalidate, Some(10));
        assert_eq!(d.stale_if_error, Some(600));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "[ -~]{0,120}") {
            if let Ok(v) = HeaderValue::from_str(&s) {
                let mut m = HeaderMap::new();
                m.insert(header::CACHE_CONTROL, v.clone());
                m.insert(header::EXPIRES, v);
                let _ = lifetime(StatusCode::OK, &m, Kind::Segment, &Overrides::default(), SystemTime::now());
            }
        }
    }
}
