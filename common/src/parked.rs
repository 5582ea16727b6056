//! HTTP/1.1 connections that hold no HTTP state while idle.
//!
//! hyper gives every HTTP/1.1 connection an 8 KiB write buffer when it starts and an 8 KiB
//! read buffer on its first read, and keeps both (with its timers and the connection's
//! future) for as long as the connection lives, idle or not: about 22 KiB a connection. A
//! video edge or a chat relay holds many more idle keep-alive connections than busy ones, so
//! here a connection is *parked* between requests: only the socket, the leftover bytes of a
//! pipelined request (if any) and the connection's watch remain, and a new hyper connection
//! is made over the same socket when its next bytes arrive.
//!
//! A hyper connection is given up (`into_parts`) only when nothing can be lost: no request in
//! flight (the watch's count, kept by the guard in each response body), every byte of the
//! last response accepted by the socket, and hyper waiting for the next request's bytes. Bytes
//! hyper read but did not parse come back in `Parts::read_buf` and are served first next time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::listener::{CLOSE_GRACE, ConnectionWatch, Expiry, WatchedIo, stopped};

/// A socket that can wait for bytes without reading them.
pub trait Parkable: AsyncRead + AsyncWrite + Unpin + Send {
    /// Resolves when a read would not block (bytes, end of stream or an error).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Parkable for tokio::net::TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
}

impl<I: Parkable> Parkable for WatchedIo<I> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.get_ref().readable()
    }
}

/// A connection's HTTP service as [`serve`] takes it: cloned for each busy spell, its futures
/// boxed into `Unpin` ones.
pub trait ConnService<B>:
    Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<B>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<T, B> ConnService<B> for T where
    T: Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Unpin
        + 'static
{
}

/// Why a served connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed it, or hyper did (`Connection: close`, an error answered).
    Done,
    /// The service stopped (drain): the request in flight finished first.
    Stopped,
    /// It overstayed a limit of its watch.
    Expired(Expiry),
    /// An IO or protocol error.
    Failed(String),
}

/// Serves HTTP/1.1 on `io` until the client leaves, `stop` turns true (when `drains`) or the
/// watch expires; hyper's state exists only while a request is being read or answered.
pub async fn serve<I, S, B>(
    mut io: I,
    builder: &http1::Builder,
    service: S,
    watch: &Arc<ConnectionWatch>,
    stop: &mut watch::Receiver<bool>,
    drains: bool,
) -> End
where
    I: Parkable,
    S: ConnService<B>,
    B: Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut leftover = Bytes::new();
    let mut conn = Conn {
        builder,
        service,
        watch,
        stop,
        drains,
    };
    loop {
        // Parked: the socket and the watch, nothing else.
        if leftover.is_empty() {
            tokio::select! {
                r = io.readable() => if let Err(e) = r {
                    return End::Failed(e.to_string());
                },
                _ = stopped(conn.stop), if drains => return End::Stopped,
                why = watch.expired() => return End::Expired(why),
            }
        }
        // Busy: a hyper connection, in its own allocation so that a parked connection's
        // future stays small.
        let cycle = Box::pin(serve_busy(
            &mut io,
            std::mem::take(&mut leftover),
            &mut conn,
        ));
        match cycle.await {
            // A copy: `rest` is a view into hyper's read buffer and would keep all of it.
            Busy::Idle(rest) => leftover = Bytes::copy_from_slice(&rest),
            Busy::End(end) => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                return end;
            }
        }
    }
}

enum Busy {
    /// hyper waits for the next request: park, keeping the bytes it read but did not parse.
    Idle(Bytes),
    End(End),
}

/// What every busy spell of one connection uses.
struct Conn<'a, S> {
    builder: &'a http1::Builder,
    service: S,
    watch: &'a Arc<ConnectionWatch>,
    stop: &'a mut watch::Receiver<bool>,
    drains: bool,
}

