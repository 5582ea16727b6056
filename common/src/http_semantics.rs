//! The HTTP decisions the edge and the origin make alike about a representation they hold
//! (RFC 9110 §13 and §14): which conditional status a request gets, whether `If-Range` still
//! names the representation, and which part of it a `Range` header selects. Pure functions of
//! the request headers, the representation's validators and its length; the callers build
//! the responses.
//!
//! The range rules: one satisfiable range gives a part (206); several ranges, overlapping or
//! not, give the whole representation (200), which RFC 9110 §14.2 allows and which keeps a
//! many-range request from costing more than the file; a malformed header is ignored (200);
//! an unsatisfiable one, or more than [`MAX_RANGES`] ranges, gives 416.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, StatusCode, header};

/// The most ranges one `Range` header may hold; more give 416.
pub const MAX_RANGES: usize = 16;

/// What a representation is known by.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The strong entity tag, quotes included (`"abc"`).
    pub etag: &'a [u8],
    /// The modification time, when the representation has one (`Last-Modified`).
    pub modified: Option<SystemTime>,
}

/// What part of a representation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeChoice {
    /// All of it (200).
    Full,
    /// Bytes `first..=last` (206); always within the length it was chosen for.
    Part(u64, u64),
    /// 416, with `Content-Range: bytes */<length>`.
    Unsatisfiable,
}

/// Evaluates the conditional headers (RFC 9110 §13.2.2): `If-Match` and (without it)
/// `If-Unmodified-Since` give 412; `If-None-Match` and (without it) `If-Modified-Since` give
/// 304. Date conditions are ignored for a representation without a modification time.
pub fn precondition(h: &HeaderMap, v: &Validators<'_>) -> Option<StatusCode> {
    let modified = v.modified.map(whole_seconds);
    if let Some(im) = h.get(header::IF_MATCH) {
        if !etag_list_matches(im.as_bytes(), v.etag, false) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(ius), Some(modified)) =
        (http_date(h, header::IF_UNMODIFIED_SINCE), modified)
        && modified > ius
    {
        return Some(StatusCode::PRECONDITION_FAILED);
    }
    if let Some(inm) = h.get(header::IF_NONE_MATCH) {
        if etag_list_matches(inm.as_bytes(), v.etag, true) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(ims), Some(modified)) = (http_date(h, header::IF_MODIFIED_SINCE), modified)
        && modified <= ims
    {
        return Some(StatusCode::NOT_MODIFIED);
    }
    None
}

/// Whether an entity-tag list (`"a", W/"b"` or `*`) matches `etag`; `weak` allows `W/` tags
/// (the weak comparison of `If-None-Match`).
pub fn etag_list_matches(list: &[u8], etag: &[u8], weak: bool) -> bool {
    let Ok(list) = std::str::from_utf8(list) else {
        return false;
    };
    let Ok(etag) = std::str::from_utf8(etag) else {
        return false;
    };
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(opaque) => weak && opaque == etag,
            None => t == etag,
        }
    })
}

/// Whether `If-Range` is absent or names this representation: by its strong entity tag, or
/// by exactly its modification time (never, for a representation without one).
pub fn if_range_matches(h: &HeaderMap, v: &Validators<'_>) -> bool {
    let Some(if_range) = h.get(header::IF_RANGE) else {
        return true;
    };
    if if_range.as_bytes().starts_with(b"\"") {
        if_range.as_bytes() == v.etag
    } else {
        let date = if_range
            .to_str()
            .ok()
            .and_then(|t| httpdate::parse_http_date(t).ok());
        matches!((date, v.modified), (Some(d), Some(m)) if d == whole_seconds(m))
    }
}

/// The part of a representation of `len` bytes that the request selects: `If-Range` first,
/// then `Range` ([`select_range_of_len`]).
pub fn select_range(h: &HeaderMap, v: &Validators<'_>, len: u64) -> RangeChoice {
    if !if_range_matches(h, v) {
        return RangeChoice::Full;
    }
    select_range_of_len(h, len)
}

