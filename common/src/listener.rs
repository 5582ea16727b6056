//! What every service's TCP listeners share: the `[limits]` table, the connection cap (in
//! total and per client address), the per-connection watchdog that bounds the time to the
//! first byte, to the first request and between requests, and the accept-and-serve loop of
//! the services whose routes are an axum `Router` (origin, control plane, steering).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::ConfigError;

/// `[limits]` of the origin, the control plane and steering: how long a client may take and
/// how many connections it may hold. The edge has the same keys and more of its own (TLS and
/// QUIC handshakes, streams, HTTP/2 resets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// How long a new connection (after its TLS handshake, if any) may stay without sending a
    /// byte.
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// How long a client may take to send a request head once it has started (against
    /// slowloris).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without a request in flight.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most open client connections; further clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client address; further ones are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    64
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    10_000
}
/// Also the edge's default: room for a carrier-grade NAT's players behind one address.
pub fn default_max_connections_per_ip() -> usize {
    1000
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            first_byte_timeout: default_first_byte_timeout(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

impl ListenerLimits {
    /// Checks the limits; the error's key is under `limits.`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "limits.max_header_bytes",
                "must be at least 8192",
            ));
        }
        for (name, n) in [
            ("limits.max_headers", self.max_headers),
            ("limits.max_connections", self.max_connections),
            ("limits.max_connections_per_ip", self.max_connections_per_ip),
        ] {
            if n == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        for (name, d) in [
            ("limits.first_byte_timeout", self.first_byte_timeout),
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(name, "must be longer than zero"));
            }
        }
        Ok(())
    }
}

/// `[listen]` of the services with one HTTP address and an optional admin one (origin, chat
/// relay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain HTTP/1.1: the service's routes, and `/metrics`, `/healthz`, `/readyz` unless
    /// `admin` is set.
    pub http: std::net::SocketAddr,
    /// A separate address for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin: Option<std::net::SocketAddr>,
}

/// The connection cap: a slot in total (waited for, so that at the cap the accept loop stops
/// and further clients wait in the kernel's backlog) and one under the client's address
/// (refused at once: one address must not fill the node).
pub struct ConnectionGate {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    capacity: usize,
}

/// One admitted connection; dropping it frees both slots.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnectionGate {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            capacity: max_connections,
        })
    }

    /// Waits for a slot in total; `None` if the client's address already holds its share.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let total = Arc::clone(&self.total).acquire_owned().await.ok()?;
        self.with_ip(total, ip)
    }

    /// A slot now, or `None` at either cap.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let total = Arc::clone(&self.total).try_acquire_owned().ok()?;
        self.with_ip(total, ip)
    }

    fn with_ip(self: &Arc<Self>, total: OwnedSemaphorePermit, ip: IpAddr) -> Option<Slot> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Slot {
            _total: total,
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.total.available_permits()
    }
}

/// The time limits a [`ConnectionWatch`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_byte: Duration,
    pub header_read: Duration,
    pub idle: Duration,
}

impl From<&ListenerLimits> for Timeouts {
    fn from(l: &ListenerLimits) -> Self {
        Self {
            first_byte: l.first_byte_timeout,
            header_read: l.header_read_timeout,
            idle: l.idle_timeout,
        }
    }
}

/// Why a [`ConnectionWatch`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No byte within `first_byte_timeout`.
    FirstByte,
    /// Bytes, but no complete request head within `header_read_timeout` of the first one.
    FirstRequest,
    /// No request in flight for `idle_timeout`.
    Idle,
}

/// One connection's clock: when it opened, when its first byte came, how many requests are in
/// flight and when the last one ended. It bounds every phase in which a connection holds a
/// slot without a request in flight, whatever the protocol (detection, HTTP/1.1 keep-alive,
/// an HTTP/2 connection kept open by its pings).
pub struct ConnectionWatch {
    timeouts: Timeouts,
    opened: Instant,
    /// Milliseconds after `opened`; `u64::MAX` until it happens.
    first_byte_ms: AtomicU64,
    last_request_end_ms: AtomicU64,
    /// Requests started on this connection.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    changed: Notify,
}

