//! The request planner: what the edge does with a request for a path the store does not
//! hold, as pure functions of the cached entry's metadata, the request, the policy and the
//! time. `handler.rs` carries the decisions out; nothing here does IO or reads a clock.
//!
//! A request goes through up to three decisions:
//! 1. [`plan`] (before any fill): **fresh** (answer from the cache), **stale while
//!    revalidate** (answer from the cache and refresh it in the background), or **fill**
//!    (join the fill in flight or start one; a conditional one, **revalidate**, when an
//!    expired copy is at hand).
//! 2. [`respond_to_fill`] (once the fill's head is known): **respond** by streaming the fill
//!    (whole or a range, as the bytes arrive), walking a sliced object, answering 416, or
//!    waiting for the whole verified body (conditionals and other statuses).
//! 3. [`on_fill_error`] (when the fill failed): **stale if error** (answer with the expired
//!    copy and a `Warning`) or an error status (504 for a timeout, 502 otherwise).

use http::{HeaderMap, Method, StatusCode, header};

use crate::cache::CachedObject;
use crate::fill::FillError;

/// What to do before any fill, given the cached entry (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Fresh: answer from the cache (`X-Cache: HIT`).
    Fresh,
    /// Expired but within `stale-while-revalidate`: answer from the cache (`STALE`) and start
    /// a background refresh.
    StaleWhileRevalidate,
    /// Join (or start) the fill of the path. `revalidate`: an expired copy is at hand, so the
    /// fill asks upstream conditionally and may fall back on it ([`on_fill_error`]).
    Fill { revalidate: bool },
}

/// Decides between the cache and a fill. `now` is in unix seconds.
pub fn plan(cached: Option<&CachedObject>, now: u64) -> Plan {
    match cached {
        Some(o) if o.is_fresh(now) => Plan::Fresh,
        Some(o)
            if o.status == 200 && now < o.fresh_until.saturating_add(o.stale_while_revalidate) =>
        {
            Plan::StaleWhileRevalidate
        }
        Some(_) => Plan::Fill { revalidate: true },
        None => Plan::Fill { revalidate: false },
    }
}

/// The facts of a request that decide how a fill answers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub get: bool,
    pub range: bool,
    pub if_range: bool,
    pub if_none_match: bool,
}

impl RequestFacts {
    /// Reads them from the request head.
    pub fn of(method: &Method, headers: &HeaderMap) -> Self {
        Self {
            get: *method == Method::GET,
            range: headers.contains_key(header::RANGE),
            if_range: headers.contains_key(header::IF_RANGE),
            if_none_match: headers.contains_key(header::IF_NONE_MATCH),
        }
    }
}

/// The facts of a fill's response head that decide how a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadFacts {
    pub status: StatusCode,
    pub content_length: Option<u64>,
    /// The fill learned (or refreshed) the index of a sliced object.
    pub sliced: bool,
}

/// How to answer a request from a fill whose head is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillAnswer {
    /// Walk the sliced object's slices (the range asked for, or all of them).
    Sliced,
    /// 416 with `Content-Range: bytes */total`.
    Unsatisfiable { total: u64 },
    /// Stream the whole body as it arrives.
    Stream,
    /// Stream the byte range the `Range` header selects from a body of `len` bytes (the
    /// handler applies the range rules; an unsatisfiable range waits for the whole body).
    StreamRange { len: u64 },
    /// Wait for the whole verified body, then answer with the file rules (conditionals,
    /// ranges, HEAD, statuses other than 200).
    Whole,
}

/// Decides how a request is answered from a fill, once its head is known.
pub fn respond_to_fill(head: HeadFacts, req: RequestFacts) -> FillAnswer {
    if head.sliced {
        return FillAnswer::Sliced;
    }
    if head.status == StatusCode::RANGE_NOT_SATISFIABLE {
        return FillAnswer::Unsatisfiable {
            total: head.content_length.unwrap_or(0),
        };
    }
    if head.status != StatusCode::OK || !req.get || req.if_none_match {
        return FillAnswer::Whole;
    }
    match (req.range, req.if_range, head.content_length) {
        (false, _, _) => FillAnswer::Stream,
        (true, false, Some(len)) => FillAnswer::StreamRange { len },
        _ => FillAnswer::Whole,
    }
}

/// What to answer when a fill failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer with the expired copy (`STALE`, `Warning: 111`).
    ServeStale,
    /// Answer with this status and text.
    Respond(StatusCode, &'static str),
}

