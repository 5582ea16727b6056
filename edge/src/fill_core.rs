//! The fill as a state machine without IO (the quinn-proto / str0m shape): `fill.rs` feeds it
//! what upstream did ([`Input`]) with the time, and carries out what it asks for
//! ([`Action`]); it never touches a socket, a clock, the cache or a lock.
//!
//! States, for each source tried in order (the candidates the breakers let through):
//! - **requesting**: [`Action::Send`] went out; waiting for the response head. Inputs:
//!   [`Input::Head`], [`Input::Failed`] (connect error, timeout, an unbuildable target).
//! - **receiving**: the head was classified (whole object, one slice, a 304 refresh or a 416
//!   answered at once); body pieces arrive. Inputs: [`Input::Chunk`], [`Input::End`],
//!   [`Input::Failed`] (the body cut or timed out).
//! - **done**: the last [`Action::Publish`] carried the fill's end.
//!
//! [`Input::Purged`] may come at any time: what the fill fetched is then not cached (the
//! driver checks again under its lock, so a purge that races the end is honoured too).
//!
//! Actions: [`Action::Send`] (ask a source), [`Action::Publish`] (head, body pieces and/or
//! the end, to every waiting client), [`Action::Insert`] (cache a verified object),
//! [`Action::Remove`] (drop an index that changed upstream), [`Action::SourceDone`] (one
//! source's outcome, for its breaker and the metrics).
//!
//! Invariant: no client receives the last bytes of a body that failed its checks. Nothing of
//! a body under 64 KiB is published before it is verified; a larger one streams as it
//! arrives but for the last byte received so far, released only after the length and
//! `Content-Digest`/`Repr-Digest` were verified. A failure after anything was published ends
//! the fill; a failure before moves on to the next source.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::cache::{CachedObject, Slicing, slice_key};
use crate::content_type::{self, Kind};
use crate::freshness::{self, Overrides};
use crate::slice::{self, ContentRange};

/// Why a fill failed; decides between 502 and 504 when nothing stale can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FillError {
    #[error("every upstream failed or refused")]
    Unavailable,
    #[error("upstream timed out")]
    Timeout,
    #[error("the body failed its integrity check")]
    Integrity,
    #[error("upstream cut the body short")]
    Truncated,
    #[error("the object changed upstream while it was read in slices")]
    Changed,
    #[error("the upstream request could not be built")]
    Request,
}

/// Who a failed fill is the fault of, as Pingora's `ErrorSource`: only the upstream's own
/// failures count against its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The source failed: connect error, timeout, 5xx, a body cut short or failing its digest.
    /// Counted by the source's breaker; the next source may help.
    Upstream,
    /// The edge could not make the request (a target it cannot build). Not the source's fault,
    /// and no other source can help.
    Internal,
    /// Nobody's: the object changed upstream while a reader walked its slices. No other
    /// source can help this reader; the client's retry starts afresh.
    Nobody,
}

impl FillError {
    /// Who is at fault.
    pub fn fault(self) -> Fault {
        match self {
            FillError::Unavailable
            | FillError::Timeout
            | FillError::Integrity
            | FillError::Truncated => Fault::Upstream,
            FillError::Request => Fault::Internal,
            FillError::Changed => Fault::Nobody,
        }
    }
}

/// The response head of a fill, as published to waiting clients.
#[derive(Debug, Clone)]
pub struct Head {
    /// 200 (or 404...) for a whole object; 200 with `meta` for a sliced one; 416 when the
    /// slice asked for starts past the end (`content_length` is then the object's length).
    pub status: StatusCode,
    /// The whole object's length.
    pub content_length: Option<u64>,
    pub upstream_etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    /// For a sliced object: its index entry (layout, validators, freshness).
    pub meta: Option<Arc<CachedObject>>,
    /// For a sliced object: which slice this fill's body is, if it carries one.
    pub slice: Option<u64>,
}

/// What a fill asks upstream for.
#[derive(Debug, Clone)]
pub enum Want {
    /// The object at a path, its slice `first_slice` when it turns out to be sliced.
    /// `stale` is the expired copy (or index), for a conditional request.
    Object {
        first_slice: u64,
        stale: Option<Arc<CachedObject>>,
    },
    /// One slice of an object whose index is known.
    Slice { index: u64, meta: Arc<CachedObject> },
}