async fn serve_busy<I, S, B>(io: &mut I, prefix: Bytes, c: &mut Conn<'_, S>) -> Busy
where
    I: Parkable,
    S: ConnService<B>,
    B: Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (watch, drains) = (c.watch, c.drains);
    let requests_before = watch.requests_started();
    let probe = Arc::new(Probe::default());
    let io = TokioIo::new(ProbedIo {
        io,
        prefix,
        probe: Arc::clone(&probe),
    });
    let mut conn = c.builder.serve_connection(
        io,
        Boxed {
            inner: c.service.clone(),
            probe: Arc::clone(&probe),
        },
    );
    let probe = &*probe;
    enum Next {
        Ran(Option<hyper::Result<()>>),
        Stop,
        Expired(Expiry),
    }
    let next = tokio::select! {
        r = run(&mut conn, true, probe, watch, requests_before) => Next::Ran(r),
        _ = stopped(c.stop), if drains => Next::Stop,
        why = watch.expired() => Next::Expired(why),
    };
    let ended = match next {
        Next::Ran(Some(r)) => finish(r, End::Done),
        Next::Ran(None) => return Busy::Idle(conn.into_parts().read_buf),
        Next::Stop => {
            // Draining: finish the request in flight, then close.
            Pin::new(&mut conn).graceful_shutdown();
            finish(
                run(&mut conn, false, probe, watch, requests_before)
                    .await
                    .unwrap_or(Ok(())),
                End::Stopped,
            )
        }
        Next::Expired(why) => {
            // A head that never completes, or a client that does not read its response.
            Pin::new(&mut conn).graceful_shutdown();
            let _ = tokio::time::timeout(
                CLOSE_GRACE,
                run(&mut conn, false, probe, watch, requests_before),
            )
            .await;
            End::Expired(why)
        }
    };
    Busy::End(ended)
}

/// Runs `conn` until it ends (`Some`) or, when `park` is set, until it may be parked (`None`).
/// It is polled as the future it is, so that an ending connection first writes out what it
/// still holds (hyper flushes before it shuts the socket down); `into_parts` is taken only in
/// the parking state, where nothing is left to write.
async fn run<C>(
    conn: &mut C,
    park: bool,
    probe: &Probe,
    watch: &ConnectionWatch,
    requests_before: u64,
) -> Option<hyper::Result<()>>
where
    C: Future<Output = hyper::Result<()>> + Unpin,
{
    std::future::poll_fn(|cx| match Pin::new(&mut *conn).poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending if park && probe.waits_for_request(watch, requests_before) => {
            Poll::Ready(None)
        }
        Poll::Pending => Poll::Pending,
    })
    .await
}

fn finish(r: hyper::Result<()>, ok: End) -> End {
    match r {
        Ok(()) => ok,
        Err(e) => End::Failed(e.to_string()),
    }
}

/// What the socket last told hyper, to know when hyper has nothing left to do.
#[derive(Default)]
struct Probe {
    /// The last read found no bytes: hyper waits for the client.
    read_pending: AtomicBool,
    /// The last write or flush could not finish: hyper still holds bytes to send.
    write_blocked: AtomicBool,
    /// Bytes hyper read in this busy spell.
    read: AtomicU64,
    /// A request in this spell came with a body: hyper decides what becomes of the body's
    /// unread bytes, so this spell is never parked.
    body_seen: AtomicBool,
}

impl Probe {
    /// True when hyper, after answering at least one request in this spell (or before reading
    /// anything), waits for the client with no request in flight and nothing left to write.
    fn waits_for_request(&self, watch: &ConnectionWatch, requests_before: u64) -> bool {
        self.read_pending.load(Ordering::Relaxed)
            && !self.write_blocked.load(Ordering::Relaxed)
            && !self.body_seen.load(Ordering::Relaxed)
            && watch.in_flight() == 0
            && (watch.requests_started() > requests_before
                || self.read.load(Ordering::Relaxed) == 0)
    }

    fn wrote<T>(&self, r: Poll<T>) -> Poll<T> {
        self.write_blocked.store(r.is_pending(), Ordering::Relaxed);
        r
    }
}

/// The socket as hyper sees it in one busy spell: the parked bytes first, then the socket.
struct ProbedIo<'a, I> {
    io: &'a mut I,
    prefix: Bytes,
    probe: Arc<Probe>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ProbedIo<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.probe.read_pending.store(false, Ordering::Relaxed);
            this.probe.read.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.io).poll_read(cx, buf);
        match &r {
            Poll::Pending => this.probe.read_pending.store(true, Ordering::Relaxed),
            Poll::Ready(_) => {
                this.probe.read_pending.store(false, Ordering::Relaxed);
                let n = buf.filled().len() - before;
                this.probe.read.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ProbedIo<'_, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        self.probe.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write_vectored(cx, bufs);
        self.probe.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.io).poll_flush(cx);
        self.probe.wrote(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// The service, with its futures boxed (so that the connection is `Unpin` and can be given up with `into_parts`), noting
/// requests that come with a body.
struct Boxed<S> {
    inner: S,
    probe: Arc<Probe>,
}

impl<S> Service<hyper::Request<Incoming>> for Boxed<S>
where
    S: Service<hyper::Request<Incoming>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        if !req.body().is_end_stream() {
            self.probe.body_seen.store(true, Ordering::Relaxed);
        }
        Box::pin(self.inner.call(req))
    }
}
