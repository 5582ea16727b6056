//! Request handling, protocol-agnostic: HTTP/1.1, HTTP/2 and HTTP/3 all come here with the
//! request head and leave with a response whose body is one `Bytes`.
//!
//! A request goes through named phases, in order:
//! 1. **parse**: method, path-form token, path normalization (400 on a hostile path);
//! 2. **authorize**: the token check for protected prefixes (403 with a counted reason);
//! 3. **lookup**: the pre-positioned store (404);
//! 4. **respond**: conditionals (304), ranges (206/416), headers (type, caching, CORS);
//! 5. **log**: metrics and the access log, when the body has been handed over ([`Finish`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use estuary_common::http_semantics::{self, RangeChoice, Validators, select_range_of_len};
use estuary_common::token::{self, KeySet, Rejection};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};

use crate::access_log::{AccessEntry, AccessLog};
use crate::cache::{CachedObject, Session, Slicing, Tier};
use crate::clock::Clock;
use crate::config::EdgeConfig;
use crate::content_type::{self, Kind};
use crate::fill::Filler;
use crate::metrics::{Metrics, Protocol};
use crate::path;
use crate::plan::{
    FillAnswer, HeadFacts, OnError, Plan, RequestFacts, on_fill_error, respond_to_fill,
};
use crate::purges::PurgeRecord;
use crate::sliced::BodyStream;
use crate::store::{FileEntry, Lookup, Store};

/// How far the clocks of the services that mint tokens may run ahead of the edge's: a token
/// minted for exactly `[auth] max_ttl` is still accepted.
const CLOCK_SKEW_SECS: u64 = 300;

/// A response body: whole bytes (files, cached objects, errors) or a fill in progress that
/// streams as upstream delivers.
#[derive(Debug)]
pub enum Body {
    Full(Bytes),
    Fill(BodyStream),
}

/// What routing produced.
#[derive(Debug)]
enum Routed {
    Full(Response<Bytes>),
    Stream(Response<Body>),
}

/// Which endpoints a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Content only (the HTTPS listener, or the plain one when an admin address is set).
    Content,
    /// Content plus `/metrics`, `/healthz`, `/readyz` (the plain listener without admin).
    ContentAndAdmin,
    /// `/metrics`, `/healthz`, `/readyz` only (the admin listener).
    Admin,
}

/// The request head, as every protocol front end sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub client: SocketAddr,
    pub protocol: Protocol,
    /// Whether the request came over TLS or QUIC (for `Alt-Svc`).
    pub secure: bool,
    pub endpoints: Endpoints,
}

/// What counts and logs requests: shared by the handler and every [`Finish`].
#[derive(Debug)]
pub struct Observer {
    pub metrics: Metrics,
    pub access_log: AccessLog,
}

impl crate::fill::FillObserver for Observer {
    fn fill_started(&self, source_kind: &'static str) {
        self.metrics.fill_started(source_kind);
    }
    fn fill_finished(&self, source_kind: &'static str, ok: bool, seconds: f64, bytes: u64) {
        self.metrics.fill_finished(source_kind, ok, seconds, bytes);
    }
    fn integrity_failure(&self) {
        self.metrics.integrity_failure();
    }
    fn coalesced(&self) {
        self.metrics.coalesced();
    }
}

impl crate::cache::CacheObserver for Observer {
    fn ram_evicted(&self, bytes: u64) {
        self.metrics.ram_evictions.inc();
        self.metrics.ram_evicted_bytes.inc_by(bytes);
    }
    fn disk_admission(&self, admitted: bool) {
        if admitted {
            self.metrics.disk_admitted.inc();
        } else {
            self.metrics.disk_rejected.inc();
        }
    }
}

/// The edge's request handler and its state.
pub struct Edge {
    store: Arc<Store>,
    keys: KeySet,
    protected: Vec<String>,
    /// `[auth] max_ttl` plus [`CLOCK_SKEW_SECS`], in seconds.
    max_ttl: u64,
    cache_control: [HeaderValue; 3],
    cors_origins: Vec<HeaderValue>,
    cors_any: bool,
    cors_max_age: HeaderValue,
    alt_svc: Option<HeaderValue>,
    observer: Arc<Observer>,
    /// The pull-through cache and its filler, when `[upstream]` is configured.
    filler: Option<Arc<Filler>>,
    stale_if_error: u64,
    admin_tokens: Vec<String>,
    /// Prefix purges: objects stored at or before the time under the prefix count as absent.
    /// A lookup reads them without a lock, at a cost bounded by the path's length; the purge
    /// log, when there is one, is written off the request path ([`crate::purges`]).
    prefix_purges: PurgeRecord,
    ready: AtomicBool,
    /// The edge's one clock ([`crate::clock`]), shared with the cache and the filler.
    clock: Clock,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("store", &self.store).finish()
    }
}

