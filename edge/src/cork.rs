//! Write coalescing for HTTP/2 connections: what the connection writes during one poll leaves
//! in one write to the TLS stream, as with TCP_CORK.
//!
//! The h2 crate writes each DATA frame separately and flushes its codec after each one, so
//! written straight to TLS every small response becomes its own TLS record, its own `writev`
//! and its own TCP segment (and the client's receive path pays for each). Here the frames are
//! copied into a buffer instead, and the task that drives the connection sends the buffer
//! after each poll of the connection ([`Cork::poll_drain`]), when everything that one batch of
//! requests produced is in it. Large writes (a segment's full-size frames) skip the copy: the
//! buffer is sent first and the write goes straight through, so the order never changes.
//!
//! Contract: `poll_flush` on [`CorkedIo`] only pushes out what exceeds the buffer; the bytes
//! written are delivered by the driver's `poll_drain` at the end of the same poll. Every
//! write into the connection happens inside the connection's own poll (h2's streams queue
//! frames in shared state; only the connection writes to the socket), so nothing waits for a
//! later event to be sent.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this large go straight to the stream (after what is buffered).
const DIRECT_WRITE: usize = 8 * 1024;
/// The buffer is sent before it grows past this size; above it writers wait.
const HIGH_WATER: usize = 64 * 1024;

/// The stream and the bytes written to it but not yet sent.
struct Inner<T> {
    io: T,
    buf: Vec<u8>,
    /// How much of `buf` has been sent already.
    sent: usize,
}

impl<T: AsyncWrite + Unpin> Inner<T> {
    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Sends the buffered bytes (without flushing the stream).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: sends the buffer if it would grow past the mark.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.pending() + len > HIGH_WATER || len >= DIRECT_WRITE {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The connection's side: an `AsyncRead + AsyncWrite` that buffers small writes.
pub struct CorkedIo<T>(Arc<Mutex<Inner<T>>>);

/// The driver's side: sends what the connection wrote during a poll.
pub struct Cork<T>(Arc<Mutex<Inner<T>>>);

/// Wraps `io`; hand the first half to the HTTP connection and drain with the second.
pub fn cork<T>(io: T) -> (CorkedIo<T>, Cork<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        io,
        buf: Vec::new(),
        sent: 0,
    }));
    (CorkedIo(Arc::clone(&inner)), Cork(inner))
}

fn lock<T>(m: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // Only the connection's task touches the stream, so the lock is never contended, and a
    // panic while holding it leaves nothing half-written that a later caller could misread.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends what a corked connection has written.
pub trait Drain: Send {
    /// Sends everything buffered and flushes the stream. Call after every poll of the
    /// connection; a `Pending` means the socket is full and the task is woken when it drains.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: AsyncWrite + Unpin + Send> Drain for Cork<T> {
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        ready!(inner.poll_send(cx))?;
        // Always flush: a write that went straight through may have left bytes inside the
        // stream (TLS records that did not fit in the socket), which only a flush sends.
        Pin::new(&mut inner.io).poll_flush(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CorkedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CorkedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.0);
        ready!(inner.poll_room(cx, data.len()))?;
        if data.len() >= DIRECT_WRITE {
            return Pin::new(&mut inner.io).poll_write(cx, data);
        }
        inner.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut inner = lock(&self.0);
        ready!(inner.poll_room(cx, total))?;
        if total >= DIRECT_WRITE {
            return Pin::new(&mut inner.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            inner.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Deferred to the driver's `poll_drain` at the end of this poll (see the module docs).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        ready!(inner.poll_send(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_leave_together_and_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (mut io, cork) = cork(client);
        io.write_all(b"one ").await.expect("io");
        io.write_all(b"two ").await.expect("io");
        io.flush().await.expect("io");
        // Nothing has left yet: the driver sends at the end of the poll.
        let mut probe = [0u8; 16];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            server.read(&mut probe),
        )
        .await;
        assert!(early.is_err(), "bytes left before the drain");
        let big = vec![7u8; DIRECT_WRITE];
        io.write_all(&big).await.expect("io");
        io.write_all(b" three").await.expect("io");
        poll_fn(|cx| cork.poll_drain(cx)).await.expect("io");
        let mut got = vec![0u8; 8 + DIRECT_WRITE + 6];
        server.read_exact(&mut got).await.expect("io");
        assert_eq!(&got[..8], b"one two ");
        assert!(got[8..8 + DIRECT_WRITE].iter().all(|&b| b == 7));
        assert_eq!(&got[8 + DIRECT_WRITE..], b" three");
    }

    #[tokio::test]
    async fn a_full_buffer_waits_for_the_reader() {
        // A 1 KiB pipe: the writer must stop at the high-water mark until the reader reads.
        let (client, mut server) = tokio::io::duplex(1024);
        let (mut io, cork) = cork(client);
        let writer = tokio::spawn(async move {
            for _ in 0..(4 * HIGH_WATER / 1000) {
                io.write_all(&[1u8; 1000]).await.expect("io");
            }
            poll_fn(|cx| cork.poll_drain(cx)).await.expect("io");
        });
        let mut total = 0;
        let mut buf = vec![0u8; 4096];
        while total < 4 * HIGH_WATER / 1000 * 1000 {
            let n = server.read(&mut buf).await.expect("io");
            assert!(n > 0);
            assert!(buf[..n].iter().all(|&b| b == 1));
            total += n;
        }
        writer.await.expect("io");
    }
}
