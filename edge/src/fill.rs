//! Filling misses from upstream: one fetch per object however many clients ask (coalescing),
//! every waiting client streaming the bytes as they arrive (read-while-fill), sources tried in
//! order (parents, then origins) with a circuit breaker each, and integrity checked before an
//! object is cached.
//!
//! Invariant: no client receives the last bytes of a body that failed its checks. The fill
//! publishes nothing of a body under 256 KiB before it is verified, holds the latest piece of
//! a larger one back until the next arrives, and publishes the final piece only after the
//! length and `Content-Digest`/`Repr-Digest` have been verified; a failed fill ends every
//! waiting response with an error (the connection is cut, the player retries), and a failure
//! before anything was published moves on to the next source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
use crate::cache::{Cache, CachedObject};
use crate::content_type;
use crate::freshness::{self, Overrides};

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
}

/// The response head of a fill, as published to waiting clients.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    pub content_length: Option<u64>,
    pub upstream_etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
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
}

impl Fill {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            shared: Mutex::new(Shared::default()),
            version: watch::channel(0).0,
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
    kind: &'static str,
    breaker: Mutex<Breaker>,
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
}

impl std::fmt::Debug for Filler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filler")
            .field("sources", &self.sources)
            .finish()
    }
}

/// Bodies smaller than this are verified whole before any byte reaches a client.
const VERIFY_WHOLE_BELOW: u64 = 256 * 1024;

/// The header that marks a request as a fill from another Estuary node.
pub const FILL_HEADER: &str = "x-estuary-fill";

