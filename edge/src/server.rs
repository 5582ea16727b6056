//! The network shell around [`Edge`]: TCP listeners (HTTP/1.1 and HTTP/2, plain or TLS), the
//! QUIC endpoint (HTTP/3), connection limits, certificate reload and draining.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use estuary_common::listener::{ConnectionGate, ConnectionWatch, Tracked, WatchedIo};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::{EdgeConfig, LimitsConfig};
use crate::cork::Drain;
use crate::fill::FillError;
use crate::handler::{Body, Edge, Endpoints, Finish, Incoming};
use crate::metrics::Protocol;
use crate::sliced::BodyStream;

type ChunkFuture =
    Pin<Box<dyn Future<Output = (BodyStream, Option<Result<Bytes, FillError>>)> + Send>>;

enum Source {
    Full(Option<Bytes>),
    Fill(Option<BodyStream>, Option<ChunkFuture>),
}

/// A response body that records the request (through [`Finish`]) once it has been handed to
/// the connection or the connection has gone away. A fill streams chunk by chunk; a failed
/// fill ends the body with an error, which cuts the response short rather than completing it.
pub struct LoggedBody {
    source: Source,
    finish: Option<Finish>,
    sent: u64,
    /// The response's `Content-Length`, if it has one.
    length: Option<u64>,
}

impl LoggedBody {
    fn new(body: Body, mut finish: Finish, length: Option<u64>) -> Self {
        let source = match body {
            Body::Full(data) if data.is_empty() => {
                finish.complete = true;
                finish.sent = Some(0);
                Source::Full(None)
            }
            Body::Full(data) => Source::Full(Some(data)),
            Body::Fill(reader) => Source::Fill(Some(reader), None),
        };
        Self {
            source,
            finish: Some(finish),
            sent: 0,
            length,
        }
    }

    fn done(&mut self, complete: bool) {
        if let Some(f) = self.finish.as_mut() {
            f.complete = complete;
            f.sent = Some(self.sent);
        }
    }
}

impl LoggedBody {
    /// An empty body for an answer the listener gives itself (not logged, like hyper's own
    /// 431 on HTTP/1.1).
    fn empty() -> Self {
        Self {
            source: Source::Full(None),
            finish: None,
            sent: 0,
            length: Some(0),
        }
    }
}

