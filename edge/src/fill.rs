//! Filling misses from upstream: one fetch per object however many clients ask (coalescing),
//! every waiting client streaming the bytes as they arrive (read-while-fill), sources tried in
//! order (parents, then origins) with a circuit breaker each, and integrity checked before an
//! object is cached.
//!
//! Invariant: no client receives the last bytes of a body that failed its checks. The fill
//! publishes nothing of a body under 64 KiB before it is verified, streams a larger one as it
//! arrives but for the last byte received so far, and publishes the final byte only after the
//! length and `Content-Digest`/`Repr-Digest` have been verified; a failed fill ends every
//! waiting response with an error (the connection is cut, the player retries), and a failure
//! before anything was published moves on to the next source.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::breaker::Breaker;
use crate::cache::{Cache, CachedObject, Slicing, slice_key};
use crate::clock::Clock;
use crate::content_type;
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
enum Want {
    /// The object at a path, its slice `first_slice` when it turns out to be sliced.
    /// `stale` is the expired copy (or index), for a conditional request.
    Object {
        first_slice: u64,
        stale: Option<Arc<CachedObject>>,
    },
    /// One slice of an object whose index is known.
    Slice { index: u64, meta: Arc<CachedObject> },
}

#[derive(Debug, Default)]
struct Shared {
    head: Option<Arc<Head>>,
    chunks: Vec<Bytes>,
    outcome: Option<Result<(), FillError>>,
}

/// One fill in progress, shared by the task that fetches and every client that waits.
#[derive(Debug)]
pub struct Fill {
    shared: Mutex<Shared>,
    version: watch::Sender<u64>,
    /// A purge took this fill off the fills in flight: it ends for the clients already
    /// reading it, but what it fetched is not cached.
    purged: AtomicBool,
}

impl Fill {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            shared: Mutex::new(Shared::default()),
            version: watch::channel(0).0,
            purged: AtomicBool::new(false),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Shared)) {
        if let Ok(mut s) = self.shared.lock() {
            f(&mut s);
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Waits for the response head (or the fill's failure).
    pub async fn head(&self) -> Result<Arc<Head>, FillError> {
        let mut rx = self.version.subscribe();
        loop {
            if let Ok(s) = self.shared.lock() {
                if let Some(h) = &s.head {
                    return Ok(Arc::clone(h));
                }
                if let Some(Err(e)) = s.outcome {
                    return Err(e);
                }
                if let Some(Ok(())) = s.outcome {
                    return Err(FillError::Unavailable);
                }
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Unavailable);
            }
        }
    }

    /// Waits until the fill has ended; returns the whole body on success.
    pub async fn finished(self: &Arc<Self>) -> Result<Bytes, FillError> {
        let mut reader = self.reader();
        let mut body = Vec::new();
        while let Some(chunk) = reader.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(body))
    }

    /// A reader of the body from its first byte.
    pub fn reader(self: &Arc<Self>) -> FillReader {
        FillReader {
            fill: Arc::clone(self),
            next_chunk: 0,
            rx: self.version.subscribe(),
            skip: 0,
            remaining: None,
        }
    }
}

/// Streams a fill's body as its chunks are published.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    next_chunk: usize,
    rx: watch::Receiver<u64>,
    /// Bytes still to skip before the range starts.
    skip: u64,
    /// Bytes still to deliver, when reading a range.
    remaining: Option<u64>,
}

impl FillReader {
    /// Reads only bytes `start..=end` of the body, each as soon as it has arrived.
    pub fn range(mut self, start: u64, end: u64) -> Self {
        self.skip = start;
        self.remaining = Some(end.saturating_sub(start) + 1);
        self
    }

    /// The next piece of the body (or of the range), `None` at the end, or the fill's error.
    pub async fn next(&mut self) -> Option<Result<Bytes, FillError>> {
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            let mut chunk = match self.next_chunk_whole().await? {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() as u64);
                self.skip -= n;
                chunk = chunk.slice(n as usize..);
            }
            if let Some(rem) = self.remaining.as_mut() {
                let n = (*rem).min(chunk.len() as u64);
                chunk = chunk.slice(..n as usize);
                *rem -= n;
            }
            if !chunk.is_empty() {
                return Some(Ok(chunk));
            }
        }
    }

    async fn next_chunk_whole(&mut self) -> Option<Result<Bytes, FillError>> {
        loop {
            if let Ok(s) = self.fill.shared.lock() {
                if let Some(c) = s.chunks.get(self.next_chunk) {
                    self.next_chunk += 1;
                    return Some(Ok(c.clone()));
                }
                match s.outcome {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(FillError::Unavailable));
            }
        }
    }
}