/// The settings the machine reads (from `[upstream]` and `[cache]`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub overrides: Overrides,
    /// Objects larger than this are relayed but not cached.
    pub max_object_bytes: u64,
    /// Objects larger than this are filled and kept in slices of this size (0: never).
    pub slice_bytes: u64,
    /// Longest wait for a response head, and between two body chunks.
    pub read_timeout: Duration,
}

/// The conditional and range fields of an upstream request; the driver adds the target, the
/// fill credential and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestSpec {
    pub if_none_match: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

/// What upstream did.
#[derive(Debug)]
pub enum Input {
    /// The response head.
    Head {
        status: StatusCode,
        headers: HeaderMap,
    },
    /// A piece of the body.
    Chunk(Bytes),
    /// The body ended.
    End,
    /// The request or the body failed (connect error, timeout, a cut body, a bad target).
    Failed(FillError),
    /// A purge took the fill off the fills in flight: cache nothing it fetched.
    Purged,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Ask candidate `source` (an index into the candidates the machine was made with).
    Send { source: usize, request: RequestSpec },
    /// Tell every waiting client: the head (kept if one was already published), body pieces
    /// and, at the end, the outcome.
    Publish {
        head: Option<Arc<Head>>,
        chunks: Vec<Bytes>,
        end: Option<Result<(), FillError>>,
    },
    /// Cache these verified objects, in order, unless the fill was purged; note a fill of
    /// `note_fill` first (the disk tier's admission counts fills).
    Insert {
        note_fill: Option<String>,
        objects: Vec<(String, CachedObject)>,
    },
    /// Drop a cached entry (an index whose object changed upstream).
    Remove { key: String },
    /// The outcome of asking `source`: the body's length, or why it failed.
    SourceDone {
        source: usize,
        result: Result<u64, FillError>,
    },
}

/// Bodies smaller than this are verified whole before any byte reaches a client.
pub const VERIFY_WHOLE_BELOW: u64 = 64 * 1024;

/// How an upstream answer is kept.
#[derive(Debug)]
enum Shape {
    /// The whole object (or a remembered 404), cached for `ttl` when it fits. `partial`: the
    /// answer was a 416 for an empty object, whose body is not the object's.
    Whole {
        status: StatusCode,
        partial: bool,
        ttl: Option<Duration>,
    },
    /// One slice of a sliced object; `new_meta` when this answer is the first to describe it.
    Slice {
        index: u64,
        meta: Arc<CachedObject>,
        new_meta: bool,
    },
}

/// A body being received from one source.
#[derive(Debug)]
struct Receiving {
    source: usize,
    shape: Shape,
    head: Arc<Head>,
    expected_len: Option<u64>,
    expected_digest: Option<[u8; 32]>,
    hasher: Sha256,
    received: u64,
    /// Received but not published (verified-whole bodies, the last byte of larger ones).
    held: Vec<Bytes>,
    /// Published so far (kept to cache the whole body at the end).
    published: Vec<Bytes>,
    /// What the object's cache entry carries from the head.
    stored: Stored,
}

/// The fields of a cache entry taken from the response head.
#[derive(Debug, Default)]
struct Stored {
    content_type: String,
    upstream_etag: String,
    last_modified: String,
    stored_at: u64,
    stale_while_revalidate: u64,
    stale_if_error: u64,
}

#[derive(Debug)]
enum State {
    Requesting { source: usize },
    Receiving(Box<Receiving>),
    Done,
}