/// An answer of the listener itself: the status and an empty body.
fn bare_response(status: http::StatusCode) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    r
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper stops polling an HTTP/1.1 body once its `Content-Length` has been written, so
        // the end of a streamed body may never be seen: record what was handed over, complete
        // when it is the whole length.
        if let Some(f) = self.finish.as_mut()
            && f.sent.is_none()
        {
            f.sent = Some(self.sent);
            f.complete = self.length == Some(self.sent);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = FillError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FillError>>> {
        let this = &mut *self;
        match &mut this.source {
            Source::Full(data) => match data.take() {
                Some(data) => {
                    this.sent += data.len() as u64;
                    this.done(true);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                None => Poll::Ready(None),
            },
            Source::Fill(reader, pending) => {
                if pending.is_none() {
                    let Some(mut r) = reader.take() else {
                        return Poll::Ready(None);
                    };
                    *pending = Some(Box::pin(async move {
                        let next = r.next().await;
                        (r, next)
                    }));
                }
                let Some(fut) = pending.as_mut() else {
                    return Poll::Ready(None);
                };
                match fut.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready((r, next)) => {
                        *pending = None;
                        match next {
                            Some(Ok(chunk)) => {
                                *reader = Some(r);
                                this.sent += chunk.len() as u64;
                                Poll::Ready(Some(Ok(Frame::data(chunk))))
                            }
                            Some(Err(e)) => {
                                this.done(false);
                                Poll::Ready(Some(Err(e)))
                            }
                            None => {
                                this.done(true);
                                Poll::Ready(None)
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(data) => data.is_none(),
            Source::Fill(reader, pending) => reader.is_none() && pending.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Fill(..) => SizeHint::default(),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs each HTTP/2 stream's future once on the connection's own task before it becomes a
/// task of its own, and spawns it only if it is not finished by then.
///
/// hyper hands every HTTP/2 request to the executor as a separate future. Spawned, each one
/// wakes the connection task again when its response is queued, often from the other worker
/// thread, so the connection flushes once per response: for small responses (playlists) that
/// is one TLS record, one `writev` and one TCP segment each, and a cross-thread wake-up. A
/// response served from memory completes in its first poll, so polled in place the responses
/// to every request that arrived in one read leave in one write.
///
/// Correctness: a future may be polled with any waker, as long as the latest one is woken. An
/// unfinished future is spawned and polled again by its task, which registers the task's own
/// waker before anything can be missed; the first poll's no-op waker is then never needed.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(fut);
        }
    }
}

/// Binds a TCP listener with a deep backlog and address reuse.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// HTTP/1.1 alone, for plain connections that do not open with the HTTP/2 preface (they are
/// parked between requests: [`estuary_common::parked`]).
fn h1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout);
    b
}

fn http_builder(limits: &LimitsConfig) -> auto::Builder<StreamExecutor> {
    let mut b = auto::Builder::new(StreamExecutor);
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// What every listener task shares.
struct Shared {
    edge: Arc<Edge>,
    builder: auto::Builder<StreamExecutor>,
    h1: hyper::server::conn::http1::Builder,
    limits: LimitsConfig,
    /// Client connections, TCP and QUIC together (admin connections are not counted).
    gate: Arc<ConnectionGate>,
    tracker: TaskTracker,
}

/// Accepts TCP connections until `stop` turns true. Admin listeners ignore `stop` and run until
/// the process exits.
async fn accept_tcp(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    endpoints: Endpoints,
    mut stop: watch::Receiver<bool>,
) {
    let drains = endpoints != Endpoints::Admin;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or a transient network error: back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "Accepting a TCP connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop), if drains => return,
        };
        // At the cap, this connection waits for a slot and the listener accepts nothing more,
        // so further clients wait in the kernel's backlog; every connection holding a slot is
        // closed once it overstays a time limit, so the wait is bounded. A connection over its
        // address's share is closed at once. Admin connections are not counted.
        let permit = if drains {
            let slot = tokio::select! {
                s = shared.gate.admit(peer.ip()) => s,
                _ = stopped(&mut stop) => return,
            };
            match slot {
                Some(s) => Some(s),
                None => {
                    tracing::debug!(client = %peer, "A connection over the per-address cap was closed.");
                    continue;
                }
            }
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let shared2 = Arc::clone(&shared);
        let tls = tls.clone();
        let conn_stop = stop.clone();
        let task = async move {
            let _permit = permit;
            match tls {
                None => {
                    // Admin connections (scrapes, probes) are not client connections.
                    let _guard = drains.then(|| {
                        shared2
                            .edge
                            .observer()
                            .metrics
                            .connection_opened(Protocol::H1)
                    });
                    let watch = ConnectionWatch::new(shared2.limits.timeouts());
                    let mut conn_stop = conn_stop;
                    match opens_with_h2_preface(&stream, &watch, &mut conn_stop, drains).await {
                        Some(false) => {
                            // HTTP/1.1, parked between requests.
                            let service =
                                edge_service(&shared2, Arc::clone(&watch), peer, false, endpoints);
                            let io = WatchedIo::new(stream, Arc::clone(&watch));
                            let end = estuary_common::parked::serve(
                                io,
                                &shared2.h1,
                                service,
                                &watch,
                                &mut conn_stop,
                                drains,
                            )
                            .await;
                            tracing::debug!(client = %peer, end = ?end, "An HTTP/1.1 connection ended.");
                        }
                        Some(true) => {
                            // Boxed, here and for TLS, so that the task of a parked plain
                            // connection is not the size of an HTTP/2 connection.
                            Box::pin(serve_io(
                                &shared2,
                                TokioIo::new(WatchedIo::new(stream, Arc::clone(&watch))),
                                watch,
                                peer,
                                false,
                                endpoints,
                                conn_stop,
                                None,
                            ))
                            .await;
                        }
                        None => {}
                    }
                }
                Some(acceptor) => Box::pin(async move {
                    // Counted from accept: a half-open handshake holds a slot too.
                    let handshaking = shared2.edge.observer().metrics.handshake_started();
                    let handshake = tokio::time::timeout(
                        shared2.limits.handshake_timeout,
                        acceptor.accept(stream),
                    );
                    let tls_stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, client = %peer, "A TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "A TLS handshake timed out.");
                            return;
                        }
                    };
                    let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::H2,
                        _ => Protocol::H1,
                    };
                    let _guard = shared2.edge.observer().metrics.connection_opened(protocol);
                    drop(handshaking);
                    // The first-byte clock starts after the handshake: the first byte it
                    // waits for is the first byte of the request.
                    let watch = ConnectionWatch::new(shared2.limits.timeouts());
                    let tls_stream = WatchedIo::new(tls_stream, Arc::clone(&watch));
                    if protocol == Protocol::H2 {
                        // HTTP/1.1 buffers its own writes; HTTP/2 writes frame by frame.
                        let (io, cork) = crate::cork::cork(tls_stream);
                        serve_io(
                            &shared2,
                            TokioIo::new(io),
                            watch,
                            peer,
                            true,
                            endpoints,
                            conn_stop,
                            Some(&cork),
                        )
                        .await;
                    } else {
                        serve_io(
                            &shared2,
                            TokioIo::new(tls_stream),
                            watch,
                            peer,
                            true,
                            endpoints,
                            conn_stop,
                            None,
                        )
                        .await;
                    }
                })
                .await,
            }
        };
        if drains {
            shared.tracker.spawn(task);
        } else {
            tokio::spawn(task);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    shared: &Arc<Shared>,
    io: TokioIo<I>,
    watch: Arc<ConnectionWatch>,
    peer: SocketAddr,
    secure: bool,
    endpoints: Endpoints,
    mut stop: watch::Receiver<bool>,
    cork: Option<&(dyn Drain + Sync)>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = edge_service(shared, Arc::clone(&watch), peer, secure, endpoints);
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Admin connections never drain: they answer /readyz until the process exits.
    let drains = endpoints != Endpoints::Admin;
    let result = tokio::select! {
        r = drive(conn.as_mut(), cork) => r,
        _ = stopped(&mut stop), if drains => {
            // Draining: finish the request in flight, then close (HTTP/2: GOAWAY).
            conn.as_mut().graceful_shutdown();
            drive(conn.as_mut(), cork).await
        }
        why = watch.expired() => {
            // No request in flight for too long (or none ever started): close (HTTP/2:
            // GOAWAY), and cut a client that does not let the connection close.
            tracing::debug!(client = %peer, reason = ?why, "An unused connection was closed.");
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(
                estuary_common::listener::CLOSE_GRACE,
                drive(conn.as_mut(), cork),
            )
            .await
            .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, client = %peer, "An HTTP connection ended with an error.");
    }
}

/// The edge's requests as a hyper service, one per connection.
fn edge_service(
    shared: &Arc<Shared>,
    requests: Arc<ConnectionWatch>,
    peer: SocketAddr,
    secure: bool,
    endpoints: Endpoints,
) -> impl estuary_common::parked::ConnService<Tracked<LoggedBody>> {
    let edge = Arc::clone(&shared.edge);
    let max_headers = shared.limits.max_headers;
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let edge = Arc::clone(&edge);
        let guard = requests.request();
        async move {
            let protocol = if req.version() == http::Version::HTTP_2 {
                Protocol::H2
            } else {
                Protocol::H1
            };
            // hyper enforces `max_headers` on HTTP/1.1 only.
            if req.headers().len() > max_headers {
                let response = bare_response(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                return Ok(response.map(|()| Tracked::new(LoggedBody::empty(), guard)));
            }
            let (parts, _body) = req.into_parts();
            let (response, finish) = edge
                .handle(Incoming {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                    client: peer,
                    protocol,
                    secure,
                    endpoints,
                })
                .await;
            let length = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Ok::<_, Infallible>(
                response.map(|b| Tracked::new(LoggedBody::new(b, finish, length), guard)),
            )
        }
    })
}

/// Waits for a plain connection's first bytes: `Some(true)` when they are (or may become) the
/// HTTP/2 preface, `Some(false)` for HTTP/1.1, `None` when the connection ended or overstayed
/// first.
async fn opens_with_h2_preface(
    stream: &tokio::net::TcpStream,
    watch: &ConnectionWatch,
    stop: &mut watch::Receiver<bool>,
    drains: bool,
) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI ";
    let mut first = [0u8; 4];
    let n = tokio::select! {
        r = stream.peek(&mut first) => r.ok()?,
        _ = estuary_common::listener::stopped(stop), if drains => return None,
        why = watch.expired() => {
            tracing::debug!(reason = ?why, "A connection that sent nothing was closed.");
            return None;
        }
    };
    if n == 0 {
        return None;
    }
    // A partial preface goes to the server that speaks both (rare: clients send the request
    // line in one segment).
    Some(first[..n] == PREFACE[..n])
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs an HTTP connection to its end; with a cork, each poll of the connection is followed
/// by sending what that poll wrote (see [`crate::cork`]), and the end waits for the last send.
async fn drive<F>(mut conn: Pin<&mut F>, cork: Option<&(dyn Drain + Sync)>) -> Result<(), BoxError>
where
    F: Future<Output = Result<(), BoxError>>,
{
    let mut finished = None;
    std::future::poll_fn(|cx| {
        if finished.is_none()
            && let Poll::Ready(r) = conn.as_mut().poll(cx)
        {
            finished = Some(r);
        }
        if let Some(cork) = cork {
            match cork.poll_drain(cx) {
                // The socket is full: the task is woken when it has room.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) if finished.is_none() => return Poll::Ready(Err(e.into())),
                Poll::Ready(_) => {}
            }
        }
        match finished.take() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    })
    .await
}

/// Serves HTTP/3 on a QUIC endpoint until `stop` turns true.
async fn accept_quic(shared: Arc<Shared>, endpoint: quinn::Endpoint, stop: watch::Receiver<bool>) {
    let mut stop_accepting = stop.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = stopped(&mut stop_accepting) => return,
        };
        // An Initial from an address that has not proved it receives our packets gets a
        // Retry, which costs no state: a flood of Initials from spoofed addresses never
        // reaches the connection slots.
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let Some(permit) = shared.gate.try_admit(incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let shared2 = Arc::clone(&shared);
        let stop = stop.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            // Counted from the first packet, half-open connections included.
            let _guard = shared2
                .edge
                .observer()
                .metrics
                .connection_opened(Protocol::H3);
            // A handshake that overstays is dropped, which closes the connection.
            let handshake = tokio::time::timeout(shared2.limits.handshake_timeout, incoming);
            let connection = match handshake.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, client = %peer, "A QUIC handshake failed.");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "A QUIC handshake timed out.");
                    return;
                }
            };
            serve_h3(shared2, connection, peer, stop).await;
        });
    }
}

