//! The fill path without sockets: the real [`Filler`] (driver and [`FillMachine`]) over a
//! scripted [`FakeUpstream`], a RAM-only cache and a manual [`Clock`]. Each test runs in
//! milliseconds; the upstream timeout runs on tokio's paused time.
//!
//! [`FillMachine`]: crate::fill_core::FillMachine

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::cache::{Cache, CachedObject, RamPolicy, SessionKey, TierConfig};
use crate::clock::{Clock, ManualClock};
use crate::fill::{FillConfig, FillError, FillObserver, Filler};
use crate::plan::{self, OnError, Plan};
use crate::upstream::{BodyCut, SendFuture, Unreachable, Upstream, UpstreamResponse};

/// A request the fake upstream received.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the fake upstream does with one request.
enum Reply {
    /// Connection refused.
    Refuse,
    /// No response head, ever.
    Hang,
    Respond(UpstreamResponse),
}

type Script = Box<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An upstream that answers from a script and remembers every request.
struct FakeUpstream {
    script: Script,
    seen: Mutex<Vec<Seen>>,
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeUpstream")
    }
}

impl FakeUpstream {
    fn new(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Upstream for FakeUpstream {
    fn send(&self, request: http::Request<()>) -> SendFuture<'_> {
        let seen = Seen {
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
        };
        let reply = (self.script)(&seen);
        if let Ok(mut s) = self.seen.lock() {
            s.push(seen);
        }
        Box::pin(async move {
            match reply {
                Reply::Refuse => Err(Unreachable),
                Reply::Hang => std::future::pending().await,
                Reply::Respond(r) => Ok(r),
            }
        })
    }
}

/// A body fed piece by piece through a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Result<Bytes, BodyCut>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

type BodySender = mpsc::UnboundedSender<Result<Bytes, BodyCut>>;

fn headers_of(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// A response whose body arrives through the returned sender.
fn streamed(status: u16, pairs: &[(&str, String)]) -> (Reply, BodySender) {
    let (tx, rx) = mpsc::unbounded_channel();
    let response = UpstreamResponse {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        headers: headers_of(pairs),
        body: BoxBody::new(ChannelBody(rx)),
    };
    (Reply::Respond(response), tx)
}

/// A response with its whole body (and its `Content-Length`).
fn respond(status: u16, pairs: &[(&str, String)], body: &[u8]) -> Reply {
    let mut pairs = pairs.to_vec();
    pairs.push(("content-length", body.len().to_string()));
    let (reply, tx) = streamed(status, &pairs);
    let _ = tx.send(Ok(Bytes::copy_from_slice(body)));
    reply
}

#[derive(Debug, Default)]
struct Counts {
    coalesced: AtomicU64,
    integrity_failures: AtomicU64,
}

impl FillObserver for Counts {
    fn fill_started(&self, _: &'static str) {}
    fn fill_finished(&self, _: &'static str, _: bool, _: f64, _: u64) {}
    fn integrity_failure(&self) {
        self.integrity_failures.fetch_add(1, Ordering::SeqCst);
    }
    fn coalesced(&self) {
        self.coalesced.fetch_add(1, Ordering::SeqCst);
    }
}

struct Quiet;
impl crate::cache::CacheObserver for Quiet {
    fn ram_evicted(&self, _: u64) {}
    fn disk_admission(&self, _: bool) {}
}

fn config() -> FillConfig {
    FillConfig {
        peers: Vec::new(),
        self_url: None,
        peer_token: None,
        fill_credential: None,
        parents: Vec::new(),
        origins: vec!["http://origin.test".into()],
        connect_timeout: Duration::from_secs(1),
        ca_file: None,
        read_timeout: Duration::from_secs(5),
        breaker_threshold: 3,
        breaker_cool_down: Duration::from_secs(30),
        overrides: Default::default(),
        max_object_bytes: 8 << 20,
        slice_bytes: 0,
        node_id: "edge-test".into(),
    }
}

/// The pieces of one harness: the filler under test and its surroundings.
struct Harness {
    filler: Arc<Filler>,
    upstream: Arc<FakeUpstream>,
    clock: Clock,
    hand: Arc<ManualClock>,
    counts: Arc<Counts>,
}

async fn harness(config: FillConfig, upstream: Arc<FakeUpstream>) -> Harness {
    let (clock, hand) = Clock::manual();
    let tiers = TierConfig {
        ram_bytes: 64 << 20,
        disk_dir: None,
        disk_bytes: 0,
        max_object_bytes: 16 << 20,
        disk_min_fills: 1,
        policy: RamPolicy::Video,
        seed: 1,
    };
    let cache = Cache::open(&tiers, Arc::new(Quiet))
        .await
        .expect("a RAM-only cache opens")
        .with_clock(clock.clone());
    let counts = Arc::new(Counts::default());
    let filler = Filler::with_upstream(
        config,
        cache,
        Arc::clone(&counts) as Arc<dyn FillObserver>,
        clock.clone(),
        Arc::clone(&upstream) as Arc<dyn Upstream>,
    );
    Harness {
        filler,
        upstream,
        clock,
        hand,
        counts,
    }
}

impl Harness {
    async fn cached(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.filler.cache().get(key).await.map(|(o, _)| o.to_arc())
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn many_requests_make_one_upstream_fetch() {
    let body = pattern(1000);
    let b = body.clone();
    let up = FakeUpstream::new(move |_| respond(200, &[], &b));
    let h = harness(config(), up).await;
    // Every client joins before the fill task first runs.
    let fills: Vec<_> = (0..100)
        .map(|_| h.filler.join("/v/a/seg_1.m4s", None, false, 0))
        .collect();
    for fill in &fills {
        assert_eq!(fill.finished().await.as_deref(), Ok(&body[..]));
    }
    assert_eq!(h.upstream.seen().len(), 1, "one upstream fetch");
    assert_eq!(h.counts.coalesced.load(Ordering::SeqCst), 99);
    let cached = h.cached("/v/a/seg_1.m4s").await.expect("cached");
    assert_eq!(cached.body, body);
}

#[tokio::test]
async fn a_body_failing_its_digest_never_completes_and_is_not_cached() {
    let body = pattern(200_000);
    let wrong = crate::digest::field_of_sha256(&[0; 32]);
    let b = body.clone();
    let up = FakeUpstream::new(move |_| {
        let (reply, tx) = streamed(
            200,
            &[
                ("content-length", b.len().to_string()),
                ("content-digest", wrong.clone()),
            ],
        );
        for piece in b.chunks(16 * 1024) {
            let _ = tx.send(Ok(Bytes::copy_from_slice(piece)));
        }
        reply
    });
    let mut config = config();
    config.parents = vec!["http://parent.test".into()];
    let h = harness(config, up).await;
    let fill = h.filler.join("/v/a/big.mp4", None, false, 0);
    let mut reader = fill.reader();
    let mut got = Vec::new();
    let end = loop {
        match reader.next().await {
            Some(Ok(piece)) => got.extend_from_slice(&piece),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert_eq!(end, Err(FillError::Integrity));
    // A large body streams as it arrives, but its last byte is held until verified.
    assert!(!got.is_empty(), "the body streamed");
    assert!(got.len() < body.len(), "the last byte never went out");
    assert_eq!(got[..], body[..got.len()]);
    assert!(h.cached("/v/a/big.mp4").await.is_none());
    assert_eq!(h.counts.integrity_failures.load(Ordering::SeqCst), 1);
    // Clients already had part of the body: the origin is not asked after the parent.
    assert_eq!(h.upstream.seen().len(), 1);
}

#[tokio::test]
async fn a_small_body_failing_its_digest_is_replaced_by_the_next_source() {
    let good = pattern(3000);
    let wrong = crate::digest::field_of_sha256(&[0; 32]);
    let g = good.clone();
    let up = FakeUpstream::new(move |seen| {
        if seen.uri.starts_with("http://parent.test/") {
            respond(200, &[("content-digest", wrong.clone())], &g)
        } else {
            respond(200, &[], &g)
        }
    });
    let mut config = config();
    config.parents = vec!["http://parent.test".into()];
    let h = harness(config, up).await;
    let fill = h.filler.join("/v/a/seg_2.m4s", None, false, 0);
    assert_eq!(fill.finished().await.as_deref(), Ok(&good[..]));
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].uri.starts_with("http://origin.test/"));
}

#[tokio::test]
async fn a_purge_during_a_fill_keeps_it_out_of_the_cache() {
    let body = pattern(5000);
    let senders: Arc<Mutex<Vec<BodySender>>> = Arc::default();
    let s = Arc::clone(&senders);
    let up = FakeUpstream::new(move |_| {
        let (reply, tx) = streamed(200, &[]);
        if let Ok(mut s) = s.lock() {
            s.push(tx);
        }
        reply
    });
    let h = harness(config(), up).await;
    let fill = h.filler.join("/v/a/seg_3.m4s", None, false, 0);
    while h.upstream.seen().is_empty() {
        tokio::task::yield_now().await;
    }
    h.filler.purge("/v/a/seg_3.m4s", false);
    let tx = senders
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .expect("a body");
    let _ = tx.send(Ok(Bytes::from(body.clone())));
    drop(tx);
    // The clients already reading get the body; the cache does not.
    assert_eq!(fill.finished().await.as_deref(), Ok(&body[..]));
    assert!(h.cached("/v/a/seg_3.m4s").await.is_none());
    // The next request starts a new fill.
    let again = h.filler.join("/v/a/seg_3.m4s", None, false, 0);
    assert!(!Arc::ptr_eq(&fill, &again));
    while h.upstream.seen().len() < 2 {
        tokio::task::yield_now().await;
    }
}

/// An origin that honours `Range` and `If-Range` for one object with a changeable tag.
fn ranged_origin(object: Vec<u8>, etag: Arc<Mutex<String>>) -> Arc<FakeUpstream> {
    FakeUpstream::new(move |seen| {
        let tag = etag.lock().map(|t| t.clone()).unwrap_or_default();
        let total = object.len();
        let range = seen
            .header(header::RANGE)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        let if_range_ok = seen.header(header::IF_RANGE).is_none_or(|v| v == tag);
        match range {
            Some((first, last)) if if_range_ok && first < total => {
                let last = last.min(total - 1);
                respond(
                    206,
                    &[
                        ("etag", tag.clone()),
                        ("content-range", format!("bytes {first}-{last}/{total}")),
                    ],
                    &object[first..=last],
                )
            }
            _ => respond(200, &[("etag", tag.clone())], &object),
        }
    })
}

#[tokio::test]
async fn slices_are_filled_with_if_range_and_a_changed_object_drops_its_index() {
    let object = pattern(3500);
    let etag = Arc::new(Mutex::new("\"v1\"".to_owned()));
    let mut config = config();
    config.slice_bytes = 1000;
    let h = harness(config, ranged_origin(object.clone(), Arc::clone(&etag))).await;
    let path = "/v/a/movie.mp4";
    let fill = h.filler.join(path, None, false, 0);
    let head = fill.head().await.expect("head");
    let meta = head.meta.clone().expect("a sliced object");
    // Read bytes 500..=2600 across three slices, the first from the fill that learned the
    // layout.
    let mut reader = crate::sliced::SlicedReader::new(
        Arc::clone(&h.filler),
        path,
        Arc::clone(&meta),
        (500, 2600),
        Some((0, fill)),
        false,
        SessionKey::Sid("s".into()),
    )
    .expect("a reader");
    let mut got = Vec::new();
    while let Some(piece) = reader.next().await {
        got.extend_from_slice(&piece.expect("a slice"));
    }
    assert_eq!(got, object[500..=2600]);
    let seen = h.upstream.seen();
    let asked: Vec<_> = seen
        .iter()
        .map(|s| (s.header(header::RANGE), s.header(header::IF_RANGE)))
        .collect();
    assert_eq!(
        asked,
        [
            (Some("bytes=0-999"), None),
            (Some("bytes=1000-1999"), Some("\"v1\"")),
            (Some("bytes=2000-2999"), Some("\"v1\"")),
        ]
    );
    assert!(h.cached(path).await.is_some(), "the index is cached");
    // The object changes upstream: the If-Range answer is the whole new object, which is
    // never spliced into the old one, and the index goes.
    if let Ok(mut t) = etag.lock() {
        *t = "\"v2\"".into();
    }
    let slice = h.filler.join_slice(path, 3, &meta, false);
    assert_eq!(slice.finished().await, Err(FillError::Changed));
    assert!(h.cached(path).await.is_none(), "the index is dropped");
}

/// An origin serving one object with `max-age=10, stale-while-revalidate=5` and tag "v1",
/// answering a matching `If-None-Match` with 304.
fn revalidating_origin(body: Vec<u8>) -> Arc<FakeUpstream> {
    FakeUpstream::new(move |seen| {
        let cc = (
            "cache-control",
            "max-age=10, stale-while-revalidate=5".into(),
        );
        if seen.header(header::IF_NONE_MATCH) == Some("\"v1\"") {
            return respond(304, &[cc], b"");
        }
        respond(200, &[cc, ("etag", "\"v1\"".into())], &body)
    })
}

#[tokio::test]
async fn ttl_expiry_and_stale_while_revalidate_follow_the_virtual_clock() {
    let body = pattern(100);
    let h = harness(config(), revalidating_origin(body.clone())).await;
    let path = "/v/a/index.m3u8";
    let fill = h.filler.join(path, None, false, 0);
    assert_eq!(fill.finished().await.as_deref(), Ok(&body[..]));
    let cached = h.cached(path).await.expect("cached");
    let plan_now = |h: &Harness| plan::plan(Some(&cached), h.clock.unix_secs());
    assert_eq!(plan_now(&h), Plan::Fresh);
    h.hand.advance(Duration::from_secs(9));
    assert_eq!(plan_now(&h), Plan::Fresh);
    h.hand.advance(Duration::from_secs(1));
    assert_eq!(plan_now(&h), Plan::StaleWhileRevalidate);
    h.hand.advance(Duration::from_secs(5));
    assert_eq!(plan_now(&h), Plan::Fill { revalidate: true });
}

#[tokio::test]
async fn a_304_refreshes_the_stored_object_from_the_virtual_clock() {
    let body = pattern(100);
    let h = harness(config(), revalidating_origin(body.clone())).await;
    let path = "/v/a/index.m3u8";
    let first = h.filler.join(path, None, false, 0);
    assert_eq!(first.finished().await.as_deref(), Ok(&body[..]));
    let stale = h.cached(path).await.expect("cached");
    h.hand.advance(Duration::from_secs(60));
    let now = h.clock.unix_secs();
    assert_eq!(
        plan::plan(Some(&stale), now),
        Plan::Fill { revalidate: true }
    );
    let fill = h.filler.join(path, Some(Arc::clone(&stale)), false, 0);
    assert_eq!(fill.finished().await.as_deref(), Ok(&body[..]));
    let seen = h.upstream.seen();
    assert_eq!(seen[1].header(header::IF_NONE_MATCH), Some("\"v1\""));
    let refreshed = h.cached(path).await.expect("still cached");
    assert_eq!(refreshed.body, body, "the stored body is kept");
    assert_eq!(refreshed.stored_at, now);
    assert_eq!(refreshed.fresh_until, now + 10);
    assert_eq!(plan::plan(Some(&refreshed), now), Plan::Fresh);
}

#[tokio::test]
async fn parents_are_asked_before_origins() {
    let body = pattern(10);
    let b = body.clone();
    let up = FakeUpstream::new(move |seen| match seen.uri.as_str() {
        u if u.starts_with("http://parent-a.test/") => Reply::Refuse,
        u if u.starts_with("http://parent-b.test/") => respond(503, &[], b"busy"),
        _ => respond(200, &[], &b),
    });
    let mut config = config();
    config.parents = vec!["http://parent-a.test".into(), "http://parent-b.test".into()];
    let h = harness(config, up).await;
    let fill = h.filler.join("/v/a/seg_4.m4s", None, false, 0);
    assert_eq!(fill.finished().await.as_deref(), Ok(&body[..]));
    let order: Vec<_> = h.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        order,
        [
            "http://parent-a.test/v/a/seg_4.m4s",
            "http://parent-b.test/v/a/seg_4.m4s",
            "http://origin.test/v/a/seg_4.m4s",
        ]
    );
}

#[tokio::test]
async fn the_breaker_skips_a_failing_source_until_its_cool_down_has_passed() {
    let healthy = Arc::new(AtomicBool::new(false));
    let up_ok = Arc::clone(&healthy);
    let up = FakeUpstream::new(move |_| {
        if up_ok.load(Ordering::SeqCst) {
            respond(200, &[], b"ok")
        } else {
            Reply::Refuse
        }
    });
    let mut config = config();
    config.breaker_threshold = 2;
    config.breaker_cool_down = Duration::from_secs(30);
    let h = harness(config, up).await;
    let fill = |n: u32| h.filler.join(&format!("/v/a/seg_{n}.m4s"), None, false, 0);
    for n in 0..2 {
        assert_eq!(fill(n).finished().await, Err(FillError::Unavailable));
    }
    assert_eq!(h.upstream.seen().len(), 2);
    // Open: the origin is not asked at all.
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(fill(2).finished().await, Err(FillError::Unavailable));
    h.hand.advance(Duration::from_secs(29));
    assert_eq!(fill(3).finished().await, Err(FillError::Unavailable));
    assert_eq!(h.upstream.seen().len(), 2);
    // Cool-down over: one trial goes through, succeeds, and closes the breaker.
    h.hand.advance(Duration::from_secs(1));
    assert_eq!(fill(4).finished().await.as_deref(), Ok(&b"ok"[..]));
    assert_eq!(fill(5).finished().await.as_deref(), Ok(&b"ok"[..]));
    assert_eq!(h.upstream.seen().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_does_not_answer_times_out_as_a_504() {
    let senders: Arc<Mutex<Vec<BodySender>>> = Arc::default();
    let s = Arc::clone(&senders);
    let up = FakeUpstream::new(move |seen| {
        if seen.uri.ends_with("/stalls.m4s") {
            // A head, a first piece, then nothing.
            let (reply, tx) = streamed(200, &[("content-length", "10".into())]);
            let _ = tx.send(Ok(Bytes::from_static(b"12345")));
            if let Ok(mut s) = s.lock() {
                s.push(tx);
            }
            reply
        } else {
            Reply::Hang
        }
    });
    let h = harness(config(), up).await;
    for path in ["/v/a/silent.m4s", "/v/a/stalls.m4s"] {
        let started = tokio::time::Instant::now();
        let fill = h.filler.join(path, None, false, 0);
        let error = fill.finished().await.expect_err("a timeout");
        assert_eq!(error, FillError::Timeout, "{path}");
        assert_eq!(started.elapsed(), Duration::from_secs(5), "{path}");
        assert_eq!(
            plan::on_fill_error(None, error, 0, h.clock.unix_secs()),
            OnError::Respond(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
        );
        assert!(h.cached(path).await.is_none());
    }
}

/// The machine alone, without a driver: a large body is published as it arrives but for its
/// last byte, which a digest failure never releases.
#[test]
fn the_machine_holds_the_last_byte_until_the_digest_is_checked() {
    use crate::fill_core::{Action, FillMachine, Input, Settings, Want};
    let settings = Arc::new(Settings {
        read_timeout: Duration::from_secs(5),
        max_object_bytes: 1 << 30,
        ..Default::default()
    });
    let want = Want::Object {
        first_slice: 0,
        stale: None,
    };
    let run = |digest: [u8; 32]| {
        let mut m = FillMachine::new(
            Arc::clone(&settings),
            "/v/x.mp4",
            want.clone(),
            vec!["origin"],
            7,
        );
        assert!(matches!(
            m.poll_action(),
            Some(Action::Send { source: 0, .. })
        ));
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let body = pattern(100_000);
        let headers = headers_of(&[
            ("content-length", body.len().to_string()),
            ("content-digest", crate::digest::field_of_sha256(&digest)),
        ]);
        m.handle_input(
            now,
            Input::Head {
                status: StatusCode::OK,
                headers,
            },
        );
        for piece in body.chunks(30_000) {
            m.handle_input(now, Input::Chunk(Bytes::copy_from_slice(piece)));
        }
        m.handle_input(now, Input::End);
        let mut published = 0;
        let mut end = None;
        let mut inserted = false;
        while let Some(a) = m.poll_action() {
            match a {
                Action::Publish { chunks, end: e, .. } => {
                    published += chunks.iter().map(Bytes::len).sum::<usize>();
                    end = e.or(end);
                }
                Action::Insert { .. } => inserted = true,
                _ => {}
            }
        }
        assert!(m.is_done());
        (published, end, inserted)
    };
    use sha2::Digest as _;
    let right: [u8; 32] = sha2::Sha256::digest(pattern(100_000)).into();
    assert_eq!(run(right), (100_000, Some(Ok(())), true));
    assert_eq!(
        run([0; 32]),
        (99_999, Some(Err(FillError::Integrity)), false)
    );
}