/// Decides between the expired copy (within its `stale-if-error`, or the configured floor
/// `stale_if_error`, in seconds) and an error status. `now` is in unix seconds.
pub fn on_fill_error(
    stale: Option<&CachedObject>,
    error: FillError,
    stale_if_error: u64,
    now: u64,
) -> OnError {
    if stale.is_some_and(|o| {
        o.status == 200
            && now
                < o.fresh_until
                    .saturating_add(o.stale_if_error.max(stale_if_error))
    }) {
        return OnError::ServeStale;
    }
    match error {
        FillError::Timeout => OnError::Respond(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
        // A path the edge cannot forward: the client's request, not the upstream.
        FillError::Request => OnError::Respond(StatusCode::BAD_REQUEST, "bad path\n"),
        _ => OnError::Respond(StatusCode::BAD_GATEWAY, "upstream unavailable\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(status: u16, fresh_until: u64, swr: u64, sie: u64) -> CachedObject {
        CachedObject {
            status,
            content_type: String::new(),
            upstream_etag: "\"v1\"".into(),
            last_modified: String::new(),
            stored_at: 100,
            fresh_until,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            sha256: [0; 32],
            slicing: Default::default(),
            body: Default::default(),
            prepared: Default::default(),
        }
    }

    #[test]
    fn fresh_then_stale_while_revalidate_then_revalidate() {
        let o = object(200, 110, 5, 0);
        assert_eq!(plan(None, 100), Plan::Fill { revalidate: false });
        assert_eq!(plan(Some(&o), 100), Plan::Fresh);
        assert_eq!(plan(Some(&o), 109), Plan::Fresh);
        // The TTL has run out: stale while revalidate for five seconds, then a conditional
        // fill.
        assert_eq!(plan(Some(&o), 110), Plan::StaleWhileRevalidate);
        assert_eq!(plan(Some(&o), 114), Plan::StaleWhileRevalidate);
        assert_eq!(plan(Some(&o), 115), Plan::Fill { revalidate: true });
        // A remembered 404 is never served stale.
        let missing = object(404, 110, 5, 0);
        assert_eq!(plan(Some(&missing), 111), Plan::Fill { revalidate: true });
    }

    #[test]
    fn stale_if_error_uses_the_longer_window_and_only_for_200() {
        let o = object(200, 110, 0, 10);
        let e = FillError::Unavailable;
        assert_eq!(on_fill_error(Some(&o), e, 0, 119), OnError::ServeStale);
        assert_eq!(
            on_fill_error(Some(&o), e, 0, 120),
            OnError::Respond(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
        );
        assert_eq!(on_fill_error(Some(&o), e, 60, 169), OnError::ServeStale);
        let missing = object(404, 110, 0, 10);
        assert!(matches!(
            on_fill_error(Some(&missing), e, 60, 111),
            OnError::Respond(StatusCode::BAD_GATEWAY, _)
        ));
    }

    #[test]
    fn a_timeout_is_a_504_and_a_bad_target_a_400() {
        assert!(matches!(
            on_fill_error(None, FillError::Timeout, 0, 0),
            OnError::Respond(StatusCode::GATEWAY_TIMEOUT, _)
        ));
        assert!(matches!(
            on_fill_error(None, FillError::Request, 0, 0),
            OnError::Respond(StatusCode::BAD_REQUEST, _)
        ));
        for e in [
            FillError::Unavailable,
            FillError::Integrity,
            FillError::Truncated,
            FillError::Changed,
        ] {
            assert!(matches!(
                on_fill_error(None, e, 0, 0),
                OnError::Respond(StatusCode::BAD_GATEWAY, _)
            ));
        }
    }

    #[test]
    fn how_a_fill_answers() {
        let ok = |len| HeadFacts {
            status: StatusCode::OK,
            content_length: len,
            sliced: false,
        };
        let get = RequestFacts {
            get: true,
            ..Default::default()
        };
        let range = RequestFacts { range: true, ..get };
        assert_eq!(respond_to_fill(ok(Some(9)), get), FillAnswer::Stream);
        assert_eq!(respond_to_fill(ok(None), get), FillAnswer::Stream);
        assert_eq!(
            respond_to_fill(ok(Some(9)), range),
            FillAnswer::StreamRange { len: 9 }
        );
        // A range of unknown length, If-Range, a conditional or a HEAD wait for the body.
        assert_eq!(respond_to_fill(ok(None), range), FillAnswer::Whole);
        let if_range = RequestFacts {
            if_range: true,
            ..range
        };
        assert_eq!(respond_to_fill(ok(Some(9)), if_range), FillAnswer::Whole);
        let inm = RequestFacts {
            if_none_match: true,
            ..get
        };
        assert_eq!(respond_to_fill(ok(Some(9)), inm), FillAnswer::Whole);
        assert_eq!(
            respond_to_fill(ok(Some(9)), RequestFacts::default()),
            FillAnswer::Whole
        );
        let not_found = HeadFacts {
            status: StatusCode::NOT_FOUND,
            ..ok(Some(3))
        };
        assert_eq!(respond_to_fill(not_found, get), FillAnswer::Whole);
        let unsatisfiable = HeadFacts {
            status: StatusCode::RANGE_NOT_SATISFIABLE,
            ..ok(Some(77))
        };
        assert_eq!(
            respond_to_fill(unsatisfiable, range),
            FillAnswer::Unsatisfiable { total: 77 }
        );
        let sliced = HeadFacts {
            sliced: true,
            ..ok(Some(1 << 30))
        };
        assert_eq!(respond_to_fill(sliced, inm), FillAnswer::Sliced);
    }
}