/// What a client may send on one HTTP/3 request stream: its head (twice the limit, for
/// QPACK's literal encoding and frames h3 skips) and no body, which the edge never reads.
fn h3_stream_budget(limits: &LimitsConfig) -> u64 {
    2 * limits.max_header_bytes as u64 + 16 * 1024
}

/// Whether a request carries a connection-specific field, which RFC 9114 section 4.2 makes
/// malformed in HTTP/3: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, or `TE` with anything but `trailers`.
fn connection_specific(headers: &http::HeaderMap) -> bool {
    use http::header;
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ]
    .iter()
    .any(|name| headers.contains_key(name))
        || headers
            .get_all(header::TE)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// HTTP/3 error code `H3_EXCESSIVE_LOAD`.
const H3_EXCESSIVE_LOAD: u32 = 0x0107;

async fn serve_h3(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let budget = h3_stream_budget(&shared.limits);
    let outcomes = crate::h3_budget::Outcomes::default();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(shared.limits.max_header_bytes as u64)
        .build::<_, Bytes>(crate::h3_budget::BudgetConnection::new(
            connection.clone(),
            budget,
            outcomes.clone(),
        ))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, client = %peer, "An HTTP/3 connection failed to start.");
            return;
        }
    };
    let requests = TaskTracker::new();
    // QUIC's idle timeout does not close a connection the client keeps alive with PINGs: the
    // same watch as on TCP does (the handshake stands for the first byte).
    let watch = ConnectionWatch::new(shared.limits.timeouts());
    watch.saw_first_byte();
    let mut resets = crate::h3_resets::ResetWindow::new(
        shared.limits.h3_max_reset_streams as u64,
        crate::h3_resets::WINDOW,
    );
    loop {
        let resolver = tokio::select! {
            r = h3.accept() => r,
            _ = stopped(&mut stop) => {
                // Draining: GOAWAY, then let the requests already accepted finish.
                let _ = h3.shutdown(0).await;
                break;
            }
            why = watch.expired() => {
                tracing::debug!(client = %peer, reason = ?why, "An unused connection was closed.");
                let _ = tokio::time::timeout(
                    estuary_common::listener::CLOSE_GRACE,
                    h3.shutdown(0),
                )
                .await;
                break;
            }
        };
        let resolver = match resolver {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, client = %peer, "An HTTP/3 connection ended.");
                break;
            }
        };
        // Rapid Reset: every cancelled stream was first accepted here, so looking at each
        // accept sees a flood. A stream the client cancelled sends one or both frames, so the
        // larger count is the number of cancelled streams.
        let frames = connection.stats().frame_rx;
        if resets.exceeded(
            std::time::Instant::now(),
            frames.reset_stream.max(frames.stop_sending),
        ) {
            tracing::debug!(client = %peer, "An HTTP/3 connection that cancelled too many streams was closed.");
            shared.edge.observer().metrics.h3_reset_flood_closes.inc();
            connection.close(
                quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD),
                b"too many cancelled streams",
            );
            break;
        }
        let edge = Arc::clone(&shared.edge);
        let (header_read_timeout, max_headers, idle_timeout) = (
            shared.limits.header_read_timeout,
            shared.limits.max_headers,
            shared.limits.idle_timeout,
        );
        let guard = watch.request();
        let outcomes = outcomes.clone();
        requests.spawn(async move {
            let _guard = guard;
            // A stream whose head does not arrive in time is dropped (and so reset), so that
            // partial heads cannot pin streams and their buffers.
            let resolved =
                tokio::time::timeout(header_read_timeout, resolver.resolve_request()).await;
            let (req, mut stream) = match resolved {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, client = %peer, "An HTTP/3 request could not be read.");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "An HTTP/3 request head timed out.");
                    return;
                }
            };
            // h3 checks pseudo-header fields and names but lets these through.
            if connection_specific(req.headers()) {
                tracing::debug!(client = %peer, "A malformed HTTP/3 request (a connection-specific field) was refused.");
                stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
                return;
            }
            if req.headers().len() > max_headers {
                let status = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                if stream.send_response(bare_response(status)).await.is_ok() {
                    let _ = stream.finish().await;
                }
                return;
            }
            let (response, mut finish) = edge
                .handle(Incoming {
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                    client: peer,
                    protocol: Protocol::H3,
                    secure: true,
                    endpoints: Endpoints::Content,
                })
                .await;
            let (mut parts, body) = response.into_parts();
            // hyper adds Date to HTTP/1.1 and HTTP/2 responses; h3 leaves it to us.
            if let Ok(date) = http::HeaderValue::from_str(&httpdate::fmt_http_date(
                std::time::SystemTime::now(),
            )) {
                parts.headers.insert(http::header::DATE, date);
            }
            if stream
                .send_response(http::Response::from_parts(parts, ()))
                .await
                .is_err()
            {
                return;
            }
            let mut sent = 0u64;
            match body {
                Body::Full(body) => {
                    // Hand the body over in pieces so that one large segment does not sit
                    // whole in QUIC's send buffer ahead of other streams. A piece that
                    // quinn cannot take within `idle_timeout` (a client that acknowledges
                    // nothing keeps the send window full) ends the request, and with it the
                    // request in flight that keeps the connection's watch from closing it.
                    const PIECE: usize = 256 * 1024;
                    let mut offset = 0;
                    while offset < body.len() {
                        let end = (offset + PIECE).min(body.len());
                        let piece = stream.send_data(body.slice(offset..end));
                        if !matches!(tokio::time::timeout(idle_timeout, piece).await, Ok(Ok(()))) {
                            finish.sent = Some(sent);
                            return;
                        }
                        sent += (end - offset) as u64;
                        offset = end;
                    }
                }
                Body::Fill(mut reader) => {
                    while let Some(chunk) = reader.next().await {
                        let Ok(chunk) = chunk else {
                            // A failed fill: cut the response short, never complete it.
                            stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                            finish.sent = Some(sent);
                            return;
                        };
                        let n = chunk.len() as u64;
                        let piece = stream.send_data(chunk);
                        if !matches!(tokio::time::timeout(idle_timeout, piece).await, Ok(Ok(()))) {
                            finish.sent = Some(sent);
                            return;
                        }
                        sent += n;
                    }
                }
            }
            finish.sent = Some(sent);
            if stream.finish().await.is_err() {
                return;
            }
            // quinn has taken the whole body, but a client that cancels now never gets the
            // rest: the response is complete only once the client acknowledged all of it.
            // What quinn took and dropped is at most the connection's send window.
            if let Some(outcome) = outcomes.take(stream.id()) {
                finish.handed_over = Some(std::time::Instant::now());
                finish.complete = matches!(
                    tokio::time::timeout(idle_timeout, outcome).await,
                    Ok(Ok(None))
                );
            }
        });
    }
    requests.close();
    requests.wait().await;
}