impl ConnectionWatch {
    pub fn new(timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Self {
            timeouts,
            opened: Instant::now(),
            first_byte_ms: AtomicU64::new(u64::MAX),
            last_request_end_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Marks the first byte (or, for QUIC, the end of the handshake).
    pub fn saw_first_byte(&self) {
        let _ = self.first_byte_ms.compare_exchange(
            u64::MAX,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.changed.notify_waiters();
    }

    /// Marks a request in flight until the guard is dropped (put it in the response body).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(self))
    }

    /// Requests started on this connection so far.
    pub fn requests_started(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Requests whose response the connection still holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The next deadline and what passing it means; `None` while a request is in flight.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64, d: Duration| self.opened + Duration::from_millis(ms) + d;
        if self.requests.load(Ordering::Acquire) > 0 {
            let end = self.last_request_end_ms.load(Ordering::Acquire);
            return Some((at(end, self.timeouts.idle), Expiry::Idle));
        }
        match self.first_byte_ms.load(Ordering::Acquire) {
            u64::MAX => Some((at(0, self.timeouts.first_byte), Expiry::FirstByte)),
            ms => Some((at(ms, self.timeouts.header_read), Expiry::FirstRequest)),
        }
    }

    /// Resolves when the connection has overstayed a limit.
    pub async fn expired(&self) -> Expiry {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.deadline() {
                Some((at, why)) if Instant::now() >= at => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// A request in flight on a watched connection.
pub struct RequestGuard(Arc<ConnectionWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let w = &self.0;
        w.last_request_end_ms.store(w.now_ms(), Ordering::Release);
        if w.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.changed.notify_waiters();
        }
    }
}

/// A response body that keeps its request in flight until the connection is done with it.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's IO that tells its watch when the first byte arrives.
pub struct WatchedIo<I> {
    inner: I,
    watch: Option<Arc<ConnectionWatch>>,
}

impl<I> WatchedIo<I> {
    pub fn new(inner: I, watch: Arc<ConnectionWatch>) -> Self {
        Self {
            inner,
            watch: Some(watch),
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.watch.is_some()
            && buf.filled().len() > before
            && let Some(w) = self.watch.take()
        {
            w.saw_first_byte();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long a connection told to close (idle, draining) may take to do so before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves an axum `Router` over HTTP/1.1 on `listener` with `limits` until `stop` turns true
/// (never, with `None`), then lets the requests in flight finish and returns once every
/// connection has closed; over TLS when `tls` is given (the handshake must end within the
/// header timeout). Handlers see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    router: axum::Router,
    stop: Option<watch::Receiver<bool>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    serve_with(listener, limits, router, stop, tls, false).await;
}

/// A service's admin routes (`/metrics`, `/healthz`, `/readyz`): merged into `routes` when
/// `admin` is `None`; else served over HTTP/1.1 on a listener of their own at `admin` until
/// `stop` (that task is returned, to be awaited once the service has drained). A bind error
/// names `listen.admin`.
pub async fn with_admin(
    routes: axum::Router,
    admin_routes: axum::Router,
    admin: Option<std::net::SocketAddr>,
    limits: &ListenerLimits,
    stop: &watch::Receiver<bool>,
) -> std::io::Result<(axum::Router, Option<tokio::task::JoinHandle<()>>)> {
    let Some(addr) = admin else {
        return Ok((routes.merge(admin_routes), None));
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("listen.admin {addr}: {e}")))?;
    let task = tokio::spawn(serve(
        l,
        limits.clone(),
        admin_routes,
        Some(stop.clone()),
        None,
    ));
    Ok((routes, Some(task)))
}

/// The connection slot of the connection a request came on, in the request's extensions. A
/// handler that takes the connection over (a WebSocket upgrade) keeps it for as long as it
/// uses the connection, so that the connection still counts against `[limits]`.
#[derive(Clone)]
pub struct HeldSlot(pub Arc<Slot>);

/// [`serve`] for routers with HTTP upgrades (WebSocket): plain connections are served by
/// hyper's upgrade-capable connection instead of the parked one ([`crate::parked`] serves over
/// a borrowed socket, which an upgrade cannot take away). An upgraded connection leaves the
/// serve loop: its handler owns it, with its [`HeldSlot`], and drains it itself.
pub async fn serve_upgradable(
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    router: axum::Router,
    stop: Option<watch::Receiver<bool>>,
) {
    serve_with(listener, limits, router, stop, None, true).await;
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    router: axum::Router,
    stop: Option<watch::Receiver<bool>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    upgrades: bool,
) {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .http1_only();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout);
    let h1 = Arc::new(h1);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let handshake_timeout = limits.header_read_timeout;
    let gate = ConnectionGate::new(limits.max_connections, limits.max_connections_per_ip);
    let timeouts = Timeouts::from(&limits);
    let tracker = tokio_util::task::TaskTracker::new();
    let (never_tx, never_rx) = watch::channel(false);
    let mut stop = stop.unwrap_or(never_rx);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or a transient network error: back off briefly.
                tracing::warn!(error = %e, "Accepting a TCP connection failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = tokio::select! {
            s = gate.admit(peer.ip()) => s,
            _ = stopped(&mut stop) => break,
        };
        let Some(slot) = slot else {
            tracing::debug!(client = %peer, "A connection over the per-address cap was closed.");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Arc::new(slot);
        let conn = Connection {
            slot: Arc::clone(&slot),
            builder: Arc::clone(&builder),
            h1: Arc::clone(&h1),
            router: router.clone(),
            stop: stop.clone(),
            peer,
            watch: ConnectionWatch::new(timeouts),
        };
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let io = WatchedIo::new(stream, Arc::clone(&conn.watch));
            match acceptor {
                None if upgrades => Box::pin(conn.serve(io)).await,
                None => conn.serve_parked(io).await,
                Some(acceptor) => {
                    // Boxed, so that the task of a parked plain connection stays small.
                    match Box::pin(tokio::time::timeout(handshake_timeout, acceptor.accept(io)))
                        .await
                    {
                        Ok(Ok(tls)) => Box::pin(conn.serve(tls)).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "A TLS handshake failed.");
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "A TLS handshake took too long.");
                        }
                    }
                }
            }
        });
    }
    drop(never_tx);
    tracker.close();
    tracker.wait().await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    /// Plain connections: HTTP/1.1 parked between requests ([`crate::parked`]).
    h1: Arc<hyper::server::conn::http1::Builder>,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
    watch: Arc<ConnectionWatch>,
    slot: Arc<Slot>,
}