/// The range rules (see the module's documentation) for `len` bytes, without `If-Range`.
pub fn select_range_of_len(h: &HeaderMap, len: u64) -> RangeChoice {
    match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) => parse_range(range, len),
        None => RangeChoice::Full,
    }
}

/// The range rules for one `Range` header value and a representation of `len` bytes.
pub fn parse_range(range: &str, len: u64) -> RangeChoice {
    use http_range_header::{RangeRejected, RangeUnsatisfiableError as E};
    let max = std::num::NonZeroUsize::new(MAX_RANGES).unwrap_or(std::num::NonZeroUsize::MIN);
    let parsed = match http_range_header::parse_range_header_with_max_ranges(range, max) {
        Ok(p) => p,
        Err(E::Rejected(_)) | Err(E::Unsatisfiable) => return RangeChoice::Unsatisfiable,
        Err(_) => return RangeChoice::Full,
    };
    match parsed.validate(len) {
        Ok(ranges) => match ranges.as_slice() {
            [one] => RangeChoice::Part(*one.start(), *one.end()),
            _ => RangeChoice::Full,
        },
        Err(E::Invalid(_)) => RangeChoice::Full,
        // Several overlapping ranges: the whole representation, as for any several ranges.
        Err(E::Rejected(RangeRejected::TooManyOverlapping)) => RangeChoice::Full,
        Err(_) => RangeChoice::Unsatisfiable,
    }
}