/// Connection IDs of 8 random bytes. quinn's default generator puts 3 random bytes in each
/// ID (2^24 of them) and does not check the ID of a Retry against the live ones: with every
/// connection validated by a Retry and about 9 IDs per live connection, a new handshake
/// collided with a live connection's ID about once in 1,600 connections, and its packets went
/// to that connection and were dropped (the client waited out its idle timeout). With 64
/// random bits a collision is negligible at any connection count (quinn-rs/quinn#2883).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// QUIC version 1 (RFC 9000).
const QUIC_V1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
const QUIC_V2: u32 = 0x6b33_43cf;

fn quic_endpoint(
    addr: SocketAddr,
    resolver: Arc<estuary_common::tls::ReloadableCert>,
    limits: &LimitsConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = estuary_common::tls::server_config(resolver, &[b"h3"], true)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // A client that changes address would be sent up to the congestion window before the new
    // path is validated; refusing migration keeps every send under the 3x amplification
    // limit of the validated address.
    server.migration(false);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_concurrent_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(limits.idle_timeout)?))
        // A client sends request heads only, so a stream's window is its byte budget (48 KiB
        // with the default `max_header_bytes`) and the connection's room for a few dozen.
        .stream_receive_window(quinn::VarInt::from_u64(h3_stream_budget(limits))?)
        .receive_window(quinn::VarInt::from_u32(1024 * 1024))
        // What quinn holds unacknowledged per connection, and so what a client that stops
        // acknowledging pins (and what a cancelled response may have been counted for but
        // never delivered): 2 MiB still carries 80 Mbit/s at 200 ms of round trip, more than
        // a video player draws. Requests stuck behind a full window end after `idle_timeout`.
        .send_window(2 * 1024 * 1024);
    server.transport_config(Arc::new(transport));
    // QUIC v1 and v2 (RFC 9369; quinn-proto is carried patched for v2: vendor/README.md)
    // only: quinn also speaks the pre-standard drafts 29 to 34 by default.
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint.supported_versions(vec![QUIC_V1, QUIC_V2]);
    endpoint.cid_generator(|| Box::new(RandomCids));
    let socket = std::net::UdpSocket::bind(addr)?;
    Ok(quinn::Endpoint::new(
        endpoint,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Peer fills of protected paths carry a one-minute token for the exact path, signed with
/// the first configured key, which every edge of a site shares.
fn peer_token_signer(config: &EdgeConfig) -> anyhow::Result<Option<crate::fill::PeerTokenSigner>> {
    let Some((kid, hex)) = config.auth.keys.iter().next() else {
        return Ok(None);
    };
    let secret = estuary_common::token::decode_secret(hex)?;
    let kid = kid.clone();
    Ok(Some(Arc::new(move |path: &str| {
        estuary_common::token::sign(
            &estuary_common::token::Claims {
                kid: kid.clone(),
                acl: path.to_owned(),
                exp: estuary_common::unix_now() + 60,
                st: None,
                ip: None,
            },
            &secret,
        )
    })))
}

/// The fill header's credential for each fill from a peer or parent: valid for one minute
/// and the exact path, signed with the first configured key, which every edge of a site shares.
fn fill_credential_signer(
    config: &EdgeConfig,
) -> anyhow::Result<Option<crate::fill::PeerTokenSigner>> {
    let Some((kid, hex)) = config.auth.keys.iter().next() else {
        return Ok(None);
    };
    let secret = estuary_common::token::decode_secret(hex)?;
    let (kid, node) = (kid.clone(), config.node.id.clone());
    Ok(Some(Arc::new(move |path: &str| {
        estuary_common::token::sign_fill(
            &kid,
            &secret,
            &node,
            path,
            estuary_common::unix_now() + 60,
        )
    })))
}

/// Runs an edge until SIGTERM or SIGINT, then drains. SIGHUP reloads the certificate.
pub async fn run(config: EdgeConfig) -> anyhow::Result<()> {
    // Room for every client connection, an upstream connection for each and the files of
    // the store and cache, so that accepting a burst of clients never waits for the kernel
    // to grow the descriptor table (see `estuary_common::fds`).
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        (config.limits.max_connections as u64)
            .saturating_mul(2)
            .saturating_add(1024),
    );
    let metrics = crate::metrics::Metrics::new(&config.node.id, &config.node.site);
    let dropped = metrics.access_log_dropped.clone();
    let access_log = match config.log.access.as_str() {
        "off" => crate::access_log::AccessLog::off(dropped),
        target => crate::access_log::AccessLog::start(target, dropped)
            .map_err(|e| anyhow::anyhow!("log.access {target}: {e}"))?,
    };
    let observer = Arc::new(crate::handler::Observer {
        metrics,
        access_log,
    });
    let store = Arc::new(crate::store::Store::open(
        &config.store.root,
        config.store.open_files,
        config.store.revalidate,
    )?);
    // The edge's one clock: the handler, the cache and the filler all read it.
    let clock = crate::clock::Clock::system();
    let mut edge = Edge::new(&config, store, Arc::clone(&observer))?.with_clock(clock.clone());
    let mut cache = None;
    if let Some(up) = &config.upstream {
        let max_object = config.cache.max_object.as_u64();
        let opened = crate::cache::Cache::open(
            &crate::cache::TierConfig {
                ram_bytes: config.cache.ram.as_u64() as usize,
                disk_dir: config.cache.disk_dir.as_deref(),
                disk_bytes: config.cache.disk.as_u64() as usize,
                // A block holds one object with its head; leave room for the head.
                max_object_bytes: max_object as usize + 64 * 1024,
                disk_min_fills: config.cache.disk_min_fills,
                policy: config.cache.policy.into(),
                // The policy's sampling and hashes get a fresh seed each start, so that clients
                // cannot predict them.
                seed: {
                    use std::hash::{BuildHasher, Hasher};
                    std::collections::hash_map::RandomState::new()
                        .build_hasher()
                        .finish()
                },
            },
            Arc::clone(&observer) as Arc<dyn crate::cache::CacheObserver>,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cache: {e}"))?
        .with_clock(clock.clone());
        let ttl = &config.cache.ttl;
        let filler = crate::fill::Filler::new(
            crate::fill::FillConfig {
                peers: up.peers.clone(),
                self_url: up.self_url.clone(),
                peer_token: peer_token_signer(&config)?,
                fill_credential: fill_credential_signer(&config)?,
                parents: up.parents.clone(),
                origins: up.origin.clone(),
                connect_timeout: up.connect_timeout,
                ca_file: up.ca_file.clone(),
                read_timeout: up.read_timeout,
                breaker_threshold: up.breaker_threshold,
                breaker_cool_down: up.breaker_cool_down,
                overrides: crate::freshness::Overrides {
                    manifest: ttl.manifest,
                    segment: ttl.segment,
                    other: ttl.other,
                    negative: ttl.negative,
                },
                max_object_bytes: max_object,
                slice_bytes: config.cache.slice.as_u64(),
                node_id: config.node.id.clone(),
            },
            opened.clone(),
            Arc::clone(&observer) as Arc<dyn crate::fill::FillObserver>,
            clock,
        )
        .map_err(|e| anyhow::anyhow!("upstream.ca_file: {e}"))?;
        edge = edge.with_filler(filler);
        if let Some(dir) = &config.cache.disk_dir {
            edge = edge.with_purge_log(dir.join("prefix-purges.json"))?;
        }
        cache = Some(opened);
    }
    let edge = Arc::new(edge);
    let shared = Arc::new(Shared {
        edge: Arc::clone(&edge),
        builder: http_builder(&config.limits),
        h1: h1_builder(&config.limits),
        limits: config.limits.clone(),
        gate: ConnectionGate::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ),
        tracker: TaskTracker::new(),
    });
    let stop_rx = life.stop_signal();

    let content_and_admin = if config.listen.admin.is_some() {
        Endpoints::Content
    } else {
        Endpoints::ContentAndAdmin
    };
    if let Some(addr) = config.listen.http {
        let l = bind_tcp(addr).map_err(|e| anyhow::anyhow!("listen.http {addr}: {e}"))?;
        tracing::info!(address = %addr, "Serving plain HTTP.");
        tokio::spawn(accept_tcp(
            Arc::clone(&shared),
            l,
            None,
            content_and_admin,
            stop_rx.clone(),
        ));
    }
    if let Some(addr) = config.listen.admin {
        let l = bind_tcp(addr).map_err(|e| anyhow::anyhow!("listen.admin {addr}: {e}"))?;
        tracing::info!(address = %addr, "Serving the admin endpoints.");
        // Admin connections are not tracked, so they never hold up the drain.
        tokio::spawn(accept_tcp(
            Arc::clone(&shared),
            l,
            None,
            Endpoints::Admin,
            stop_rx.clone(),
        ));
    }
    let mut cert = None;
    let mut endpoint = None;
    if let (Some(addr), Some(tls)) = (config.listen.https, &config.tls) {
        let resolver = estuary_common::tls::ReloadableCert::load(&tls.cert, &tls.key)?;
        let server_tls = estuary_common::tls::server_config(
            Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>,
            &[b"h2", b"http/1.1"],
            false,
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        let l = bind_tcp(addr).map_err(|e| anyhow::anyhow!("listen.https {addr}: {e}"))?;
        tracing::info!(address = %addr, "Serving HTTPS (HTTP/1.1 and HTTP/2).");
        tokio::spawn(accept_tcp(
            Arc::clone(&shared),
            l,
            Some(acceptor),
            Endpoints::Content,
            stop_rx.clone(),
        ));
        if config.listen.http3 {
            let ep = quic_endpoint(addr, Arc::clone(&resolver), &config.limits)
                .map_err(|e| anyhow::anyhow!("listen.https {addr} (UDP): {e}"))?;
            tracing::info!(address = %addr, "Serving HTTP/3.");
            tokio::spawn(accept_quic(
                Arc::clone(&shared),
                ep.clone(),
                stop_rx.clone(),
            ));
            endpoint = Some(ep);
        }
        cert = Some(resolver);
    }
    edge.set_ready(true);
    tracing::info!(node = %config.node.id, site = %config.node.site, root = %config.store.root.display(), "The edge is ready.");
    if let Some(cp) = config.control_plane.clone() {
        let prepos = crate::prepos::Prepositioner::open(crate::prepos::PreposConfig {
            root: config.store.root.clone(),
            max_rate: config.prepositioning.max_rate.map_or(0, |r| r.as_u64()),
            window: config.prepositioning.window.map(|[a, b]| (a, b)),
            signer: peer_token_signer(&config)?,
            keys: estuary_common::signing::ManifestKeys::from_hex(&config.manifest_keys)
                .map_err(|(id, why)| anyhow::anyhow!("manifest_keys.{id}: {why}"))?,
            client: estuary_common::http::HttpClient::new(estuary_common::http::ClientOptions {
                ca_file: cp.ca_file.clone(),
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("control_plane.ca_file: {e}"))?,
        });
        let applier = Arc::clone(&prepos);
        estuary_common::service::heartbeat::start(
            identity(&config),
            cp,
            heartbeat_report(Arc::clone(&edge), Arc::clone(&observer), prepos),
            move |reply| applier.apply(reply),
            stop_rx.clone(),
        );
    }

    // SIGHUP reloads the certificate.
    life.wait_for_stop_or_reload(|| match &cert {
        Some(c) => match c.reload() {
            Ok(()) => {
                observer.metrics.tls_reloads_ok.inc();
                tracing::info!("The certificate was reloaded.");
            }
            Err(e) => {
                observer.metrics.tls_reloads_failed.inc();
                tracing::error!(error = %e, "The certificate could not be reloaded; the previous one stays in use.");
            }
        },
        None => tracing::info!("SIGHUP: no certificate to reload."),
    })
    .await;

    tracing::info!(timeout = ?life.drain_timeout(), "Draining: no new connections; in-flight requests may finish.");
    edge.set_ready(false);
    observer.metrics.draining.set(1);
    life.lame_duck().await;
    life.begin_drain();
    if let Some(ep) = &endpoint {
        ep.set_server_config(None);
    }
    shared.tracker.close();
    match life.drain(shared.tracker.wait()).await {
        Some(()) => tracing::info!("Drained; exiting."),
        None => tracing::warn!(
            open = shared.tracker.len(),
            "The drain deadline passed; closing the remaining connections."
        ),
    }
    if let Some(ep) = endpoint {
        ep.close(quinn::VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    if let Some(cache) = cache {
        cache.close().await;
    }
    Ok(())
}

/// The edge as its heartbeats name it: `[node]` and the listen addresses.
fn identity(config: &EdgeConfig) -> estuary_common::service::heartbeat::Identity {
    let url = |scheme: &str, a: Option<SocketAddr>| a.map(|a| format!("{scheme}://{a}"));
    estuary_common::service::heartbeat::Identity {
        id: config.node.id.clone(),
        site: config.node.site.clone(),
        role: estuary_common::cp::Role::Edge,
        listening: estuary_common::cp::Addresses {
            http: url("http", config.listen.http),
            https: url("https", config.listen.https),
            admin: url("http", config.listen.admin.or(config.listen.http)),
        },
    }
}

/// What each heartbeat reports: readiness, request and byte rates since the previous beat,
/// the cache hit ratio and the pre-positioned inventory.
fn heartbeat_report(
    edge: Arc<Edge>,
    observer: Arc<crate::handler::Observer>,
    prepos: Arc<crate::prepos::Prepositioner>,
) -> impl FnMut() -> estuary_common::service::heartbeat::Report + Send + 'static {
    use estuary_common::cp::{Load, Usage};
    let mut last = (std::time::Instant::now(), 0u64, 0u64);
    move || {
        let (requests, bytes, connections) = observer.metrics.totals();
        let now = std::time::Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let load = Load {
            bytes_per_second: bytes.saturating_sub(last.2) as f64 / secs,
            requests_per_second: requests.saturating_sub(last.1) as f64 / secs,
            connections,
            cpu: 0.0,
            ..Load::default()
        };
        last = (now, requests, bytes);
        let hits = observer.metrics.cache_hits_ram.get() + observer.metrics.cache_hits_disk.get();
        let lookups = hits + observer.metrics.cache_misses.get();
        estuary_common::service::heartbeat::Report {
            ready: edge.is_ready(),
            load,
            usage: Usage {
                disk_used_bytes: 0,
                cache_hit_ratio: if lookups == 0 {
                    0.0
                } else {
                    hits as f64 / lookups as f64
                },
            },
            inventory: prepos.inventory(),
            rooms: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_connection_ids_do_not_collide_among_many_connections() {
        // quinn's default generator (3 random bytes) gives about 2,600 repeats in 300,000
        // IDs, as many as 33,000 connections hold; one repeat hangs a handshake.
        use quinn::ConnectionIdGenerator;
        let mut ids = std::collections::HashSet::new();
        let mut generator = RandomCids;
        for _ in 0..300_000 {
            let id = generator.generate_cid();
            assert_eq!(id.len(), generator.cid_len());
            assert!(ids.insert(id), "a connection ID came twice");
        }
    }

    fn head(fields: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, http::HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn connection_specific_fields_are_found() {
        assert!(!connection_specific(&head(&[("user-agent", "x")])));
        assert!(!connection_specific(&head(&[("te", "trailers")])));
        assert!(!connection_specific(&head(&[("te", " Trailers ")])));
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(connection_specific(&head(&[(name, "x")])), "{name}");
        }
        assert!(connection_specific(&head(&[("te", "trailers, gzip")])));
        assert!(connection_specific(&head(&[
            ("te", "trailers"),
            ("te", "gzip")
        ])));
    }
}
