//! Filling misses from upstream: one fetch per object however many clients ask (coalescing),
//! every waiting client streaming the bytes as they arrive (read-while-fill), sources tried in
//! order (the owning peer, parents, then origins) with a circuit breaker each.
//!
//! This file is the driver: it keeps the fills in flight, sends what [`FillMachine`]
//! (`fill_core.rs`, where the states, inputs, actions and the integrity invariant are
//! written down) asks for through an [`Upstream`], feeds back what came of it, and carries
//! out its actions on the fill's readers, the cache and the breakers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::breaker::Breaker;
use crate::cache::{Cache, CachedObject, slice_key};
use crate::clock::Clock;
use crate::fill_core::{Action, FillMachine, Input, RequestSpec, Settings, Want};
pub use crate::fill_core::{Fault, FillError, Head};
use crate::freshness::Overrides;
use crate::upstream::{HyperUpstream, Upstream, UpstreamBody, UpstreamResponse};

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
    /// Trusted besides the system's roots for `https://` sources.
    pub ca_file: Option<std::path::PathBuf>,
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
    settings: Arc<Settings>,
    sources: Vec<Source>,
    peers: Vec<Source>,
    ring: hrw_hash::HrwNodes<String>,
    upstream: Arc<dyn Upstream>,
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

/// The header that marks a request as a fill from another Estuary node. Its value is trusted
/// only when it is a valid fill credential for the request's path
/// (`estuary_common::token::verify_fill`): a client cannot steer the fill path with it.
pub const FILL_HEADER: &str = "x-estuary-fill";

impl Filler {
    /// A filler into `cache` over hyper's client, reading time from `clock` (the edge's one
    /// clock).
    pub fn new(
        config: FillConfig,
        cache: Cache,
        observer: Arc<dyn FillObserver>,
        clock: Clock,
    ) -> Result<Arc<Self>, estuary_common::http::HttpError> {
        let upstream = Arc::new(HyperUpstream::new(
            config.connect_timeout,
            config.ca_file.clone(),
        )?);
        Ok(Self::with_upstream(
            config, cache, observer, clock, upstream,
        ))
    }

    /// A filler that sends its requests through `upstream`.
    pub fn with_upstream(
        config: FillConfig,
        cache: Cache,
        observer: Arc<dyn FillObserver>,
        clock: Clock,
        upstream: Arc<dyn Upstream>,
    ) -> Arc<Self> {
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
        let settings = Arc::new(Settings {
            overrides: config.overrides.clone(),
            max_object_bytes: config.max_object_bytes,
            slice_bytes: config.slice_bytes,
            read_timeout: config.read_timeout,
        });
        Arc::new(Self {
            config,
            settings,
            sources,
            peers,
            ring,
            upstream,
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

    /// Drives one fill's [`FillMachine`] to its end.
    async fn run(&self, key: &str, fill: &Arc<Fill>, want: Want, via_peer: bool) {
        let now = self.clock.now();
        let owner = if via_peer { None } else { self.owner(key) };
        let allowed: Vec<&Source> = owner
            .into_iter()
            .chain(self.sources.iter())
            .filter(|s| s.breaker.lock().map(|mut b| b.allow(now)).unwrap_or(true))
            .collect();
        let kinds = allowed.iter().map(|s| s.kind).collect();
        let settings = Arc::clone(&self.settings);
        let mut machine = FillMachine::new(settings, key, want, kinds, new_generation());
        let mut body: Option<UpstreamBody> = None;
        let mut started = Instant::now();
        let mut purge_told = false;
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::Send { source, request } => {
                        let Some(src) = allowed.get(source) else {
                            machine.handle_input(
                                self.clock.system_time(),
                                Input::Failed(FillError::Request),
                            );
                            continue;
                        };
                        self.observer.fill_started(src.kind);
                        started = Instant::now();
                        body = None;
                        let input = match self.send(src, key, &request).await {
                            Ok(response) => {
                                body = Some(response.body);
                                Input::Head {
                                    status: response.status,
                                    headers: response.headers,
                                }
                            }
                            Err(error) => Input::Failed(error),
                        };
                        machine.handle_input(self.clock.system_time(), input);
                    }
                    Action::Publish { head, chunks, end } => fill.update(|s| {
                        if let Some(head) = head {
                            s.head.get_or_insert(head);
                        }
                        s.chunks.extend(chunks);
                        if end.is_some() {
                            s.outcome = end;
                        }
                    }),
                    Action::Insert { note_fill, objects } => {
                        self.cache_unless_purged(fill, |cache| {
                            if let Some(key) = &note_fill {
                                cache.note_fill(key);
                            }
                            for (key, object) in objects {
                                cache.insert(key, object);
                            }
                        });
                    }
                    Action::Remove { key } => self.cache.remove(&key),
                    Action::SourceDone { source, result } => {
                        if let Some(src) = allowed.get(source) {
                            self.source_done(src, key, result, started);
                        }
                    }
                }
            }
            if machine.is_done() {
                return;
            }
            if !purge_told && fill.purged.load(Ordering::Acquire) {
                purge_told = true;
                machine.handle_input(self.clock.system_time(), Input::Purged);
            }
            let wait = machine.poll_timeout().unwrap_or(self.config.read_timeout);
            let input = match body.as_mut() {
                Some(body) if machine.wants_body() => {
                    match tokio::time::timeout(wait, body.frame()).await {
                        Ok(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => Input::Chunk(data),
                            // Trailers: nothing the fill uses.
                            Err(_) => continue,
                        },
                        Ok(None) => Input::End,
                        Ok(Some(Err(_))) => Input::Failed(FillError::Truncated),
                        Err(_) => Input::Failed(FillError::Timeout),
                    }
                }
                // Not reachable (every send is answered at once), but never a busy loop.
                _ => Input::Failed(FillError::Unavailable),
            };
            machine.handle_input(self.clock.system_time(), input);
        }
    }