impl Filler {
    pub fn new(config: FillConfig, cache: Cache, observer: Arc<dyn FillObserver>) -> Arc<Self> {
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
            .map(|(base, kind)| Source {
                base: base.trim_end_matches('/').to_owned(),
                kind,
                breaker: breaker(),
            })
            .collect();
        let peers: Vec<Source> = config
            .peers
            .iter()
            .map(|base| Source {
                base: base.trim_end_matches('/').to_owned(),
                kind: "peer",
                breaker: breaker(),
            })
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
        })
    }

    /// The cache fills go into.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Joins the fill for `key`, starting it if none runs. `stale` is the expired copy, if
    /// any, for a conditional request upstream.
    /// `via_peer` marks a fill asked for by another edge: it never goes back to a peer, so
    /// peers cannot fill from each other in a loop.
    pub fn join(
        self: &Arc<Self>,
        key: &str,
        stale: Option<Arc<CachedObject>>,
        via_peer: bool,
    ) -> Arc<Fill> {
        let Ok(mut map) = self.in_flight.lock() else {
            return Fill::new();
        };
        if let Some(fill) = map.get(key) {
            self.observer.coalesced();
            return Arc::clone(fill);
        }
        let fill = Fill::new();
        map.insert(key.to_owned(), Arc::clone(&fill));
        drop(map);
        let this = Arc::clone(self);
        let key = key.to_owned();
        let f = Arc::clone(&fill);
        // The fill runs on its own task: it completes (and is cached) even if every client
        // that asked for it goes away.
        tokio::spawn(async move {
            this.run(&key, &f, stale, via_peer).await;
            if let Ok(mut map) = this.in_flight.lock() {
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

    async fn run(
        &self,
        key: &str,
        fill: &Arc<Fill>,
        stale: Option<Arc<CachedObject>>,
        via_peer: bool,
    ) {
        let mut last_error = FillError::Unavailable;
        let now = Instant::now();
        let owner = if via_peer { None } else { self.owner(key) };
        let allowed: Vec<&Source> = owner
            .into_iter()
            .chain(self.sources.iter())
            .filter(|s| s.breaker.lock().map(|mut b| b.allow(now)).unwrap_or(true))
            .collect();
        for source in allowed {
            let started = Instant::now();
            self.observer.fill_started(source.kind);
            match self.fetch(source, key, fill, stale.as_deref()).await {
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
                    if let Ok(mut b) = source.breaker.lock() {
                        b.failure(Instant::now());
                    }
                    self.observer.fill_finished(
                        source.kind,
                        false,
                        started.elapsed().as_secs_f64(),
                        0,
                    );
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
        stale: Option<&CachedObject>,
    ) -> Result<u64, (FillError, bool)> {
        let uri = match (&self.config.peer_token, source.kind) {
            (Some(sign), "peer") => format!(
                "{}{}?{}",
                source.base,
                key,
                estuary_common::token::query_pair(&sign(key))
            ),
            _ => format!("{}{}", source.base, key),
        };
        let mut request = http::Request::get(&uri)
            .header(header::ACCEPT_ENCODING, "identity")
            .header(FILL_HEADER, self.config.node_id.as_str());
        if let Some(old) = stale.filter(|o| o.status == 200 && !o.upstream_etag.is_empty()) {
            request = request.header(header::IF_NONE_MATCH, old.upstream_etag.as_str());
        }
        let request = request
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|_| (FillError::Unavailable, false))?;
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
        let (parts, mut body) = response.into_parts();
        let now = SystemTime::now();
        let unix_now = estuary_common::unix_now();
        let kind = content_type::classify(key).1;

        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = stale
        {
            // Revalidated: the stored body is still right; only its lifetime is new.
            let mut refreshed = old.clone();
            let ttl = freshness::lifetime(
                StatusCode::OK,
                &parts.headers,
                kind,
                &self.config.overrides,
                now,
            )
            .unwrap_or(Duration::ZERO);
            refreshed.stored_at = unix_now;
            refreshed.fresh_until = unix_now + ttl.as_secs();
            let len = refreshed.body.len() as u64;
            let chunk = refreshed.body.clone();
            fill.update(|s| {
                s.head = Some(Arc::new(head_of(&refreshed)));
                s.chunks.push(chunk);
                s.outcome = Some(Ok(()));
            });
            self.cache.insert(key.to_owned(), refreshed);
            return Ok(len);
        }
        let answer = if source.kind == "peer" {
            // A peer answers with the object or a 404; anything else (a refused token, an
            // overloaded peer) means: ask the next source.
            status == StatusCode::OK || status == StatusCode::NOT_FOUND
        } else {
            status == StatusCode::OK || status.is_client_error()
        };
        if !answer {
            return Err((FillError::Unavailable, false));
        }
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let expected_digest = ["content-digest", "repr-digest"]
            .iter()
            .find_map(|n| parts.headers.get(*n))
            .and_then(|v| v.to_str().ok())
            .and_then(crate::digest::sha256_of_field);
        let head = Arc::new(Head {
            status,
            content_length,
            upstream_etag: parts.headers.get(header::ETAG).cloned(),
            last_modified: parts.headers.get(header::LAST_MODIFIED).cloned(),
        });

        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut held: Vec<Bytes> = Vec::new();
        let mut published = false;
        let keep = |chunks: &mut Vec<Bytes>, all: &mut Vec<Bytes>, c: Bytes| {
            all.push(c.clone());
            chunks.push(c);
        };
        let mut all: Vec<Bytes> = Vec::new();
        loop {
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
            if content_length.is_some_and(|n| received > n) {
                return Err((FillError::Truncated, published));
            }
            hasher.update(&data);
            held.push(data);
            // Small objects are verified whole before a byte goes out (so a bad source can
            // still be replaced by the next one); larger ones stream, always holding the
            // latest piece back until the end is verified.
            if received >= VERIFY_WHOLE_BELOW && held.len() > 1 {
                let last = held.pop();
                let ready = std::mem::take(&mut held);
                held.extend(last);
                let h = Arc::clone(&head);
                fill.update(|s| {
                    s.head.get_or_insert(h);
                    for c in ready {
                        keep(&mut s.chunks, &mut all, c);
                    }
                });
                published = true;
            }
        }
        if content_length.is_some_and(|n| received != n) {
            return Err((FillError::Truncated, published));
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        if let Some(expected) = expected_digest
            && expected != sha256
        {
            self.observer.integrity_failure();
            return Err((FillError::Integrity, published));
        }
        // Verified: publish the rest and end the fill.
        fill.update(|s| {
            s.head.get_or_insert(Arc::clone(&head));
            for c in held.drain(..) {
                keep(&mut s.chunks, &mut all, c);
            }
            s.outcome = Some(Ok(()));
        });
        if received <= self.config.max_object_bytes
            && let Some(ttl) =
                freshness::lifetime(status, &parts.headers, kind, &self.config.overrides, now)
        {
            let d = freshness::directives(&parts.headers);
            let text =
                |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let mut body = Vec::with_capacity(received as usize);
            for c in &all {
                body.extend_from_slice(c);
            }
            self.cache.insert(
                key.to_owned(),
                CachedObject {
                    status: status.as_u16(),
                    content_type: text(parts.headers.get(header::CONTENT_TYPE)),
                    upstream_etag: text(parts.headers.get(header::ETAG)),
                    last_modified: text(parts.headers.get(header::LAST_MODIFIED)),
                    stored_at: unix_now,
                    fresh_until: unix_now + ttl.as_secs(),
                    stale_while_revalidate: d.stale_while_revalidate.unwrap_or(0),
                    stale_if_error: d.stale_if_error.unwrap_or(0),
                    sha256,
                    body: Bytes::from(body),
                },
            );
        }
        Ok(received)
    }
}

fn head_of(o: &CachedObject) -> Head {
    let hv = |s: &str| {
        (!s.is_empty())
            .then(|| HeaderValue::from_str(s).ok())
            .flatten()
    };
    Head {
        status: StatusCode::from_u16(o.status).unwrap_or(StatusCode::OK),
        content_length: Some(o.body.len() as u64),
        upstream_etag: hv(&o.upstream_etag),
        last_modified: hv(&o.last_modified),
    }
}