static SERVER: HeaderValue = HeaderValue::from_static("estuary");
static ACCEPT_RANGES: HeaderValue = HeaderValue::from_static("bytes");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
static ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
static EXPOSE: HeaderValue =
    HeaderValue::from_static("Content-Length, Content-Range, ETag, Last-Modified, Age, Date");
static ALLOW_HEADERS: HeaderValue = HeaderValue::from_static(
    "Range, If-None-Match, If-Modified-Since, If-Range, CMCD-Request, CMCD-Object, CMCD-Status, CMCD-Session",
);
static VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

impl Edge {
    /// Builds the handler from a validated config.
    pub fn new(
        config: &EdgeConfig,
        store: Arc<Store>,
        observer: Arc<Observer>,
    ) -> Result<Self, crate::config::ConfigError> {
        let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("no-cache"));
        let alt_svc = match (config.listen.https, config.listen.http3) {
            (Some(addr), true) => {
                HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port())).ok()
            }
            _ => None,
        };
        Ok(Self {
            store,
            keys: config.key_set()?,
            protected: config.auth.protected.clone(),
            max_ttl: config
                .auth
                .max_ttl
                .as_secs()
                .saturating_add(CLOCK_SKEW_SECS),
            cache_control: [
                hv(&config.cache_control.manifest),
                hv(&config.cache_control.segment),
                hv(&config.cache_control.other),
            ],
            cors_any: config.cors.allow_origins.iter().any(|o| o == "*"),
            cors_origins: config
                .cors
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            cors_max_age: HeaderValue::from(config.cors.max_age.as_secs()),
            alt_svc,
            observer,
            filler: None,
            stale_if_error: config.cache.ttl.stale_if_error.as_secs(),
            // The control plane sends purges with this node's own credential (its
            // `[control_plane] token`), which no other node holds.
            admin_tokens: config
                .admin
                .tokens
                .values()
                .chain(config.control_plane.iter().map(|cp| &cp.token))
                .cloned()
                .collect(),
            prefix_purges: PurgeRecord::in_memory(),
            ready: AtomicBool::new(false),
            clock: Clock::system(),
        })
    }

    /// Adds the pull-through cache.
    pub fn with_filler(mut self, filler: Arc<Filler>) -> Self {
        self.filler = Some(filler);
        self
    }

    /// Keeps prefix purges in `file` (a JSON list, replaced atomically), loading the ones
    /// made before a restart: objects on the disk tier stay purged. A file that cannot be read
    /// is an error, not an empty list, so that purged content never comes back silently.
    pub fn with_purge_log(mut self, file: std::path::PathBuf) -> anyhow::Result<Self> {
        self.prefix_purges = PurgeRecord::open(file)?;
        Ok(self)
    }

    /// Sets the clock (the same one the cache and the filler were given).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The metrics and access log.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// Whether the node is ready (what `/readyz` says).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the node ready (listeners bound) or not (draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Answers one request.
    pub async fn handle(&self, req: Incoming<'_>) -> (Response<Body>, Finish) {
        let mut finish = Finish::new(&self.observer, &req);
        let response = match self.route(&req, &mut finish).await {
            Routed::Full(r) => r.map(Body::Full),
            Routed::Stream(r) => r,
        };
        finish.status = response.status().as_u16();
        finish.body_len = match response.body() {
            Body::Full(b) => b.len() as u64,
            Body::Fill(_) => 0,
        };
        (response, finish)
    }

    async fn route(&self, req: &Incoming<'_>, finish: &mut Finish) -> Routed {
        match self.route_full(req, finish).await {
            Ok(r) => Routed::Full(r),
            Err(r) => r,
        }
    }

    /// Routes a request; `Err` carries a response that is not a plain full body.
    async fn route_full(
        &self,
        req: &Incoming<'_>,
        finish: &mut Finish,
    ) -> Result<Response<Bytes>, Routed> {
        if req.endpoints != Endpoints::Content
            && req.uri.path().starts_with("/cache/")
            && (*req.method == Method::DELETE || req.method.as_str() == "PURGE")
        {
            finish.record = false;
            return Ok(self.purge(req).await);
        }
        if req.endpoints != Endpoints::Content
            && let Some(response) = self.admin(req).await
        {
            // Probes and scrapes are neither counted as requests nor access-logged.
            finish.record = false;
            return Ok(response);
        }
        if req.endpoints == Endpoints::Admin {
            return Ok(self.error(req, StatusCode::NOT_FOUND, "not found\n"));
        }

        // Phase 1: parse.
        if *req.method == Method::OPTIONS {
            return Ok(self.options(req));
        }
        if *req.method != Method::GET && *req.method != Method::HEAD {
            let mut r = self.error(req, StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, ALLOW.clone());
            return Ok(r);
        }
        let (path_token, raw_path) = split_path_token(req.uri.path());
        let path = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(e) => {
                self.observer.metrics.bad_paths.inc();
                finish.reason = Some("bad_path");
                tracing::debug!(error = %e, "A request path was refused.");
                return Ok(self.error(req, StatusCode::BAD_REQUEST, "bad path\n"));
            }
        };
        if finish.details.is_some() {
            finish.path = path.clone();
        }

        // Phase 2: authorize.
        if self.protected.iter().any(|p| path.starts_with(p.as_str())) {
            let verdict = match path_token {
                Some(segment) => token::decode_path_segment(segment)
                    .and_then(|t| self.verify(&t, &path, req.client)),
                None => match find_token(req) {
                    Some(t) => self.verify(&t, &path, req.client),
                    None => Err(Rejection::Missing),
                },
            };
            if let Err(reason) = verdict {
                self.observer.metrics.token_rejected(reason);
                finish.reason = Some(reason.as_str());
                tracing::info!(reason = reason.as_str(), path = %path, client = %req.client, "A token was refused.");
                return Ok(self.error(req, StatusCode::FORBIDDEN, "forbidden\n"));
            }
        }

        // Phase 3: lookup.
        let entry = match self.store.lookup(&path).await {
            Ok(Lookup::Found(entry)) => {
                self.observer.metrics.store_hits.inc();
                entry
            }
            Ok(Lookup::NotFound) => {
                self.observer.metrics.store_misses.inc();
                if let Some(filler) = &self.filler {
                    return Err(self.serve_cached(req, &path, filler).await);
                }
                return Ok(self.error(req, StatusCode::NOT_FOUND, "not found\n"));
            }
            Ok(Lookup::Outside) => {
                self.observer.metrics.store_refused_outside_root.inc();
                finish.reason = Some("outside_root");
                tracing::warn!(path = %path, "A symbolic link leads out of the store root; refused.");
                return Ok(self.error(req, StatusCode::NOT_FOUND, "not found\n"));
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path, "The store could not open a file.");
                return Ok(self.error(req, StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
            }
        };

        // Phase 4: respond.
        Ok(self.respond(req, &path, &entry))
    }

    /// Serves a path that is not pre-positioned: from the cache when fresh, else through a
    /// (coalesced) fill, else stale when every upstream fails.
    async fn serve_cached(&self, req: &Incoming<'_>, path: &str, filler: &Arc<Filler>) -> Routed {
        let m = &self.observer.metrics;
        let now = self.clock.unix_secs();
        // The player session the cache policy follows: CMCD `sid`, else the client address.
        let sid = crate::cmcd::session_id(req.uri.query(), req.headers);
        let session = sid
            .as_deref()
            .map_or(Session::Addr(req.client.ip()), Session::Sid);
        let cached = filler
            .cache()
            .get_for(path, Some(session))
            .await
            .filter(|(o, _)| !self.prefix_purges.covers(path, o.stored_at));
        let via_peer = self.is_peer_fill(req, path);
        // Decision 1 (plan.rs): the cache, or a fill (conditional when `cached` is expired).
        let plan = crate::plan::plan(cached.as_ref().map(|(o, _)| &**o), now);
        if let (Plan::Fresh | Plan::StaleWhileRevalidate, Some((obj, tier))) = (plan, &cached) {
            let status = if plan == Plan::Fresh {
                match tier {
                    Tier::Ram => m.cache_hits_ram.inc(),
                    Tier::Disk => m.cache_hits_disk.inc(),
                }
                "HIT"
            } else {
                // Stale while revalidate: answer now, refresh in the background.
                filler.join(path, Some(obj.to_arc()), false, 0);
                m.stale_serves.inc();
                "STALE"
            };
            if matches!(obj.slicing, Slicing::Meta { .. }) {
                let meta = obj.to_arc();
                return self.serve_sliced(req, path, filler, session, &meta, None, now, status);
            }
            return Routed::Full(self.respond_object(req, path, obj, now, status));
        }
        m.cache_misses.inc();
        let stale = cached.map(|(o, _)| o.to_arc());
        let first_slice = crate::slice::first_slice_of(
            req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            filler.slice_bytes(),
        );
        let fill = filler.join(path, stale.clone(), via_peer, first_slice);
        // Decision 2: how the fill answers this request.
        let outcome = match fill.head().await {
            Ok(head) => {
                let facts = HeadFacts {
                    status: head.status,
                    content_length: head.content_length,
                    sliced: head.meta.is_some(),
                };
                match respond_to_fill(facts, RequestFacts::of(req.method, req.headers)) {
                    FillAnswer::Sliced => {
                        if let Some(meta) = &head.meta {
                            let hint = head.slice.map(|k| (k, Arc::clone(&fill)));
                            return self
                                .serve_sliced(req, path, filler, session, meta, hint, now, "MISS");
                        }
                        fill.finished().await.map(|body| (head, body))
                    }
                    FillAnswer::Unsatisfiable { total } => {
                        let mut r = self.error(req, head.status, "range not satisfiable\n");
                        r.headers_mut().insert(
                            header::CONTENT_RANGE,
                            header_value(format!("bytes */{total}")),
                        );
                        return Routed::Full(r);
                    }
                    FillAnswer::Stream => {
                        let body = BodyStream::Fill(fill.reader());
                        return Routed::Stream(
                            self.stream_fill(req, path, &head, body, None, "MISS"),
                        );
                    }
                    // A range into an object being filled: each byte goes out as it arrives.
                    FillAnswer::StreamRange { len } => {
                        match select_range_of_len(req.headers, len) {
                            RangeChoice::Part(start, end) => {
                                let body = BodyStream::Fill(fill.reader().range(start, end));
                                return Routed::Stream(self.stream_fill(
                                    req,
                                    path,
                                    &head,
                                    body,
                                    Some((start, end)),
                                    "MISS",
                                ));
                            }
                            RangeChoice::Full => {
                                let body = BodyStream::Fill(fill.reader());
                                return Routed::Stream(
                                    self.stream_fill(req, path, &head, body, None, "MISS"),
                                );
                            }
                            RangeChoice::Unsatisfiable => {
                                fill.finished().await.map(|body| (head, body))
                            }
                        }
                    }
                    FillAnswer::Whole => fill.finished().await.map(|body| (head, body)),
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((head, body)) => {
                let obj = CachedObject {
                    status: head.status.as_u16(),
                    content_type: String::new(),
                    upstream_etag: text_of(head.upstream_etag.as_ref()),
                    last_modified: text_of(head.last_modified.as_ref()),
                    stored_at: now,
                    fresh_until: now,
                    stale_while_revalidate: 0,
                    stale_if_error: 0,
                    sha256: sha256(&body),
                    slicing: Slicing::Whole,
                    body,
                    prepared: Default::default(),
                };
                Routed::Full(self.respond_object(req, path, &obj, now, "MISS"))
            }
            // Decision 3: stale if error, or an error status.
            Err(e) => match on_fill_error(stale.as_deref(), e, self.stale_if_error, now) {
                OnError::ServeStale => {
                    let Some(obj) = stale else {
                        return Routed::Full(self.error(
                            req,
                            StatusCode::BAD_GATEWAY,
                            "upstream unavailable\n",
                        ));
                    };
                    m.stale_serves.inc();
                    let mut r = self.respond_object(req, path, &obj, now, "STALE");
                    r.headers_mut().insert(
                        header::WARNING,
                        HeaderValue::from_static("111 estuary \"Revalidation Failed\""),
                    );
                    Routed::Full(r)
                }
                OnError::Respond(status, text) => Routed::Full(self.error(req, status, text)),
            },
        }
    }

    /// Answers from a cached (or just filled) object, with the file rules: conditionals,
    /// ranges, HEAD.
    fn respond_object(
        &self,
        req: &Incoming<'_>,
        path: &str,
        obj: &CachedObject,
        now: u64,
        cache_status: &'static str,
    ) -> Response<Bytes> {
        if obj.status != 200 {
            let status = StatusCode::from_u16(obj.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut r = self.error(req, status, "not found\n");
            r.headers_mut()
                .insert("x-cache", HeaderValue::from_static(cache_status));
            return r;
        }
        let mut r = self.respond(req, path, obj.file_entry());
        let h = r.headers_mut();
        h.insert(header::AGE, HeaderValue::from(obj.age(now)));
        h.insert("x-cache", HeaderValue::from_static(cache_status));
        r
    }

    /// Serves a sliced object (`meta` is its index): conditionals and HEAD from the index,
    /// the body (or the range asked for) slice by slice. `fill` is a fill already publishing
    /// one of its slices.
    #[allow(clippy::too_many_arguments)]
    fn serve_sliced(
        &self,
        req: &Incoming<'_>,
        path: &str,
        filler: &Arc<Filler>,
        session: Session<'_>,
        meta: &Arc<CachedObject>,
        fill: Option<(u64, Arc<crate::fill::Fill>)>,
        now: u64,
        cache_status: &'static str,
    ) -> Routed {
        let Slicing::Meta { total, .. } = meta.slicing else {
            return Routed::Full(self.error(
                req,
                StatusCode::BAD_GATEWAY,
                "upstream unavailable\n",
            ));
        };
        let modified = httpdate::parse_http_date(&meta.last_modified)
            .unwrap_or(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(meta.stored_at));
        let hv = |s: &str| {
            (!s.is_empty())
                .then(|| HeaderValue::from_str(s).ok())
                .flatten()
        };
        let entry = FileEntry {
            body: Bytes::new(),
            etag: hv(&meta.upstream_etag)
                .filter(|e| e.as_bytes().starts_with(b"\""))
                .unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            modified,
        };
        if precondition(req.headers, &entry).is_some() || *req.method == Method::HEAD {
            // Answered from the index alone: reuse the whole-file rules on an empty body,
            // then restore the object's length.
            let mut r = self.respond(req, path, &entry);
            let whole = r.status() == StatusCode::OK;
            let h = r.headers_mut();
            if whole {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            h.insert(header::AGE, HeaderValue::from(meta.age(now)));
            h.insert("x-cache", HeaderValue::from_static(cache_status));
            return Routed::Full(r);
        }
        let head = crate::fill::Head {
            status: StatusCode::OK,
            content_length: Some(total),
            upstream_etag: Some(entry.etag.clone()),
            last_modified: Some(entry.last_modified.clone()),
            meta: None,
            slice: None,
        };
        let range = if if_range_matches(req.headers, &entry) {
            select_range_of_len(req.headers, total)
        } else {
            RangeChoice::Full
        };
        let (first, last, part) = match range {
            RangeChoice::Full => (0, total.saturating_sub(1), None),
            RangeChoice::Part(a, b) => (a, b, Some((a, b))),
            RangeChoice::Unsatisfiable => {
                let mut r = self.error(
                    req,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range not satisfiable\n",
                );
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes */{total}")),
                );
                return Routed::Full(r);
            }
        };
        let via_peer = self.is_peer_fill(req, path);
        let Some(reader) = crate::sliced::SlicedReader::new(
            Arc::clone(filler),
            path,
            Arc::clone(meta),
            (first, last),
            fill,
            via_peer,
            session.into(),
        ) else {
            return Routed::Full(self.error(
                req,
                StatusCode::BAD_GATEWAY,
                "upstream unavailable\n",
            ));
        };
        let body = BodyStream::Sliced(Box::new(reader));
        let mut r = self.stream_fill(req, path, &head, body, part, cache_status);
        r.headers_mut()
            .insert(header::AGE, HeaderValue::from(meta.age(now)));
        Routed::Stream(r)
    }

    /// A response that streams a fill to the client as it arrives.
    fn stream_fill(
        &self,
        req: &Incoming<'_>,
        path: &str,
        head: &crate::fill::Head,
        body: BodyStream,
        range: Option<(u64, u64)>,
        cache_status: &'static str,
    ) -> Response<Body> {
        let (content_type, kind) = content_type::classify(path);
        let mut r = Response::new(Body::Fill(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CACHE_CONTROL, self.cache_control_for(kind).clone());
        h.insert(header::SERVER, SERVER.clone());
        h.insert(header::ACCEPT_RANGES, ACCEPT_RANGES.clone());
        h.insert("x-cache", HeaderValue::from_static(cache_status));
        match (range, head.content_length) {
            (Some((start, end)), Some(len)) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes {start}-{end}/{len}")),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            }
            (_, Some(len)) => {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            _ => {}
        }
        let h = r.headers_mut();
        if let Some(etag) = head
            .upstream_etag
            .as_ref()
            .filter(|e| e.as_bytes().starts_with(b"\""))
        {
            h.insert(header::ETAG, etag.clone());
        }
        if let Some(lm) = &head.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if req.secure
            && req.protocol != Protocol::H3
            && let Some(alt) = &self.alt_svc
        {
            h.insert(header::ALT_SVC, alt.clone());
        }
        self.cors(req, h);
        r
    }

    fn cache_control_for(&self, kind: Kind) -> &HeaderValue {
        match kind {
            Kind::Manifest => &self.cache_control[0],
            Kind::Segment => &self.cache_control[1],
            Kind::Other => &self.cache_control[2],
        }
    }

    /// Whether the request is another node's fill: its fill header holds a valid credential
    /// for this path. A client's header (or a stale or foreign one) is ignored, so that no
    /// client can make the edge skip the object's owning peer.
    fn is_peer_fill(&self, req: &Incoming<'_>, path: &str) -> bool {
        req.headers
            .get(crate::fill::FILL_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| token::verify_fill(v, &self.keys, path, self.clock.unix_secs()))
    }

    fn verify(&self, token_text: &str, path: &str, client: SocketAddr) -> Result<(), Rejection> {
        token::verify(
            token_text,
            &self.keys,
            token::Request {
                path,
                client: client.ip(),
                now: self.clock.unix_secs(),
                max_ttl: Some(self.max_ttl),
            },
        )
    }

    /// `DELETE /cache/<path>` removes one cached object; `DELETE /cache/<prefix>*` every
    /// object under the prefix. Needs `Authorization: Bearer <token>`: one of `[admin.tokens]`
    /// or this node's own `[control_plane] token` (what the control plane presents).
    async fn purge(&self, req: &Incoming<'_>) -> Response<Bytes> {
        let presented = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let authorized = self.admin_tokens.iter().fold(false, |ok, t| {
            ok | bool::from(subtle::ConstantTimeEq::ct_eq(
                t.as_bytes(),
                presented.as_bytes(),
            ))
        });
        if !authorized {
            return self.error(req, StatusCode::FORBIDDEN, "forbidden\n");
        }
        let raw = req.uri.path().strip_prefix("/cache").unwrap_or("/");
        let (raw, prefix) = match raw.strip_suffix('*') {
            Some(p) => (p, true),
            None => (raw, false),
        };
        let Ok(path) = path::normalize(raw) else {
            return self.error(req, StatusCode::BAD_REQUEST, "bad path\n");
        };
        let Some(filler) = &self.filler else {
            return self.error(req, StatusCode::NOT_FOUND, "no cache\n");
        };
        if prefix {
            // Lookups see the purge at once and fills in flight under the prefix are not
            // cached when they end, whether or not the purge log can be written; the answer
            // waits until the log is durable, on the blocking pool, never holding up a hit.
            let saved = self
                .prefix_purges
                .purge_prefix(path.clone(), self.clock.unix_secs(), || {
                    filler.purge(&path, true)
                })
                .await;
            if let Err(e) = saved {
                tracing::error!(error = %e, "The prefix purge could not be saved; it holds until a restart.");
                return self.error(
                    req,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "purge applied but not saved\n",
                );
            }
        } else {
            // Out of the cache, and fills in flight are not cached when they end.
            filler.purge(&path, false);
        }
        tracing::info!(path = %path, prefix, "Purged from the cache.");
        let body =
            Bytes::from(serde_json::json!({"purged": path, "prefix": prefix}).to_string() + "\n");
        let mut r = Response::new(body.clone());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        r
    }

    /// `/metrics`, `/healthz` and `/readyz`, answered as every service answers them.
    async fn admin(&self, req: &Incoming<'_>) -> Option<Response<Bytes>> {
        let a = estuary_common::service::admin::answer(self, req.uri.path(), req.headers).await?;
        let mut r = Response::new(if *req.method == Method::HEAD {
            Bytes::new()
        } else {
            a.body.clone()
        });
        *r.status_mut() = a.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.body.len()));
        h.insert(header::CACHE_CONTROL, NO_STORE.clone());
        h.insert(header::SERVER, SERVER.clone());
        Some(r)
    }

    fn options(&self, req: &Incoming<'_>) -> Response<Bytes> {
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(header::ALLOW, ALLOW.clone());
        h.insert(header::SERVER, SERVER.clone());
        let preflight = req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if self.cors(req, h) && preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS.clone());
            h.insert(header::ACCESS_CONTROL_MAX_AGE, self.cors_max_age.clone());
        }
        r
    }

    /// Adds CORS headers for the request's `Origin`; returns whether the origin is allowed.
    /// With `"*"` the headers go on every response, Origin or not, so that a response cached
    /// downstream for a request without Origin still works for a browser player later.
    fn cors(&self, req: &Incoming<'_>, h: &mut HeaderMap) -> bool {
        if self.cors_any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE.clone());
            return true;
        }
        if self.cors_origins.is_empty() {
            return false;
        }
        // The answer depends on Origin whether or not this request sent one.
        h.append(header::VARY, VARY_ORIGIN.clone());
        match req.headers.get(header::ORIGIN) {
            Some(origin) if self.cors_origins.iter().any(|o| o == origin) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE.clone());
                true
            }
            _ => false,
        }
    }

    fn error(&self, req: &Incoming<'_>, status: StatusCode, text: &'static str) -> Response<Bytes> {
        let body = Bytes::from_static(text.as_bytes());
        let mut r = Response::new(if *req.method == Method::HEAD {
            Bytes::new()
        } else {
            body.clone()
        });
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header::CACHE_CONTROL, NO_STORE.clone());
        h.insert(header::SERVER, SERVER.clone());
        self.cors(req, h);
        r
    }

    fn respond(&self, req: &Incoming<'_>, path: &str, entry: &FileEntry) -> Response<Bytes> {
        let (content_type, kind) = content_type::classify(path);
        let mut headers = HeaderMap::with_capacity(12);
        headers.insert(header::ETAG, entry.etag.clone());
        headers.insert(header::LAST_MODIFIED, entry.last_modified.clone());
        headers.insert(header::CACHE_CONTROL, self.cache_control_for(kind).clone());
        headers.insert(header::SERVER, SERVER.clone());
        if req.secure
            && req.protocol != Protocol::H3
            && let Some(alt) = &self.alt_svc
        {
            headers.insert(header::ALT_SVC, alt.clone());
        }
        self.cors(req, &mut headers);

        if let Some(status) = precondition(req.headers, entry) {
            let mut r = Response::new(Bytes::new());
            *r.status_mut() = status;
            if status == StatusCode::PRECONDITION_FAILED {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            }
            *r.headers_mut() = headers;
            return r;
        }

        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(header::ACCEPT_RANGES, ACCEPT_RANGES.clone());
        let len = entry.len();
        let (status, body) = match select_range(req.headers, entry) {
            RangeChoice::Full => (StatusCode::OK, entry.body.clone()),
            RangeChoice::Unsatisfiable => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes */{len}")),
                );
                headers.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
                (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Bytes::from_static(b"range not satisfiable\n"),
                )
            }
            RangeChoice::Part(start, end) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes {start}-{end}/{len}")),
                );
                // The range was validated against the length, so the slice is in bounds.
                let (s, e) = (start as usize, end as usize + 1);
                (StatusCode::PARTIAL_CONTENT, entry.body.slice(s..e))
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = if *req.method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }
}