fn http_date(h: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// HTTP dates have whole seconds: a time is compared with one at its second.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const ETAG: &[u8] = b"\"e\"";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn dated() -> Validators<'static> {
        Validators {
            etag: ETAG,
            modified: Some(at(10) + Duration::from_millis(300)),
        }
    }

    fn undated() -> Validators<'static> {
        Validators {
            etag: ETAG,
            modified: None,
        }
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        h
    }

    fn range(v: &str, len: u64) -> RangeChoice {
        select_range(&headers(&[(header::RANGE, v)]), &dated(), len)
    }

    #[test]
    fn etag_lists() {
        assert!(etag_list_matches(b"\"a\", \"b\"", b"\"b\"", false));
        assert!(etag_list_matches(b"W/\"b\"", b"\"b\"", true));
        assert!(!etag_list_matches(b"W/\"b\"", b"\"b\"", false));
        assert!(etag_list_matches(b"*", b"\"b\"", false));
        assert!(!etag_list_matches(b"\"c\"", b"\"b\"", true));
    }

    #[test]
    fn ranges() {
        use RangeChoice::*;
        assert_eq!(range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(range("bytes=-10", 100), Part(90, 99));
        assert_eq!(range("bytes=90-", 100), Part(90, 99));
        assert_eq!(range("bytes=50-500", 100), Part(50, 99));
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), Full);
        // Overlapping ranges too (they were 416, against the README).
        assert_eq!(range("bytes=0-10,5-20", 100), Full);
        assert_eq!(range("items=0-1", 100), Full);
        assert_eq!(range("bytes=5-1", 100), Full);
        let many = |n: usize| format!("bytes={}", vec!["0-0"; n].join(","));
        assert_eq!(range(&many(MAX_RANGES), 100), Full);
        assert_eq!(range(&many(MAX_RANGES + 1), 100), Unsatisfiable);
        assert_eq!(range(&many(1000), 100), Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Full);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn if_range_by_tag_and_by_date() {
        let with = |if_range: &str| {
            select_range(
                &headers(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, if_range)]),
                &dated(),
                100,
            )
        };
        assert_eq!(with("\"other\""), RangeChoice::Full);
        assert_eq!(with("\"e\""), RangeChoice::Part(0, 9));
        assert_eq!(with("W/\"e\""), RangeChoice::Full);
        assert_eq!(
            with("Thu, 01 Jan 1970 00:00:10 GMT"),
            RangeChoice::Part(0, 9)
        );
        assert_eq!(with("Thu, 01 Jan 1970 00:00:11 GMT"), RangeChoice::Full);
        // Without a modification time, a date never matches.
        let h = headers(&[
            (header::RANGE, "bytes=0-9"),
            (header::IF_RANGE, "Thu, 01 Jan 1970 00:00:10 GMT"),
        ]);
        assert_eq!(select_range(&h, &undated(), 100), RangeChoice::Full);
    }

    #[test]
    fn conditionals() {
        let inm = |v: &str| headers(&[(header::IF_NONE_MATCH, v)]);
        let ims = |v: &str| headers(&[(header::IF_MODIFIED_SINCE, v)]);
        assert_eq!(
            precondition(&inm("\"e\""), &dated()),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(
            precondition(&inm("W/\"e\""), &undated()),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(
            precondition(&ims("Thu, 01 Jan 1970 00:00:10 GMT"), &dated()),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(
            precondition(&ims("Thu, 01 Jan 1970 00:00:09 GMT"), &dated()),
            None
        );
        // Without a modification time the date conditions are ignored.
        assert_eq!(
            precondition(&ims("Thu, 01 Jan 1970 00:00:10 GMT"), &undated()),
            None
        );
        // If-None-Match wins over If-Modified-Since.
        let both = headers(&[
            (header::IF_NONE_MATCH, "\"x\""),
            (header::IF_MODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:10 GMT"),
        ]);
        assert_eq!(precondition(&both, &dated()), None);
        assert_eq!(
            precondition(&headers(&[(header::IF_MATCH, "\"x\"")]), &dated()),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(
            precondition(
                &headers(&[(header::IF_UNMODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:09 GMT")]),
                &dated()
            ),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(precondition(&HeaderMap::new(), &dated()), None);
    }

    proptest! {
        #[test]
        fn range_selection_never_panics_and_stays_in_bounds(v in "\\PC{0,60}", len in 0u64..300) {
            let choice = parse_range(&v, len);
            if let RangeChoice::Part(s, e) = choice {
                prop_assert!(s <= e && e < len);
            }
        }

        #[test]
        fn byte_ranges_are_in_bounds(a in 0u64..400, b in 0u64..400, len in 1u64..300) {
            match parse_range(&format!("bytes={a}-{b}"), len) {
                RangeChoice::Part(s, e) => {
                    prop_assert_eq!(s, a);
                    prop_assert_eq!(e, b.min(len - 1));
                }
                RangeChoice::Unsatisfiable => prop_assert!(a >= len),
                RangeChoice::Full => prop_assert!(a > b),
            }
        }

        #[test]
        fn suffix_ranges_take_the_end(n in 1u64..400, len in 1u64..300) {
            prop_assert_eq!(
                parse_range(&format!("bytes=-{n}"), len),
                RangeChoice::Part(len.saturating_sub(n), len - 1)
            );
        }

        /// Up to MAX_RANGES disjoint satisfiable ranges are answered whole; more are refused.
        #[test]
        fn several_ranges_are_whole_or_refused(n in 2usize..40) {
            let text = format!(
                "bytes={}",
                (0..n).map(|i| format!("{}-{}", 2 * i, 2 * i)).collect::<Vec<_>>().join(",")
            );
            let want = if n <= MAX_RANGES { RangeChoice::Full } else { RangeChoice::Unsatisfiable };
            prop_assert_eq!(parse_range(&text, 1000), want);
        }

        /// A matching strong tag in If-None-Match always gives 304, whatever the dates say;
        /// a list that does not name the tag never does.
        #[test]
        fn if_none_match_decides_before_dates(tag in "[a-z0-9]{1,8}", ims in 0u64..30) {
            let date = httpdate::fmt_http_date(at(ims));
            let etag = format!("\"{tag}\"");
            let v = Validators { etag: etag.as_bytes(), modified: Some(at(10)) };
            let hit = headers(&[(header::IF_NONE_MATCH, &etag), (header::IF_MODIFIED_SINCE, &date)]);
            prop_assert_eq!(precondition(&hit, &v), Some(StatusCode::NOT_MODIFIED));
            let miss = headers(&[(header::IF_NONE_MATCH, "\"-\""), (header::IF_MODIFIED_SINCE, &date)]);
            prop_assert_eq!(precondition(&miss, &v), None);
        }
    }
}
