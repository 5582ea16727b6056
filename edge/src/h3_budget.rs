//! A byte budget on what a client may send on each HTTP/3 request stream.
//!
//! h3 reads a whole HEADERS frame into memory before it checks its size against
//! `max_field_section_size`, so a client announcing a huge frame and trickling it in could
//! make the edge buffer without bound. The edge takes no request bodies, so a request stream
//! needs little more than its head: past the budget, the stream is stopped and h3 sees it
//! end in an error. The QUIC layer under h3 is wrapped, not h3 itself: h3-quinn's types with
//! a counter on the receive side of each stream the client opens.

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// HTTP/3 error code `H3_EXCESSIVE_LOAD`.
const EXCESSIVE_LOAD: u64 = 0x0107;

/// An h3-quinn connection whose peer-initiated bidirectional streams carry a byte budget.
pub struct BudgetConnection {
    inner: h3_quinn::Connection,
    budget: u64,
}

impl BudgetConnection {
    pub fn new(connection: quinn::Connection, budget: u64) -> Self {
        Self {
            inner: h3_quinn::Connection::new(connection),
            budget,
        }
    }
}

/// A request stream with what is left of its budget.
pub struct BudgetBidi {
    inner: h3_quinn::BidiStream<Bytes>,
    left: u64,
}

/// The receive half of a request stream, with what is left of its budget.
pub struct BudgetRecv {
    inner: h3_quinn::RecvStream,
    left: u64,
}

/// Counts a chunk against `left`; past it, stops the stream and reports an error.
fn charge<R: quic::RecvStream>(
    inner: &mut R,
    left: &mut u64,
    polled: Poll<Result<Option<R::Buf>, StreamErrorIncoming>>,
) -> Poll<Result<Option<R::Buf>, StreamErrorIncoming>> {
    if let Poll::Ready(Ok(Some(data))) = &polled {
        let n = data.remaining() as u64;
        if n > *left {
            inner.stop_sending(EXCESSIVE_LOAD);
            return Poll::Ready(Err(StreamErrorIncoming::Unknown(
                "the request stream exceeded its byte budget".into(),
            )));
        }
        *left -= n;
    }
    polled
}

impl quic::RecvStream for BudgetRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = self.inner.poll_data(cx);
        charge(&mut self.inner, &mut self.left, polled)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl quic::RecvStream for BudgetBidi {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = self.inner.poll_data(cx);
        charge(&mut self.inner, &mut self.left, polled)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl quic::SendStream<Bytes> for BudgetBidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl quic::BidiStream<Bytes> for BudgetBidi {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = BudgetRecv;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            BudgetRecv {
                inner: recv,
                left: self.left,
            },
        )
    }
}

/// The opener of server-initiated streams; a server opens no bidirectional stream, but the
/// types must match the connection's.
pub struct BudgetOpener {
    inner: h3_quinn::OpenStreams,
}

impl quic::OpenStreams<Bytes> for BudgetOpener {
    type BidiStream = BudgetBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BudgetBidi, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.inner, cx).map_ok(|inner| BudgetBidi {
            inner,
            left: u64::MAX,
        })
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.inner, code, reason)
    }
}

impl quic::OpenStreams<Bytes> for BudgetConnection {
    type BidiStream = BudgetBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BudgetBidi, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.inner, cx).map_ok(|inner| BudgetBidi {
            inner,
            left: u64::MAX,
        })
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.inner, code, reason)
    }
}

impl quic::Connection<Bytes> for BudgetConnection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = BudgetOpener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BudgetBidi, ConnectionErrorIncoming>> {
        let budget = self.budget;
        quic::Connection::<Bytes>::poll_accept_bidi(&mut self.inner, cx).map_ok(|inner| {
            BudgetBidi {
                inner,
                left: budget,
            }
        })
    }

    fn opener(&self) -> BudgetOpener {
        BudgetOpener {
            inner: quic::Connection::<Bytes>::opener(&self.inner),
        }
    }
}