/// A response body that arrives while it is filled: one fill's body (or a range of it), or a
/// range of a sliced object read slice by slice.
#[derive(Debug)]
pub enum BodyStream {
    Fill(FillReader),
    Sliced(Box<crate::slice::SlicedReader>),
}

impl BodyStream {
    /// The next piece, `None` at the end, or the error of a failed fill.
    pub async fn next(&mut self) -> Option<Result<Bytes, FillError>> {
        match self {
            BodyStream::Fill(r) => r.next().await,
            BodyStream::Sliced(r) => r.next().await,
        }
    }
}

/// An upstream source.
#[derive(Debug)]
struct Source {
    base: String,
    /// Scheme and authority of `base`, from which every request target is built (`None`: the
    /// base is not a URL; every request to it fails as the edge's fault).
    target: Option<(http::uri::Scheme, http::uri::Authority)>,
    kind: &'static str,
    breaker: Mutex<Breaker>,
}

impl Source {
    fn new(base: &str, kind: &'static str, breaker: Mutex<Breaker>) -> Self {
        let target = base.parse::<http::Uri>().ok().and_then(|u| {
            let parts = u.into_parts();
            Some((parts.scheme?, parts.authority?))
        });
        Self {
            base: base.trim_end_matches('/').to_owned(),
            target,
            kind,
            breaker,
        }
    }