fn text_of(v: Option<&HeaderValue>) -> String {
    v.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn sha256(body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(body).into()
}

fn header_value(s: String) -> HeaderValue {
    // Only called with digits, spaces, '-', '/' and '*': always a valid header value.
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))
}

/// Splits a path-form token off the raw path: `/t/<token>/rest` gives `(Some(token), "/rest")`.
fn split_path_token(raw: &str) -> (Option<&str>, &str) {
    let Some(rest) = raw.strip_prefix(token::PATH_PREFIX) else {
        return (None, raw);
    };
    match rest.find('/') {
        Some(i) => (Some(&rest[..i]), &rest[i..]),
        None => (Some(rest), "/"),
    }
}

/// The token from the query (`token=`) or else the cookie (`estuary_token=`), percent-decoded.
fn find_token(req: &Incoming<'_>) -> Option<String> {
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    if let Some(query) = req.uri.query() {
        for pair in query.split('&') {
            if let Some(v) = pair
                .strip_prefix(token::QUERY_PARAM)
                .and_then(|r| r.strip_prefix('='))
            {
                return decode(v);
            }
        }
    }
    for cookies in req.headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some(v) = c
                .trim()
                .strip_prefix(token::COOKIE_NAME)
                .and_then(|r| r.strip_prefix('='))
            {
                return decode(v.trim_matches('"'));
            }
        }
    }
    None
}