/// One fill of one key: from the first source asked to the end published.
#[derive(Debug)]
pub struct FillMachine {
    settings: Arc<Settings>,
    key: String,
    kind: Kind,
    want: Want,
    /// The kind of each candidate source (`"peer"`, `"parent"`, `"origin"`), in order.
    candidates: Vec<&'static str>,
    next: usize,
    state: State,
    last_error: FillError,
    /// The generation a newly described sliced object gets (random, from the driver).
    generation: u64,
    purged: bool,
    actions: VecDeque<Action>,
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn text(v: Option<&HeaderValue>) -> String {
    v.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

impl FillMachine {
    /// A fill of `key` (the canonical path) asking `candidates` in order; the first
    /// [`Action::Send`] (or, with no candidate, the failure) is ready at once.
    pub fn new(
        settings: Arc<Settings>,
        key: &str,
        want: Want,
        candidates: Vec<&'static str>,
        generation: u64,
    ) -> Self {
        let mut m = Self {
            settings,
            key: key.to_owned(),
            kind: content_type::classify(key).1,
            want,
            candidates,
            next: 0,
            state: State::Done,
            last_error: FillError::Unavailable,
            generation,
            purged: false,
            actions: VecDeque::new(),
        };
        m.next_source();
        m
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// How long the driver may wait for the next input before it feeds
    /// `Input::Failed(FillError::Timeout)`; `None` when the fill is over.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Done => None,
            _ => Some(self.settings.read_timeout),
        }
    }

    /// Whether the machine waits for body pieces (rather than a head, or nothing).
    pub fn wants_body(&self) -> bool {
        matches!(self.state, State::Receiving(_))
    }

    /// Whether the fill is over (its end published).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds what upstream did at `now`.
    pub fn handle_input(&mut self, now: SystemTime, input: Input) {
        match input {
            Input::Purged => self.purged = true,
            Input::Head { status, headers } => {
                if let State::Requesting { source } = self.state {
                    self.on_head(now, source, status, &headers);
                }
            }
            Input::Chunk(data) => self.on_chunk(data),
            Input::End => self.on_end(),
            Input::Failed(error) => {
                let published = match &self.state {
                    State::Requesting { .. } => false,
                    State::Receiving(r) => !r.published.is_empty(),
                    State::Done => return,
                };
                self.fail(error, published);
            }
        }
    }

    fn current_source(&self) -> Option<usize> {
        match &self.state {
            State::Requesting { source } => Some(*source),
            State::Receiving(r) => Some(r.source),
            State::Done => None,
        }
    }

    /// Asks the next candidate, or ends the fill with the last error.
    fn next_source(&mut self) {
        if self.next >= self.candidates.len() {
            self.finish(Err(self.last_error));
            return;
        }
        let source = self.next;
        self.next += 1;
        self.state = State::Requesting { source };
        let request = self.request_spec();
        self.actions.push_back(Action::Send { source, request });
    }

    fn request_spec(&self) -> RequestSpec {
        let mut spec = RequestSpec::default();
        match &self.want {
            Want::Object { first_slice, stale } => {
                if let Some(old) = stale
                    .as_deref()
                    .filter(|o| o.status == 200 && !o.upstream_etag.is_empty())
                {
                    spec.if_none_match = Some(old.upstream_etag.clone());
                }
                if self.settings.slice_bytes > 0 {
                    spec.range = Some(slice::slice_request(
                        *first_slice,
                        self.settings.slice_bytes,
                    ));
                }
            }
            Want::Slice { index, meta } => {
                if let Slicing::Meta { slice_size, .. } = meta.slicing {
                    spec.range = Some(slice::slice_request(*index, slice_size));
                }
                // If the object changed upstream, the answer is the new whole object (200),
                // never a slice of it to be mixed with slices of the old one.
                if meta.upstream_etag.starts_with('"') {
                    spec.if_range = Some(meta.upstream_etag.clone());
                } else if !meta.last_modified.is_empty() {
                    spec.if_range = Some(meta.last_modified.clone());
                }
            }
        }
        spec
    }

    /// Publishes the end and stops.
    fn finish(&mut self, end: Result<(), FillError>) {
        self.actions.push_back(Action::Publish {
            head: None,
            chunks: Vec::new(),
            end: Some(end),
        });
        self.state = State::Done;
    }

    /// One source failed; `published`: clients already have part of its body.
    fn fail(&mut self, error: FillError, published: bool) {
        if let Some(source) = self.current_source() {
            self.actions.push_back(Action::SourceDone {
                source,
                result: Err(error),
            });
        }
        if error.fault() != Fault::Upstream || published {
            // Not the source's fault and no other source can help, or clients already have
            // part of this body: end them with the error.
            self.finish(Err(error));
            return;
        }
        self.last_error = error;
        self.next_source();
    }

    /// One source succeeded: publish what was held back with the end.
    fn succeed(&mut self, source: usize, head: Arc<Head>, chunks: Vec<Bytes>, bytes: u64) {
        self.actions.push_back(Action::Publish {
            head: Some(head),
            chunks,
            end: Some(Ok(())),
        });
        self.actions.push_back(Action::SourceDone {
            source,
            result: Ok(bytes),
        });
        self.state = State::Done;
    }

    fn insert(&mut self, note_fill: Option<String>, objects: Vec<(String, CachedObject)>) {
        if !self.purged {
            self.actions
                .push_back(Action::Insert { note_fill, objects });
        }
    }

    fn on_head(&mut self, now: SystemTime, source: usize, status: StatusCode, headers: &HeaderMap) {
        let unix_now = unix(now);
        let settings = Arc::clone(&self.settings);
        let lifetime = |status: StatusCode| {
            freshness::lifetime(status, headers, self.kind, &settings.overrides, now)
        };
        let stale = match &self.want {
            Want::Object { stale, .. } => stale.clone(),
            Want::Slice { .. } => None,
        };
        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = stale
        {
            // Revalidated: the stored body (or slices) is still right; only its lifetime is
            // new. Cached before the fill ends, so a client that saw the end finds it.
            let mut refreshed = CachedObject::clone(&old);
            let ttl = lifetime(StatusCode::OK).unwrap_or(Duration::ZERO);
            refreshed.stored_at = unix_now;
            refreshed.fresh_until = unix_now + ttl.as_secs();
            let len = refreshed.body.len() as u64;
            let chunk = refreshed.body.clone();
            let mut head = head_of(&refreshed);
            let sliced = matches!(refreshed.slicing, Slicing::Meta { .. });
            if sliced {
                head.meta = Some(Arc::new(refreshed.clone()));
            }
            self.insert(None, vec![(self.key.clone(), refreshed)]);
            let chunks = if sliced { Vec::new() } else { vec![chunk] };
            self.succeed(source, Arc::new(head), chunks, len);
            return;
        }

        let content_range = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(slice::parse_content_range);
        let upstream_etag = headers.get(header::ETAG).cloned();
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let directives = freshness::directives(headers);
        let stored = Stored {
            content_type: text(headers.get(header::CONTENT_TYPE)),
            upstream_etag: text(upstream_etag.as_ref()),
            last_modified: text(last_modified.as_ref()),
            stored_at: unix_now,
            stale_while_revalidate: directives.stale_while_revalidate.unwrap_or(0),
            stale_if_error: directives.stale_if_error.unwrap_or(0),
        };
        let slice_bytes = self.settings.slice_bytes;
        let whole = |status: StatusCode, length: Option<u64>, partial: bool| {
            (
                Shape::Whole {
                    status,
                    partial,
                    ttl: lifetime(status),
                },
                length,
            )
        };
        let (shape, length) = match &self.want {
            Want::Slice { index, meta } => {
                let Some((total, slice_size)) = layout(meta) else {
                    self.fail(FillError::Unavailable, false);
                    return;
                };
                let same_version = upstream_etag.as_ref().is_none_or(|e| {
                    !meta.upstream_etag.starts_with('"')
                        || e.as_bytes() == meta.upstream_etag.as_bytes()
                });
                match (status, content_range) {
                    (StatusCode::PARTIAL_CONTENT, Some(cr))
                        if same_version
                            && matches!(cr, ContentRange::Bytes { complete, .. } if complete == total)
                            && slice::answers_slice(cr, *index, slice_size) =>
                    {
                        let shape = Shape::Slice {
                            index: *index,
                            meta: Arc::clone(meta),
                            new_meta: false,
                        };
                        (shape, Some(total))
                    }
                    (s, _) if s.is_server_error() => {
                        self.fail(FillError::Unavailable, false);
                        return;
                    }
                    _ => {
                        // The object changed or went away upstream: forget its index, so the
                        // next request learns the new one.
                        tracing::info!(key = %self.key, %status, "A sliced object changed upstream; its index is dropped.");
                        self.actions.push_back(Action::Remove {
                            key: self.key.clone(),
                        });
                        self.fail(FillError::Changed, false);
                        return;
                    }
                }
            }
            Want::Object { first_slice, .. } => match (status, content_range) {
                (
                    StatusCode::PARTIAL_CONTENT,
                    Some(ContentRange::Bytes {
                        first: 0,
                        last,
                        complete,
                    }),
                ) if last + 1 == complete && *first_slice == 0 => {
                    whole(StatusCode::OK, Some(complete), false)
                }
                (StatusCode::PARTIAL_CONTENT, Some(cr))
                    if slice::answers_slice(cr, *first_slice, slice_bytes) =>
                {
                    let ContentRange::Bytes { complete, .. } = cr else {
                        self.fail(FillError::Unavailable, false);
                        return;
                    };
                    let ttl = lifetime(StatusCode::OK);
                    let meta = CachedObject {
                        status: 200,
                        content_type: stored.content_type.clone(),
                        upstream_etag: stored.upstream_etag.clone(),
                        last_modified: stored.last_modified.clone(),
                        stored_at: unix_now,
                        // Not cacheable: used for this request only (0 = never stored).
                        fresh_until: ttl.map_or(0, |t| unix_now + t.as_secs()),
                        stale_while_revalidate: stored.stale_while_revalidate,
                        stale_if_error: stored.stale_if_error,
                        sha256: [0; 32],
                        slicing: Slicing::Meta {
                            total: complete,
                            slice_size: slice_bytes,
                            generation: self.generation,
                        },
                        body: Bytes::new(),
                        prepared: Default::default(),
                    };
                    let shape = Shape::Slice {
                        index: *first_slice,
                        meta: Arc::new(meta),
                        new_meta: true,
                    };
                    (shape, Some(complete))
                }
                (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Some(ContentRange::Unsatisfied { complete }),
                ) => {
                    if complete == 0 {
                        // An empty object: no byte range exists.
                        whole(StatusCode::OK, Some(0), true)
                    } else {
                        let head = Head {
                            status,
                            content_length: Some(complete),
                            upstream_etag,
                            last_modified,
                            meta: None,
                            slice: None,
                        };
                        self.succeed(source, Arc::new(head), Vec::new(), 0);
                        return;
                    }
                }
                (StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE, _) => {
                    self.fail(FillError::Unavailable, false);
                    return;
                }
                // A peer answers with the object or a 404; anything else (a refused token,
                // an overloaded peer) means: ask the next source.
                (StatusCode::OK | StatusCode::NOT_FOUND, _) => whole(status, content_length, false),
                (s, _) if s.is_client_error() && self.candidates[source] != "peer" => {
                    whole(status, content_length, false)
                }
                _ => {
                    self.fail(FillError::Unavailable, false);
                    return;
                }
            },
        };
        // The integrity field that covers this body: Content-Digest always; Repr-Digest only
        // when the body is the whole representation.
        let is_whole = matches!(shape, Shape::Whole { .. });
        let expected_digest = headers
            .get("content-digest")
            .or_else(|| is_whole.then(|| headers.get("repr-digest")).flatten())
            .and_then(|v| v.to_str().ok())
            .and_then(crate::digest::sha256_of_field);
        let (head, expected_len) = match &shape {
            Shape::Whole {
                status, partial, ..
            } => (
                Head {
                    status: *status,
                    content_length: length,
                    upstream_etag,
                    last_modified,
                    meta: None,
                    slice: None,
                },
                // The body of a 416 for an empty object is an error text, not the object.
                if *partial { Some(0) } else { length },
            ),
            Shape::Slice { index, meta, .. } => {
                let Some((total, slice_size)) = layout(meta) else {
                    self.fail(FillError::Unavailable, false);
                    return;
                };
                let (start, end) = slice::slice_bounds(*index, slice_size, total);
                (
                    Head {
                        status: StatusCode::OK,
                        content_length: Some(total),
                        upstream_etag,
                        last_modified,
                        meta: Some(Arc::clone(meta)),
                        slice: Some(*index),
                    },
                    Some(end - start),
                )
            }
        };
        let skip_body = matches!(shape, Shape::Whole { partial: true, .. });
        self.state = State::Receiving(Box::new(Receiving {
            source,
            shape,
            head: Arc::new(head),
            expected_len,
            expected_digest,
            hasher: Sha256::new(),
            received: 0,
            held: Vec::new(),
            published: Vec::new(),
            stored,
        }));
        if skip_body {
            self.on_end();
        }
    }

    fn on_chunk(&mut self, data: Bytes) {
        let State::Receiving(r) = &mut self.state else {
            return;
        };
        if data.is_empty() {
            return;
        }
        r.received += data.len() as u64;
        if r.expected_len.is_some_and(|n| r.received > n) {
            let published = !r.published.is_empty();
            self.fail(FillError::Truncated, published);
            return;
        }
        r.hasher.update(&data);
        r.held.push(data);
        // Small objects are verified whole before a byte goes out (so a bad source can still
        // be replaced by the next one); larger ones (by their announced length, or once that
        // much has arrived) stream at once, always holding the last byte received back until
        // the end is verified.
        let large = r.expected_len.map_or(r.received, |n| n.max(r.received)) >= VERIFY_WHOLE_BELOW;
        if large && r.held.iter().map(Bytes::len).sum::<usize>() > 1 {
            let mut ready = std::mem::take(&mut r.held);
            if let Some(newest) = ready.pop() {
                let cut = newest.len().saturating_sub(1);
                if cut > 0 {
                    ready.push(newest.slice(..cut));
                }
                r.held.push(newest.slice(cut..));
            }
            r.published.extend(ready.iter().cloned());
            let head = Arc::clone(&r.head);
            self.actions.push_back(Action::Publish {
                head: Some(head),
                chunks: ready,
                end: None,
            });
        }
    }

    fn on_end(&mut self) {
        let (truncated, was_published) = match &self.state {
            State::Receiving(r) => (
                r.expected_len.is_some_and(|n| r.received != n),
                !r.published.is_empty(),
            ),
            _ => return,
        };
        if truncated {
            self.fail(FillError::Truncated, was_published);
            return;
        }
        let State::Receiving(r) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let Receiving {
            source,
            shape,
            head,
            expected_digest,
            hasher,
            received,
            held,
            mut published,
            stored,
            ..
        } = *r;
        // A failure from here on names this source.
        self.state = State::Requesting { source };
        let sha256: [u8; 32] = hasher.finalize().into();
        let skip_body = matches!(shape, Shape::Whole { partial: true, .. });
        if let Some(expected) = expected_digest
            && expected != sha256
            && !skip_body
        {
            self.fail(FillError::Integrity, was_published);
            return;
        }
        published.extend(held.iter().cloned());
        match shape {
            Shape::Whole { status, ttl, .. } => {
                if received <= self.settings.max_object_bytes
                    && let Some(ttl) = ttl
                {
                    let object = CachedObject {
                        status: status.as_u16(),
                        content_type: stored.content_type,
                        upstream_etag: stored.upstream_etag,
                        last_modified: stored.last_modified,
                        stored_at: stored.stored_at,
                        fresh_until: stored.stored_at + ttl.as_secs(),
                        stale_while_revalidate: stored.stale_while_revalidate,
                        stale_if_error: stored.stale_if_error,
                        sha256,
                        slicing: Slicing::Whole,
                        body: concat(&published, received),
                        prepared: Default::default(),
                    };
                    self.insert(None, vec![(self.key.clone(), object)]);
                }
            }
            Shape::Slice {
                index,
                meta,
                new_meta,
            } if meta.fresh_until > 0 => {
                if let Slicing::Meta { generation, .. } = meta.slicing {
                    let slice_key = slice_key(&self.key, index);
                    let mut slice = CachedObject::clone(&meta);
                    slice.sha256 = sha256;
                    slice.slicing = Slicing::Slice { index, generation };
                    slice.body = concat(&published, received);
                    let mut objects = Vec::with_capacity(2);
                    let note_fill = new_meta.then(|| slice_key.clone());
                    if new_meta {
                        objects.push((self.key.clone(), Arc::unwrap_or_clone(meta)));
                    }
                    objects.push((slice_key, slice));
                    self.insert(note_fill, objects);
                }
            }
            Shape::Slice { .. } => {}
        }
        // Verified and cached: publish the rest and end the fill.
        self.succeed(source, head, held, received);
    }
}

/// The total length and slice size of a sliced object, from its index.
fn layout(meta: &CachedObject) -> Option<(u64, u64)> {
    match meta.slicing {
        Slicing::Meta {
            total, slice_size, ..
        } => Some((total, slice_size)),
        _ => None,
    }
}

fn concat(pieces: &[Bytes], len: u64) -> Bytes {
    if let [one] = pieces {
        return one.clone();
    }
    let mut body = Vec::with_capacity(len as usize);
    for c in pieces {
        body.extend_from_slice(c);
    }
    Bytes::from(body)
}

/// The head a refreshed (304) object is published with.
fn head_of(o: &CachedObject) -> Head {
    let hv = |s: &str| {
        (!s.is_empty())
            .then(|| HeaderValue::from_str(s).ok())
            .flatten()
    };
    let content_length = match o.slicing {
        Slicing::Meta { total, .. } => total,
        _ => o.body.len() as u64,
    };
    Head {
        status: StatusCode::from_u16(o.status).unwrap_or(StatusCode::OK),
        content_length: Some(content_length),
        upstream_etag: hv(&o.upstream_etag),
        last_modified: hv(&o.last_modified),
        meta: None,
        slice: None,
    }
}