    /// The URI of the object at the canonical path `path` on this source: the path
    /// re-encoded ([`crate::path::encode`]), with `query` if any, built from URI parts.
    fn uri(&self, path: &str, query: Option<&str>) -> Option<http::Uri> {
        let (scheme, authority) = self.target.clone()?;
        let encoded = crate::path::encode(path);
        let path_and_query = match query {
            Some(q) => http::uri::PathAndQuery::try_from(format!("{encoded}?{q}")),
            None => http::uri::PathAndQuery::try_from(encoded),
        }
        .ok()?;
        http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

/// Counters the filler reports to (kept by the edge's metrics).
pub trait FillObserver: Send + Sync {
    fn fill_started(&self, source_kind: &'static str);
    fn fill_finished(&self, source_kind: &'static str, ok: bool, seconds: f64, bytes: u64);
    fn integrity_failure(&self);
    fn coalesced(&self);
}

/// Mints the token for a peer fill of one path.
pub type PeerTokenSigner = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Settings of the filler.
#[derive(Clone)]
pub struct FillConfig {
    /// Same-site edges (base URLs, this node included); each object is owned by one of them
    /// by rendezvous hashing, and the others fill it from the owner.
    pub peers: Vec<String>,
    /// This node's own entry in `peers`.
    pub self_url: Option<String>,
    /// Signs the token a peer fill carries, when the paths are protected: the owner checks it
    /// like any other request.
    pub peer_token: Option<PeerTokenSigner>,
    /// Mints the fill header's value for a path (`token::sign_fill`): the credential by which
    /// a peer or parent knows a request as another node's fill. Without it (no keys) the
    /// header carries the node id only, which no edge trusts.
    pub fill_credential: Option<PeerTokenSigner>,
    pub parents: Vec<String>,
    pub origins: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest wait for a response head, and between two body chunks.
    pub read_timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cool_down: Duration,
    pub overrides: Overrides,
    /// Objects larger than this are relayed but not cached.
    pub max_object_bytes: u64,
    /// Objects larger than this are filled and kept in slices of this size (0: never).
    pub slice_bytes: u64,
    /// Sent upstream so that peers and parents do not fill from each other in loops.
    pub node_id: String,
}

/// Fetches misses, one fill per key at a time.
pub struct Filler {
    config: FillConfig,
    sources: Vec<Source>,
    peers: Vec<Source>,
    ring: hrw_hash::HrwNodes<String>,
    client: Client<HttpConnector, http_body_util::Empty<Bytes>>,
    in_flight: Mutex<HashMap<String, Arc<Fill>>>,
    cache: Cache,
    observer: Arc<dyn FillObserver>,
    clock: Clock,
}

impl std::fmt::Debug for Filler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filler")
            .field("sources", &self.sources)
            .finish()
    }
}

/// Bodies smaller than this are verified whole before any byte reaches a client.
const VERIFY_WHOLE_BELOW: u64 = 64 * 1024;

/// The header that marks a request as a fill from another Estuary node. Its value is trusted
/// only when it is a valid fill credential for the request's path
/// (`estuary_common::token::verify_fill`): a client cannot steer the fill path with it.
pub const FILL_HEADER: &str = "x-estuary-fill";

impl Filler {
    /// A filler into `cache`, reading time from `clock` (the edge's one clock).
    pub fn new(
        config: FillConfig,
        cache: Cache,
        observer: Arc<dyn FillObserver>,
        clock: Clock,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let breaker = || {
            Mutex::new(Breaker::new(
                config.breaker_threshold,
                config.breaker_cool_down,
            ))
        };
        let sources = config
            .parents
            .iter()
            .map(|b| (b, "parent"))
            .chain(config.origins.iter().map(|b| (b, "origin")))
            .map(|(base, kind)| Source::new(base, kind, breaker()))
            .collect();
        let peers: Vec<Source> = config
            .peers
            .iter()
            .map(|base| Source::new(base, "peer", breaker()))
            .collect();
        let ring = hrw_hash::HrwNodes::new(peers.iter().map(|p| p.base.clone()));
        Arc::new(Self {
            config,
            sources,
            peers,
            ring,
            client,
            in_flight: Mutex::new(HashMap::new()),
            cache,
            observer,
            clock,
        })
    }

    /// The cache fills go into.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The slice size of large objects (0: slicing is off).
    pub fn slice_bytes(&self) -> u64 {
        self.config.slice_bytes
    }

    /// Joins the fill of the object at `path`, starting it if none runs. `stale` is the
    /// expired copy (or index of a sliced object), if any, for a conditional request
    /// upstream. `first_slice` is the slice the client's range starts in, asked for first in
    /// case the object turns out to be sliced (0 for whole requests). `via_peer` marks a fill
    /// asked for by another edge: it never goes back to a peer, so peers cannot fill from
    /// each other in a loop.
    pub fn join(
        self: &Arc<Self>,
        path: &str,
        stale: Option<Arc<CachedObject>>,
        via_peer: bool,
        first_slice: u64,
    ) -> Arc<Fill> {
        let first_slice = if self.config.slice_bytes == 0 {
            0
        } else {
            first_slice
        };
        let key = if first_slice == 0 {
            path.to_owned()
        } else {
            format!("{path}\0probe{first_slice}")
        };
        self.start(key, path, Want::Object { first_slice, stale }, via_peer)
    }

    /// Joins the fill of slice `index` of the sliced object `meta` indexes.
    pub fn join_slice(
        self: &Arc<Self>,
        path: &str,
        index: u64,
        meta: &Arc<CachedObject>,
        via_peer: bool,
    ) -> Arc<Fill> {
        let want = Want::Slice {
            index,
            meta: Arc::clone(meta),
        };
        self.start(slice_key(path, index), path, want, via_peer)
    }

    /// [`Filler::join_slice`], unless the cache may already hold that slice.
    pub fn join_slice_if_missing(
        self: &Arc<Self>,
        path: &str,
        index: u64,
        meta: &Arc<CachedObject>,
        via_peer: bool,
    ) -> Option<Arc<Fill>> {
        if self.cache.contains(&slice_key(path, index)) {
            return None;
        }
        Some(self.join_slice(path, index, meta, via_peer))
    }

    /// The fills in flight by key (a poisoned lock still holds a consistent map: every update
    /// is one map operation).
    fn in_flight(&self) -> MutexGuard<'_, HashMap<String, Arc<Fill>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Purges `path` (every key under it when `prefix`) from the fills in flight, and an
    /// exact `path` from the cache: the fills go on for the clients already reading them,
    /// but are not cached, and the next request starts a new fill. A fill caches what it
    /// fetched under the same lock ([`Self::cache_unless_purged`]), so no fill that started
    /// before a purge is cached after it.
    pub fn purge(&self, path: &str, prefix: bool) {
        let mut map = self.in_flight();
        let covered = |key: &str| match key.strip_prefix(path) {
            Some(rest) => prefix || rest.is_empty() || rest.starts_with('\0'),
            None => false,
        };
        map.retain(|key, fill| {
            let purged = covered(key);
            if purged {
                fill.purged.store(true, Ordering::Release);
            }
            !purged
        });
        if !prefix {
            self.cache.remove(path);
        }
    }

    /// Runs `insert` on the cache unless a purge took `fill` off the fills in flight.
    fn cache_unless_purged(&self, fill: &Fill, insert: impl FnOnce(&Cache)) {
        let _map = self.in_flight();
        if !fill.purged.load(Ordering::Acquire) {
            insert(&self.cache);
        }
    }

    fn start(self: &Arc<Self>, key: String, path: &str, want: Want, via_peer: bool) -> Arc<Fill> {
        let mut map = self.in_flight();
        if let Some(fill) = map.get(&key) {
            self.observer.coalesced();
            return Arc::clone(fill);
        }
        let fill = Fill::new();
        map.insert(key.clone(), Arc::clone(&fill));
        drop(map);
        if let Want::Slice { index, .. } = &want {
            self.cache.note_fill(&slice_key(path, *index));
        } else {
            self.cache.note_fill(path);
        }
        let this = Arc::clone(self);
        let path = path.to_owned();
        let f = Arc::clone(&fill);
        // The fill runs on its own task: it completes (and is cached) even if every client
        // that asked for it goes away.
        tokio::spawn(async move {
            this.run(&path, &f, want, via_peer).await;
            // Unless a purge already took it off, and a new fill of the key took its place.
            let mut map = this.in_flight();
            if map.get(&key).is_some_and(|g| Arc::ptr_eq(g, &f)) {
                map.remove(&key);
            }
        });
        fill
    }

    /// The peer that owns `key`, unless it is this node.
    fn owner(&self, key: &str) -> Option<&Source> {
        let owner = self.ring.sorted(&key).next()?;
        let own = self
            .config
            .self_url
            .as_deref()
            .map(|s| s.trim_end_matches('/'));
        if Some(owner.as_str()) == own {
            return None;
        }
        self.peers.iter().find(|p| &p.base == owner)
    }

    async fn run(&self, key: &str, fill: &Arc<Fill>, want: Want, via_peer: bool) {
        let mut last_error = FillError::Unavailable;
        let now = self.clock.now();
        let owner = if via_peer { None } else { self.owner(key) };
        let allowed: Vec<&Source> = owner
            .into_iter()
            .chain(self.sources.iter())
            .filter(|s| s.breaker.lock().map(|mut b| b.allow(now)).unwrap_or(true))
            .collect();
        for source in allowed {
            let started = Instant::now();
            self.observer.fill_started(source.kind);
            match self.fetch(source, key, fill, &want).await {
                Ok(bytes) => {
                    if let Ok(mut b) = source.breaker.lock() {
                        b.success();
                    }
                    self.observer.fill_finished(
                        source.kind,
                        true,
                        started.elapsed().as_secs_f64(),
                        bytes,
                    );
                    return;
                }
                Err((error, published)) => {
                    self.observer.fill_finished(
                        source.kind,
                        false,
                        started.elapsed().as_secs_f64(),
                        0,
                    );
                    if error.fault() != Fault::Upstream {
                        // Not the source's fault (its breaker does not count it), and no
                        // other source can help.
                        tracing::debug!(key, error = %error, "A fill ended without asking upstream further.");
                        fill.update(|s| s.outcome = Some(Err(error)));
                        return;
                    }
                    if let Ok(mut b) = source.breaker.lock() {
                        b.failure(self.clock.now());
                    }
                    tracing::warn!(source = %source.base, key, error = %error, "A fill from upstream failed.");
                    last_error = error;
                    if published {
                        // Clients already have part of this body: end them with the error.
                        fill.update(|s| s.outcome = Some(Err(error)));
                        return;
                    }
                }
            }
        }
        fill.update(|s| s.outcome = Some(Err(last_error)));
    }

    /// Fetches from one source. On error, says whether anything was published to clients.
    async fn fetch(
        &self,
        source: &Source,
        key: &str,
        fill: &Arc<Fill>,
        want: &Want,
    ) -> Result<u64, (FillError, bool)> {
        let query = match (&self.config.peer_token, source.kind) {
            (Some(sign), "peer") => Some(estuary_common::token::query_pair(&sign(key))),
            _ => None,
        };
        // `key` is the canonical path: the target is built from it, re-encoded, never by
        // pasting text into a URL.
        let Some(uri) = source.uri(key, query.as_deref()) else {
            return Err((FillError::Request, false));
        };
        // Peers and parents are Estuary nodes, told by a credential that this is a fill (so
        // they do not pass it on to a peer); origins only learn which node asks.
        let fill_header = match (&self.config.fill_credential, source.kind) {
            (Some(sign), "peer" | "parent") => sign(key),
            _ => self.config.node_id.clone(),
        };
        let mut request = http::Request::get(uri)
            .header(header::ACCEPT_ENCODING, "identity")
            .header(FILL_HEADER, fill_header);
        let stale = match want {
            Want::Object { stale, .. } => stale.as_deref(),
            Want::Slice { .. } => None,
        };
        if let Some(old) = stale.filter(|o| o.status == 200 && !o.upstream_etag.is_empty()) {
            request = request.header(header::IF_NONE_MATCH, old.upstream_etag.as_str());
        }
        match want {
            Want::Object { first_slice, .. } if self.config.slice_bytes > 0 => {
                let range = slice::slice_request(*first_slice, self.config.slice_bytes);
                request = request.header(header::RANGE, range);
            }
            Want::Slice { index, meta } => {
                let Slicing::Meta { slice_size, .. } = meta.slicing else {
                    return Err((FillError::Unavailable, false));
                };
                request = request.header(header::RANGE, slice::slice_request(*index, slice_size));
                // If the object changed upstream, the answer is the new whole object (200),
                // never a slice of it to be mixed with slices of the old one.
                if meta.upstream_etag.starts_with('"') {
                    request = request.header(header::IF_RANGE, meta.upstream_etag.as_str());
                } else if !meta.last_modified.is_empty() {
                    request = request.header(header::IF_RANGE, meta.last_modified.as_str());
                }
            }
            Want::Object { .. } => {}
        }
        let request = request
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|_| (FillError::Request, false))?;
        let response = match tokio::time::timeout(
            self.config.read_timeout,
            self.client.request(request),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err((FillError::Unavailable, false)),
            Err(_) => return Err((FillError::Timeout, false)),
        };
        let status = response.status();
        let (parts, body) = response.into_parts();
        let now = self.clock.system_time();
        let unix_now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let kind = content_type::classify(key).1;
        let lifetime = |status: StatusCode| {
            freshness::lifetime(status, &parts.headers, kind, &self.config.overrides, now)
        };

        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = stale
        {
            // Revalidated: the stored body (or slices) is still right; only its lifetime is
            // new.
            let mut refreshed = old.clone();
            let ttl = lifetime(StatusCode::OK).unwrap_or(Duration::ZERO);
            refreshed.stored_at = unix_now;
            refreshed.fresh_until = unix_now + ttl.as_secs();
            let len = refreshed.body.len() as u64;
            let chunk = refreshed.body.clone();
            let mut head = head_of(&refreshed);
            let sliced = matches!(refreshed.slicing, Slicing::Meta { .. });
            let refreshed = Arc::new(refreshed);
            if sliced {
                head.meta = Some(Arc::clone(&refreshed));
            }
            // Cached before the fill ends, so a client that saw the end finds it.
            self.cache_unless_purged(fill, |cache| {
                cache.insert(key.to_owned(), Arc::unwrap_or_clone(refreshed));
            });
            fill.update(|s| {
                s.head = Some(Arc::new(head));
                if !sliced {
                    s.chunks.push(chunk);
                }
                s.outcome = Some(Ok(()));
            });
            return Ok(len);
        }

        let content_range = parts
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(slice::parse_content_range);
        let text =
            |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let upstream_etag = parts.headers.get(header::ETAG).cloned();
        let last_modified = parts.headers.get(header::LAST_MODIFIED).cloned();
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let shape = match want {
            Want::Slice { index, meta } => {
                let Slicing::Meta {
                    total, slice_size, ..
                } = meta.slicing
                else {
                    return Err((FillError::Unavailable, false));
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
                        Shape::Slice {
                            index: *index,
                            meta: Arc::clone(meta),
                            new_meta: false,
                        }
                    }
                    (s, _) if s.is_server_error() => return Err((FillError::Unavailable, false)),
                    _ => {
                        // The object changed or went away upstream: forget its index, so the
                        // next request learns the new one.
                        tracing::info!(key, %status, "A sliced object changed upstream; its index is dropped.");
                        self.cache.remove(key);
                        return Err((FillError::Changed, false));
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
                ) if last + 1 == complete && *first_slice == 0 => Shape::Whole {
                    status: StatusCode::OK,
                    length: Some(complete),
                    partial: false,
                },
                (StatusCode::PARTIAL_CONTENT, Some(cr))
                    if slice::answers_slice(cr, *first_slice, self.config.slice_bytes) =>
                {
                    let ContentRange::Bytes { complete, .. } = cr else {
                        return Err((FillError::Unavailable, false));
                    };
                    let d = freshness::directives(&parts.headers);
                    let ttl = lifetime(StatusCode::OK);
                    let meta = CachedObject {
                        status: 200,
                        content_type: text(parts.headers.get(header::CONTENT_TYPE)),
                        upstream_etag: text(upstream_etag.as_ref()),
                        last_modified: text(last_modified.as_ref()),
                        stored_at: unix_now,
                        // Not cacheable: used for this request only (0 = never stored).
                        fresh_until: ttl.map_or(0, |t| unix_now + t.as_secs()),
                        stale_while_revalidate: d.stale_while_revalidate.unwrap_or(0),
                        stale_if_error: d.stale_if_error.unwrap_or(0),
                        sha256: [0; 32],
                        slicing: Slicing::Meta {
                            total: complete,
                            slice_size: self.config.slice_bytes,
                            generation: new_generation(),
                        },
                        body: Bytes::new(),
                        prepared: Default::default(),
                    };
                    Shape::Slice {
                        index: *first_slice,
                        meta: Arc::new(meta),
                        new_meta: true,
                    }
                }
                (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Some(ContentRange::Unsatisfied { complete }),
                ) => {
                    if complete == 0 {
                        // An empty object: no byte range exists.
                        Shape::Whole {
                            status: StatusCode::OK,
                            length: Some(0),
                            partial: true,
                        }
                    } else {
                        let head = Head {
                            status,
                            content_length: Some(complete),
                            upstream_etag,
                            last_modified,
                            meta: None,
                            slice: None,
                        };
                        fill.update(|s| {
                            s.head = Some(Arc::new(head));
                            s.outcome = Some(Ok(()));
                        });
                        return Ok(0);
                    }
                }
                (StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE, _) => {
                    return Err((FillError::Unavailable, false));
                }
                // A peer answers with the object or a 404; anything else (a refused token, an
                // overloaded peer) means: ask the next source.
                (StatusCode::OK | StatusCode::NOT_FOUND, _) => Shape::Whole {
                    status,
                    length: content_length,
                    partial: false,
                },
                (s, _) if s.is_client_error() && source.kind != "peer" => Shape::Whole {
                    status,
                    length: content_length,
                    partial: false,
                },
                _ => return Err((FillError::Unavailable, false)),
            },
        };
        // The integrity field that covers this body: Content-Digest always; Repr-Digest only
        // when the body is the whole representation.
        let whole = matches!(shape, Shape::Whole { .. });
        let expected_digest = parts
            .headers
            .get("content-digest")
            .or_else(|| whole.then(|| parts.headers.get("repr-digest")).flatten())
            .and_then(|v| v.to_str().ok())
            .and_then(crate::digest::sha256_of_field);
        let (head, expected_len) = match &shape {
            Shape::Whole {
                status,
                length,
                partial,
            } => (
                Head {
                    status: *status,
                    content_length: *length,
                    upstream_etag: upstream_etag.clone(),
                    last_modified: last_modified.clone(),
                    meta: None,
                    slice: None,
                },
                // The body of a 416 for an empty object is an error text, not the object.
                if *partial { Some(0) } else { *length },
            ),
            Shape::Slice { index, meta, .. } => {
                let Slicing::Meta {
                    total, slice_size, ..
                } = meta.slicing
                else {
                    return Err((FillError::Unavailable, false));
                };
                let (start, end) = slice::slice_bounds(*index, slice_size, total);
                (
                    Head {
                        status: StatusCode::OK,
                        content_length: Some(total),
                        upstream_etag: upstream_etag.clone(),
                        last_modified: last_modified.clone(),
                        meta: Some(Arc::clone(meta)),
                        slice: Some(*index),
                    },
                    Some(end - start),
                )
            }
        };
        let head = Arc::new(head);
        let skip_body = matches!(shape, Shape::Whole { partial: true, .. });
        let (received, sha256, mut all, held) = self
            .receive(body, fill, &head, expected_len, expected_digest, skip_body)
            .await?;
        all.extend(held.iter().cloned());

        match shape {
            Shape::Whole { status, .. } => {
                if received <= self.config.max_object_bytes
                    && let Some(ttl) = lifetime(status)
                {
                    let d = freshness::directives(&parts.headers);
                    let object = CachedObject {
                        status: status.as_u16(),
                        content_type: text(parts.headers.get(header::CONTENT_TYPE)),
                        upstream_etag: text(upstream_etag.as_ref()),
                        last_modified: text(last_modified.as_ref()),
                        stored_at: unix_now,
                        fresh_until: unix_now + ttl.as_secs(),
                        stale_while_revalidate: d.stale_while_revalidate.unwrap_or(0),
                        stale_if_error: d.stale_if_error.unwrap_or(0),
                        sha256,
                        slicing: Slicing::Whole,
                        body: concat(&all, received),
                        prepared: Default::default(),
                    };
                    self.cache_unless_purged(fill, |cache| cache.insert(key.to_owned(), object));
                }
            }
            Shape::Slice {
                index,
                meta,
                new_meta,
            } if meta.fresh_until > 0 => {
                let Slicing::Meta { generation, .. } = meta.slicing else {
                    return Ok(received);
                };
                let slice_key = slice_key(key, index);
                let mut slice = CachedObject::clone(&meta);
                slice.sha256 = sha256;
                slice.slicing = Slicing::Slice { index, generation };
                slice.body = concat(&all, received);
                self.cache_unless_purged(fill, |cache| {
                    if new_meta {
                        cache.note_fill(&slice_key);
                        cache.insert(key.to_owned(), Arc::unwrap_or_clone(meta));
                    }
                    cache.insert(slice_key, slice);
                });
            }
            Shape::Slice { .. } => {}
        }
        // Verified and cached: publish the rest and end the fill.
        fill.update(|s| {
            s.head.get_or_insert(Arc::clone(&head));
            s.chunks.extend(held);
            s.outcome = Some(Ok(()));
        });
        Ok(received)
    }

    /// Receives a body, publishing it to the fill's readers as the module's invariant allows,
    /// and checks its length and digest. Returns its length, sha-256, the pieces published
    /// and the pieces held back (published by the caller once the object is cached).
    async fn receive(
        &self,
        mut body: hyper::body::Incoming,
        fill: &Arc<Fill>,
        head: &Arc<Head>,
        expected_len: Option<u64>,
        expected_digest: Option<[u8; 32]>,
        skip_body: bool,
    ) -> Result<(u64, [u8; 32], Vec<Bytes>, Vec<Bytes>), (FillError, bool)> {
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut held: Vec<Bytes> = Vec::new();
        let mut published = false;
        let mut all: Vec<Bytes> = Vec::new();
        let keep = |chunks: &mut Vec<Bytes>, all: &mut Vec<Bytes>, c: Bytes| {
            all.push(c.clone());
            chunks.push(c);
        };
        loop {
            if skip_body {
                break;
            }
            let frame = match tokio::time::timeout(self.config.read_timeout, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err((FillError::Truncated, published)),
                Err(_) => return Err((FillError::Timeout, published)),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            received += data.len() as u64;
            if expected_len.is_some_and(|n| received > n) {
                return Err((FillError::Truncated, published));
            }
            hasher.update(&data);
            held.push(data);
            // Small objects are verified whole before a byte goes out (so a bad source can
            // still be replaced by the next one); larger ones (by their announced length, or
            // once that much has arrived) stream at once, always holding the last byte
            // received back until the end is verified.
            let large = expected_len.map_or(received, |n| n.max(received)) >= VERIFY_WHOLE_BELOW;
            if large && held.iter().map(Bytes::len).sum::<usize>() > 1 {
                let mut ready = std::mem::take(&mut held);
                if let Some(newest) = ready.pop() {
                    let cut = newest.len().saturating_sub(1);
                    if cut > 0 {
                        ready.push(newest.slice(..cut));
                    }
                    held.push(newest.slice(cut..));
                }
                let h = Arc::clone(head);
                fill.update(|s| {
                    s.head.get_or_insert(h);
                    for c in ready {
                        keep(&mut s.chunks, &mut all, c);
                    }
                });
                published = true;
            }
        }
        if expected_len.is_some_and(|n| received != n) {
            return Err((FillError::Truncated, published));
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        if let Some(expected) = expected_digest
            && expected != sha256
            && !skip_body
        {
            self.observer.integrity_failure();
            return Err((FillError::Integrity, published));
        }
        Ok((received, sha256, all, held))
    }
}

/// How an upstream answer is kept.
enum Shape {
    /// The whole object (or a remembered 404). `partial`: the answer was a 416 for an empty
    /// object, whose body is not the object's.
    Whole {
        status: StatusCode,
        length: Option<u64>,
        partial: bool,
    },
    /// One slice of a sliced object; `new_meta` when this answer is the first to describe it.
    Slice {
        index: u64,
        meta: Arc<CachedObject>,
        new_meta: bool,
    },
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

/// A fresh generation for a newly described sliced object (random, so that slices left over
/// from before a purge or a restart never match it).
fn new_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(base: &str) -> Source {
        Source::new(base, "origin", Mutex::new(Breaker::new(3, Duration::ZERO)))
    }

    #[test]
    fn upstream_targets_are_re_encoded_from_the_canonical_path() {
        let s = source("http://10.0.0.1:9000");
        let uri = |p: &str, q: Option<&str>| s.uri(p, q).map(|u| u.to_string());
        assert_eq!(
            uri("/v/a/seg_1.m4s", None).as_deref(),
            Some("http://10.0.0.1:9000/v/a/seg_1.m4s")
        );
        assert_eq!(
            uri("/x y`<\u{e9}", None).as_deref(),
            Some("http://10.0.0.1:9000/x%20y%60%3C%C3%A9")
        );
        assert_eq!(
            uri("/v/a", Some("token=abc")).as_deref(),
            Some("http://10.0.0.1:9000/v/a?token=abc")
        );
        // A base that is not a URL: no request, and not the source's fault.
        assert_eq!(source("not a url").uri("/v/a", None), None);
        assert_eq!(FillError::Request.fault(), Fault::Internal);
    }

    #[test]
    fn only_the_upstreams_own_failures_are_its_fault() {
        for e in [
            FillError::Unavailable,
            FillError::Timeout,
            FillError::Integrity,
            FillError::Truncated,
        ] {
            assert_eq!(e.fault(), Fault::Upstream, "{e}");
        }
        assert_eq!(FillError::Changed.fault(), Fault::Nobody);
    }

    proptest::proptest! {
        /// Every canonical path makes a valid upstream target, which names the same path.
        #[test]
        fn every_canonical_path_makes_a_target(raw in "/[a-zA-Z0-9%./ `<>{}|^\u{e9}_~!$&'()*+,;=:@-]{0,48}") {
            if let Ok(p) = crate::path::normalize(&raw) {
                let uri = source("http://127.0.0.1:1").uri(&p, None);
                proptest::prop_assert!(uri.is_some(), "{}", p);
                let uri = uri.unwrap_or_default();
                proptest::prop_assert_eq!(crate::path::normalize(uri.path()), Ok(p));
            }
        }
    }
}