/// What the conditional and range rules know an entry by.
fn validators(entry: &FileEntry) -> Validators<'_> {
    Validators {
        etag: entry.etag.as_bytes(),
        modified: Some(entry.modified),
    }
}

/// The conditional status an entry gets (`common::http_semantics::precondition`).
fn precondition(h: &HeaderMap, entry: &FileEntry) -> Option<StatusCode> {
    http_semantics::precondition(h, &validators(entry))
}

/// Whether `If-Range` is absent or names this entry.
fn if_range_matches(h: &HeaderMap, entry: &FileEntry) -> bool {
    http_semantics::if_range_matches(h, &validators(entry))
}

/// What part of the entry to send (`common::http_semantics::select_range`).
fn select_range(h: &HeaderMap, entry: &FileEntry) -> RangeChoice {
    http_semantics::select_range(h, &validators(entry), entry.len())
}

/// Records a request's metrics and access-log line when dropped: after the body has been
/// handed to the connection, or when the client went away first.
pub struct Finish {
    observer: Arc<Observer>,
    started: Instant,
    time: SystemTime,
    protocol: Protocol,
    status: u16,
    body_len: u64,
    /// Set when the whole body has been handed to the connection.
    pub complete: bool,
    /// Body bytes handed over, when the front end counted them (streamed bodies).
    pub sent: Option<u64>,
    /// When the last byte was handed over, if the front end waits on after that (HTTP/3
    /// waits for the client's acknowledgement to know whether the response was complete).
    pub handed_over: Option<Instant>,
    /// Whether to count and log this request at all (not for admin endpoints).
    record: bool,
    reason: Option<&'static str>,
    path: String,
    /// Request details kept only when the access log is on.
    details: Option<Box<Details>>,
}