impl Connection {
    /// The router as a hyper service: the client's address in `ConnectInfo`, and each request
    /// counted in flight until its response body is done.
    fn service(&self) -> impl crate::parked::ConnService<Tracked<axum::body::Body>> {
        let requests = Arc::clone(&self.watch);
        let router = self.router.clone();
        let peer = self.peer;
        let slot = Arc::clone(&self.slot);
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            use tower::ServiceExt;
            let guard = requests.request();
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(HeldSlot(Arc::clone(&slot)));
            let router = router.clone();
            async move {
                let response = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                Ok::<_, Infallible>(response.map(|b| Tracked::new(b, guard)))
            }
        })
    }

    /// Serves HTTP/1.1 on a plain socket, holding no HTTP state between requests.
    async fn serve_parked(mut self, io: WatchedIo<tokio::net::TcpStream>) {
        let service = self.service();
        let end =
            crate::parked::serve(io, &self.h1, service, &self.watch, &mut self.stop, true).await;
        tracing::debug!(client = %self.peer, end = ?end, "An HTTP/1.1 connection ended.");
    }

    /// Serves HTTP/1.1 on `io` (TLS) until the client leaves, the service stops (graceful) or
    /// the connection overstays its welcome (idle, no request).
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service();
        let Connection {
            builder,
            mut stop,
            peer,
            watch,
            ..
        } = self;
        let io = hyper_util::rt::TokioIo::new(io);
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
            why = watch.expired() => {
                tracing::debug!(client = %peer, reason = ?why, "An unused connection was closed.");
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, client = %peer, "An HTTP connection ended with an error.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            first_byte: Duration::from_secs(2),
            header_read: Duration::from_secs(3),
            idle: Duration::from_secs(5),
        }
    }

    /// The deadline, as a time after the connection opened.
    fn deadline(w: &ConnectionWatch) -> Option<(Duration, Expiry)> {
        w.deadline().map(|(at, why)| (at - w.opened, why))
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    // These tests set the watch's clock readings directly (no runtime, no sleeping).

    #[test]
    fn a_silent_connection_has_the_first_byte_timeout() {
        let w = ConnectionWatch::new(timeouts());
        assert_eq!(deadline(&w), Some((ms(2000), Expiry::FirstByte)));
    }

    #[test]
    fn bytes_without_a_request_have_the_header_timeout_from_the_first_byte() {
        let w = ConnectionWatch::new(timeouts());
        w.first_byte_ms.store(700, Ordering::Release);
        assert_eq!(deadline(&w), Some((ms(3700), Expiry::FirstRequest)));
    }

    #[test]
    fn a_request_in_flight_has_no_deadline_and_idle_counts_from_its_end() {
        let w = ConnectionWatch::new(timeouts());
        w.saw_first_byte();
        let first = w.request();
        let second = w.request();
        assert_eq!(deadline(&w), None);
        drop(first);
        assert_eq!(deadline(&w), None, "one request is still in flight");
        drop(second);
        w.last_request_end_ms.store(9000, Ordering::Release);
        assert_eq!(deadline(&w), Some((ms(14_000), Expiry::Idle)));
    }

    #[test]
    fn the_gate_caps_each_address() {
        let gate = ConnectionGate::new(10, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let s1 = gate.try_admit(a).expect("first");
        let _s2 = gate.try_admit(a).expect("second");
        assert!(gate.try_admit(a).is_none());
        let _s3 = gate.try_admit(b).expect("another address");
        drop(s1);
        let _s4 = gate.try_admit(a).expect("a freed slot");
        assert_eq!(gate.in_use(), 3);
    }

    #[test]
    fn zero_limits_are_refused() {
        let l = ListenerLimits {
            max_connections_per_ip: 0,
            ..Default::default()
        };
        assert_eq!(
            l.validate().expect_err("refused").key,
            "limits.max_connections_per_ip"
        );
        assert!(ListenerLimits::default().validate().is_ok());
    }
}
