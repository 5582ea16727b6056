//! A byte budget on what a client may send on each HTTP/3 request stream.
//!
//! h3 reads a whole HEADERS frame into memory before it checks its size against
//! `max_field_section_size`, so a client announcing a huge frame and trickling it in could
//! make the edge buffer without bound. The edge takes no request bodies, so a request stream
//! needs little more than its head: past the budget, the stream is stopped and h3 sees it
//! end in an error. The QUIC layer under h3 is wrapped, not h3 itself: h3-quinn's connection
//! for the control streams, and request streams of our own on quinn's (as h3-quinn writes
//! them) with a counter on the receive side.
//!
//! Owning the request streams also tells the front end how each response ended: h3 reports a
//! response as finished once quinn has taken its last byte, but a client that cancels
//! (STOP_SENDING) after that never gets the rest. Each accepted stream leaves quinn's
//! `stopped` future in [`Outcomes`], which resolves once the client acknowledged the whole
//! stream or stopped it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use tokio_util::sync::ReusableBoxFuture;

/// HTTP/3 error code `H3_EXCESSIVE_LOAD`.
const EXCESSIVE_LOAD: u64 = 0x0107;

/// How a response stream ended: `Ok(None)` once the client acknowledged all of it,
/// `Ok(Some(code))` when it stopped the stream.
pub type Outcome =
    Pin<Box<dyn Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>> + Send + Sync>>;

/// The [`Outcome`] of each request stream still open, by stream id; an entry leaves when the
/// front end takes it or the stream is dropped.
#[derive(Clone, Default)]
pub struct Outcomes(Arc<Mutex<HashMap<StreamId, Outcome>>>);

impl Outcomes {
    /// Takes the outcome of stream `id`, if it is still open.
    pub fn take(&self, id: StreamId) -> Option<Outcome> {
        self.0.lock().ok()?.remove(&id)
    }

    fn insert(&self, id: StreamId, outcome: Outcome) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, outcome);
        }
    }
}

/// An h3-quinn connection whose peer-initiated bidirectional streams carry a byte budget.
pub struct BudgetConnection {
    inner: h3_quinn::Connection,
    connection: quinn::Connection,
    /// The next request stream quinn accepts.
    incoming: ReusableBoxFuture<'static, AcceptedBidi>,
    budget: u64,
    outcomes: Outcomes,
}

type AcceptedBidi = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>;

impl BudgetConnection {
    pub fn new(connection: quinn::Connection, budget: u64, outcomes: Outcomes) -> Self {
        let conn = connection.clone();
        Self {
            inner: h3_quinn::Connection::new(connection.clone()),
            connection,
            incoming: ReusableBoxFuture::new(async move { conn.accept_bi().await }),
            budget,
            outcomes,
        }
    }
}

/// A request stream: quinn's two halves, the receive half with what is left of its budget.
pub struct BudgetBidi {
    send: ResponseSend,
    recv: BudgetRecv,
}

/// The receive half of a request stream, with what is left of its budget.
pub struct BudgetRecv {
    stream: Option<quinn::RecvStream>,
    reading: ReusableBoxFuture<
        'static,
        (
            quinn::RecvStream,
            Result<Option<quinn::Chunk>, quinn::ReadError>,
        ),
    >,
    id: StreamId,
    left: u64,
}

/// The send half of a request stream (h3-quinn's, which it does not let us build).
pub struct ResponseSend {
    stream: quinn::SendStream,
    writing: Option<WriteBuf<Bytes>>,
    id: StreamId,
    outcomes: Outcomes,
}

impl Drop for ResponseSend {
    fn drop(&mut self) {
        self.outcomes.take(self.id);
    }
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        e => ConnectionErrorIncoming::Undefined(Arc::new(e)),
    }
}

fn read_error(e: quinn::ReadError) -> StreamErrorIncoming {
    match e {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

impl quic::RecvStream for BudgetRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if let Some(mut stream) = self.stream.take() {
            self.reading.set(async move {
                let chunk = stream.read_chunk(usize::MAX, true).await;
                (stream, chunk)
            });
        }
        let (stream, chunk) = ready!(self.reading.poll(cx));
        self.stream = Some(stream);
        let data = chunk.map_err(read_error)?.map(|c| c.bytes);
        if let Some(data) = &data {
            let n = data.len() as u64;
            if n > self.left {
                self.stop_sending(EXCESSIVE_LOAD);
                return Poll::Ready(Err(StreamErrorIncoming::Unknown(
                    "the request stream exceeded its byte budget".into(),
                )));
            }
            self.left -= n;
        }
        Poll::Ready(Ok(data))
    }

    fn stop_sending(&mut self, error_code: u64) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.stop(quinn::VarInt::from_u64(error_code).unwrap_or(quinn::VarInt::MAX));
        }
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

impl quic::RecvStream for BudgetBidi {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl quic::SendStream<Bytes> for ResponseSend {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data.chunk()))
                    .map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::Unknown(
                "data sent before the previous data was written".into(),
            ));
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self
            .stream
            .reset(quinn::VarInt::from_u64(reset_code).unwrap_or(quinn::VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

impl quic::SendStream<Bytes> for BudgetBidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl quic::BidiStream<Bytes> for BudgetBidi {
    type SendStream = ResponseSend;
    type RecvStream = BudgetRecv;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

/// The opener of server-initiated streams: control and QPACK streams through h3-quinn; a
/// server opens no request stream.
pub struct BudgetOpener {
    inner: h3_quinn::OpenStreams,
}

fn no_bidi() -> StreamErrorIncoming {
    StreamErrorIncoming::Unknown("the edge opens no request streams".into())
}

impl quic::OpenStreams<Bytes> for BudgetOpener {
    type BidiStream = BudgetBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<BudgetBidi, StreamErrorIncoming>> {
        Poll::Ready(Err(no_bidi()))
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
        _cx: &mut Context<'_>,
    ) -> Poll<Result<BudgetBidi, StreamErrorIncoming>> {
        Poll::Ready(Err(no_bidi()))
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
        let accepted = ready!(self.incoming.poll(cx));
        let conn = self.connection.clone();
        self.incoming.set(async move { conn.accept_bi().await });
        let (send, recv) = accepted.map_err(connection_error)?;
        // quinn's stream ids are QUIC varints, which h3's accept.
        let Ok(id) = StreamId::try_from(u64::from(send.id())) else {
            return Poll::Ready(Err(ConnectionErrorIncoming::InternalError(
                "a stream id beyond the varint range".into(),
            )));
        };
        self.outcomes.insert(id, Box::pin(send.stopped()));
        Poll::Ready(Ok(BudgetBidi {
            send: ResponseSend {
                stream: send,
                writing: None,
                id,
                outcomes: self.outcomes.clone(),
            },
            recv: BudgetRecv {
                stream: Some(recv),
                reading: ReusableBoxFuture::new(std::future::pending()),
                id,
                left: self.budget,
            },
        }))
    }

    fn opener(&self) -> BudgetOpener {
        BudgetOpener {
            inner: quic::Connection::<Bytes>::opener(&self.inner),
        }
    }
}