/// Handles into the request, so that gathering them allocates nothing beyond this box: the
/// line is formatted once, when the request is done.
struct Details {
    client: SocketAddr,
    method: Method,
    user_agent: Option<HeaderValue>,
    cmcd: serde_json::Map<String, serde_json::Value>,
}

impl Finish {
    fn new(observer: &Arc<Observer>, req: &Incoming<'_>) -> Self {
        let details = observer.access_log.enabled().then(|| {
            let mut cmcd = serde_json::Map::new();
            if let Some(q) = req.uri.query() {
                for pair in q.split('&') {
                    if let Some(v) = pair.strip_prefix("CMCD=")
                        && let Ok(v) = percent_encoding::percent_decode_str(v).decode_utf8()
                    {
                        crate::cmcd::parse_into(&v, &mut cmcd);
                    }
                }
            }
            for name in crate::cmcd::HEADERS {
                if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                    crate::cmcd::parse_into(v, &mut cmcd);
                }
            }
            Box::new(Details {
                client: req.client,
                method: req.method.clone(),
                user_agent: req.headers.get(header::USER_AGENT).cloned(),
                cmcd,
            })
        });
        Self {
            observer: Arc::clone(observer),
            started: Instant::now(),
            time: SystemTime::now(),
            protocol: req.protocol,
            status: 0,
            body_len: 0,
            complete: false,
            sent: None,
            handed_over: None,
            record: true,
            reason: None,
            path: String::new(),
            details,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.record {
            return;
        }
        let seconds = self
            .handed_over
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.started)
            .as_secs_f64();
        let sent = match self.sent {
            Some(n) => n,
            None if self.complete => self.body_len,
            None => 0,
        };
        self.observer
            .metrics
            .observe_response(self.protocol, self.status, sent, seconds);
        if let Some(d) = self.details.take() {
            // At most 512 characters of the user agent.
            let user_agent = d
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(|s| s.char_indices().nth(512).map_or(s, |(end, _)| &s[..end]));
            self.observer.access_log.log(&AccessEntry {
                time: self.time,
                client: d.client.ip(),
                method: d.method.as_str(),
                path: &self.path,
                status: self.status,
                bytes: sent,
                duration: seconds,
                protocol: self.protocol.as_str(),
                user_agent,
                reason: self.reason,
                complete: self.complete,
                cmcd: &d.cmcd,
            });
        }
    }
}

