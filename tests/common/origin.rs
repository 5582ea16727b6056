//! A small, real HTTP/1.1 origin for the cache tests (hyper on loopback): serves objects from a
//! table (with a strong ETag and single byte ranges, honouring `If-Range`), counts requests
//! per path and remembers their `Range` headers, can pace bodies to a byte rate, send a wrong
//! `Content-Digest`, and be stopped like a dead upstream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;

/// One object the origin serves.
#[derive(Clone)]
pub struct Object {
    pub body: Bytes,
    pub cache_control: &'static str,
    /// Send a `Content-Digest` that does not match the body.
    pub wrong_digest: bool,
    /// Bytes per second (0: as fast as possible).
    pub rate: u64,
    /// Answer single `Range` requests with 206 (as nginx and S3 do); else always 200.
    pub ranges: bool,
}

impl Object {
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            body: Bytes::from(body),
            cache_control: "public, max-age=3600",
            wrong_digest: false,
            rate: 0,
            ranges: true,
        }
    }
}

#[derive(Default)]
pub struct State {
    pub objects: HashMap<String, Object>,
    pub etags: HashMap<String, String>,
    pub hits: HashMap<String, usize>,
    /// Each request's path and `Range` header, in order.
    pub requests: Vec<(String, Option<String>)>,
    /// When the origin finished sending each path's body the last time.
    pub finished_at: HashMap<String, Instant>,
}

/// A running origin; stops when dropped or on [`Origin::stop`].
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Origin {
    pub async fn start() -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(Mutex::new(State::default())),
        )
        .await
    }

    /// Starts on a given address (to bring an origin back where it was).
    pub async fn start_on(addr: SocketAddr, state: Arc<Mutex<State>>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let st = Arc::clone(&st);
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| serve(Arc::clone(&st), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
            // Dropping the set aborts open connections: a dead origin.
            conns.abort_all();
        });
        Self {
            addr,
            state,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, path: &str, object: Object) {
        // The strong ETag is computed once here: hashing a large object on every range request
        // would stall the origin (tests run unoptimized).
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(&object.body).into()
        };
        let etag = format!(
            "\"{}\"",
            digest[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut s = self.state.lock().expect("lock");
        s.etags.insert(path.to_owned(), etag);
        s.objects.insert(path.to_owned(), object);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .expect("lock")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The `Range` headers of the requests for `path`, in order (`None`: a whole request).
    pub fn ranges(&self, path: &str) -> Vec<Option<String>> {
        self.state
            .lock()
            .expect("lock")
            .requests
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every path requested so far, in order.
    pub fn requested_paths(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("lock")
            .requests
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Asserts that each of `paths` was fetched exactly once; `what` says what more would mean.
    pub fn assert_fetched_once(&self, paths: &[String], what: &str) {
        for p in paths {
            assert_eq!(self.hits(p), 1, "{p}: {what}");
        }
    }

    pub fn finished_at(&self, path: &str) -> Option<Instant> {
        self.state
            .lock()
            .expect("lock")
            .finished_at
            .get(path)
            .copied()
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (object, etag) = {
        let mut s = state.lock().expect("lock");
        *s.hits.entry(path.clone()).or_default() += 1;
        s.requests.push((path.clone(), range.clone()));
        (
            s.objects.get(&path).cloned(),
            s.etags.get(&path).cloned().unwrap_or_default(),
        )
    };
    let Some(object) = object else {
        let mut r =
            hyper::Response::new(http_body_util::Full::new(Bytes::from_static(b"no\n")).boxed());
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(r);
    };
    let if_range_ok = req
        .headers()
        .get("if-range")
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    // A single `bytes=a-b` range, clipped to the object; anything else gets the whole object.
    let total = object.body.len() as u64;
    let part = range
        .as_deref()
        .filter(|_| object.ranges && if_range_ok)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    if let Some((first, _)) = part
        && first >= total
    {
        let mut r = hyper::Response::new(http_body_util::Full::new(Bytes::new()).boxed());
        *r.status_mut() = hyper::StatusCode::RANGE_NOT_SATISFIABLE;
        r.headers_mut().insert(
            "content-range",
            format!("bytes */{total}").parse().expect("header"),
        );
        return Ok(r);
    }
    let (object, content_range) = match part {
        Some((first, last)) => {
            let last = last.min(total - 1);
            let mut o = object.clone();
            o.body = object.body.slice(first as usize..=last as usize);
            (o, Some(format!("bytes {first}-{last}/{total}")))
        }
        None => (object, None),
    };
    let mut digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&object.body).into()
    };
    if object.wrong_digest {
        digest[0] ^= 0xff;
    }
    let len = object.body.len();
    let body: OriginBody = if object.rate == 0 {
        let st = Arc::clone(&state);
        let p = path.clone();
        st.lock()
            .expect("lock")
            .finished_at
            .insert(p, Instant::now());
        http_body_util::Full::new(object.body.clone()).boxed()
    } else {
        // Paced: 16 KiB pieces at the object's rate.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = object.body.clone();
        let rate = object.rate;
        tokio::spawn(async move {
            let piece = 16 * 1024;
            let pause = Duration::from_secs_f64(piece as f64 / rate as f64);
            let mut offset = 0;
            while offset < body.len() {
                let end = (offset + piece).min(body.len());
                if tx
                    .send(Ok(Frame::data(body.slice(offset..end))))
                    .await
                    .is_err()
                {
                    return;
                }
                offset = end;
                if offset >= body.len() {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            state
                .lock()
                .expect("lock")
                .finished_at
                .insert(path, Instant::now());
        });
        Paced(rx).boxed()
    };
    let mut r = hyper::Response::builder();
    if let Some(cr) = content_range {
        r = r.status(206).header("content-range", cr);
    }
    let r = r
        .header("etag", etag)
        .header("content-length", len)
        .header("content-type", "video/mp4")
        .header("cache-control", object.cache_control)
        .header(
            "content-digest",
            format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ),
        )
        .body(body)
        .expect("response");
    Ok(r)
}

/// A body fed piece by piece from a channel.
pub struct Paced(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}