    /// Records one source's outcome in its breaker, the metrics and the log.
    fn source_done(
        &self,
        source: &Source,
        key: &str,
        result: Result<u64, FillError>,
        started: Instant,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(bytes) => {
                if let Ok(mut b) = source.breaker.lock() {
                    b.success();
                }
                self.observer
                    .fill_finished(source.kind, true, seconds, bytes);
            }
            Err(error) => {
                if error == FillError::Integrity {
                    self.observer.integrity_failure();
                }
                self.observer.fill_finished(source.kind, false, seconds, 0);
                if error.fault() != Fault::Upstream {
                    // Not the source's fault (its breaker does not count it), and no other
                    // source can help.
                    tracing::debug!(key, error = %error, "A fill ended without asking upstream further.");
                    return;
                }
                if let Ok(mut b) = source.breaker.lock() {
                    b.failure(self.clock.now());
                }
                tracing::warn!(source = %source.base, key, error = %error, "A fill from upstream failed.");
            }
        }
    }

    /// Sends one request to `source`: the target built from the canonical path `key`, the
    /// fill credential, and what the machine asked for. Waits at most the read timeout for
    /// the response head.
    async fn send(
        &self,
        source: &Source,
        key: &str,
        spec: &RequestSpec,
    ) -> Result<UpstreamResponse, FillError> {
        let query = match (&self.config.peer_token, source.kind) {
            (Some(sign), "peer") => Some(estuary_common::token::query_pair(&sign(key))),
            _ => None,
        };
        // `key` is the canonical path: the target is built from it, re-encoded, never by
        // pasting text into a URL.
        let Some(uri) = source.uri(key, query.as_deref()) else {
            return Err(FillError::Request);
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
        if let Some(v) = &spec.if_none_match {
            request = request.header(header::IF_NONE_MATCH, v.as_str());
        }
        if let Some(v) = &spec.range {
            request = request.header(header::RANGE, v.as_str());
        }
        if let Some(v) = &spec.if_range {
            request = request.header(header::IF_RANGE, v.as_str());
        }
        let request = request.body(()).map_err(|_| FillError::Request)?;
        match tokio::time::timeout(self.config.read_timeout, self.upstream.send(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(FillError::Unavailable),
            Err(_) => Err(FillError::Timeout),
        }
    }
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