impl estuary_common::service::admin::AdminEndpoints for Edge {
    fn registry(&self) -> &prometheus::Registry {
        &self.observer.metrics.registry
    }

    fn serving(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tokens_split_off() {
        assert_eq!(
            split_path_token("/t/abc/v/x.m4s"),
            (Some("abc"), "/v/x.m4s")
        );
        assert_eq!(split_path_token("/t/abc"), (Some("abc"), "/"));
        assert_eq!(split_path_token("/v/t/abc"), (None, "/v/t/abc"));
    }

    fn entry(len: usize) -> FileEntry {
        FileEntry {
            body: Bytes::from(vec![7u8; len]),
            etag: HeaderValue::from_static("\"e\""),
            last_modified: HeaderValue::from_static("Thu, 01 Jan 1970 00:00:10 GMT"),
            modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10),
        }
    }

    fn range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("header"));
        h
    }

    /// The shared rules (common::http_semantics, tested there) see the entry's own tag and
    /// modification time.
    #[test]
    fn ranges_and_conditionals_use_the_entry_validators() {
        let e = entry(100);
        let mut h = range("bytes=0-9");
        assert_eq!(select_range(&h, &e), RangeChoice::Part(0, 9));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"other\""));
        assert_eq!(select_range(&h, &e), RangeChoice::Full);
        h.insert(
            header::IF_RANGE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:10 GMT"),
        );
        assert_eq!(select_range(&h, &e), RangeChoice::Part(0, 9));
        assert!(if_range_matches(&h, &e));
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"e\""));
        assert_eq!(precondition(&h, &e), Some(StatusCode::NOT_MODIFIED));
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:09 GMT"),
        );
        assert_eq!(precondition(&h, &e), None);
    }
}
