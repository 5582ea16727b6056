//! ICE-TCP, the passive side (RFC 6544): the fallback for clients whose UDP is blocked.
//!
//! Every peer's `Rtc` also has a passive TCP host candidate (`[listen] tcp` at `public_ip`).
//! A client connects and speaks RFC 4571 frames (`tcp_framing.rs`). The connection's first
//! frame must be a STUN request naming one of our ICE ufrags (as on UDP, `demux.rs`), within
//! `[media] tcp_first_frame_timeout`; that binds the connection to its peer, and every later
//! frame goes to the same peer's shard, marked as TCP and carrying a handle ([`TcpConn`]) by
//! which the shard writes the `Rtc`'s TCP transmits back. The shard still checks each frame
//! with `Rtc::accepts`, so a connection that learned a ufrag reaches only that peer's checks.
//!
//! Everything is bounded: `[media] tcp_max_connections` connections (beyond, closed at once
//! and counted); frames of at most [`MAX_FRAME`] bytes (a longer length field closes the
//! connection: the stream cannot be trusted after it); a connection silent for [`IDLE`]
//! (ICE consent checks come every few seconds) is closed; each connection's write queue holds
//! `[media] tcp_write_queue` datagrams (behind a kernel send buffer of [`SEND_BUFFER`]), and
//! a reader that far behind is closed by the shard (which only ever `try_send`s: a slow TCP
//! reader never holds a shard back). Frames for a
//! shard whose queue is full are dropped and counted, as on UDP.
//!
//! The one lock here is the ufrag table ([`Ufrags`]): written when a peer comes or goes,
//! read once per connection (its first frame), never per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::TrySendError;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::demux::{self, Class, Route};
use crate::inbox::ShardTx;
use crate::metrics::{DropReason, Metrics};
use crate::shard::ShardIn;
use crate::tcp_framing::{self, Decoder};

/// The longest frame taken: more than any datagram a WebRTC stack sends (DTLS and RTP stay
/// under about 1200 bytes), far less than the 65 535 the framing allows.
pub const MAX_FRAME: usize = 4096;
/// A bound connection that sends nothing this long is closed (ICE consent freshness sends a
/// STUN request every few seconds on the pair in use).
pub const IDLE: Duration = Duration::from_secs(30);
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// The kernel's send buffer per connection (fixed, not autotuned: what a slow reader can make
/// the kernel hold is bounded too). Media at several Mbit/s over a long round trip fits.
const SEND_BUFFER: usize = 256 * 1024;
/// Datagrams written with one `write_all`.
const WRITE_BATCH: usize = 64;

/// Why a TCP connection was closed (the `reason` label of `estuary_sfu_tcp_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpClose {
    /// The client closed it.
    RemoteClosed,
    /// A read or write failed.
    Error,
    /// No STUN request naming one of our ufrags within `tcp_first_frame_timeout`.
    FirstFrameTimeout,
    /// The first frame was STUN for a ufrag that is none of ours.
    UnknownUfrag,
    /// A frame that is not STUN (first frame), or not STUN, DTLS or RTP (later frames).
    Garbage,
    /// A length field over [`MAX_FRAME`].
    Oversized,
    /// Nothing received for [`IDLE`].
    Idle,
    /// Its peer's session ended.
    PeerGone,
    /// Its write queue was full (the client reads too slowly).
    WriteQueueFull,
    /// Its peer already has as many TCP connections as it may.
    TooManyForPeer,
    /// The SFU is stopping.
    Shutdown,
}

impl TcpClose {
    pub const ALL: [TcpClose; 11] = [
        TcpClose::RemoteClosed,
        TcpClose::Error,
        TcpClose::FirstFrameTimeout,
        TcpClose::UnknownUfrag,
        TcpClose::Garbage,
        TcpClose::Oversized,
        TcpClose::Idle,
        TcpClose::PeerGone,
        TcpClose::WriteQueueFull,
        TcpClose::TooManyForPeer,
        TcpClose::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpClose::RemoteClosed => "remote_closed",
            TcpClose::Error => "error",
            TcpClose::FirstFrameTimeout => "first_frame_timeout",
            TcpClose::UnknownUfrag => "unknown_ufrag",
            TcpClose::Garbage => "garbage",
            TcpClose::Oversized => "oversized",
            TcpClose::Idle => "idle",
            TcpClose::PeerGone => "peer_gone",
            TcpClose::WriteQueueFull => "write_queue_full",
            TcpClose::TooManyForPeer => "too_many_for_peer",
            TcpClose::Shutdown => "shutdown",
        }
    }
}

/// The ICE ufrags of the peers open now, for connections' first frames.
#[derive(Debug, Default)]
pub struct Ufrags(std::sync::Mutex<HashMap<String, Route>>);

impl Ufrags {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // Nothing panics while holding it; a poisoned table is still a consistent one.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, ufrag: String, route: Route) {
        self.table().insert(ufrag, route);
    }

    pub fn remove(&self, ufrag: &str) {
        self.table().remove(ufrag);
    }

    /// Where a connection's first frame sends it: a STUN message whose USERNAME names one of
    /// our ufrags.
    pub fn route_first(&self, frame: &[u8]) -> Result<Route, demux::Drop> {
        if demux::classify(frame) != Class::Stun {
            return Err(demux::Drop::Garbage);
        }
        let ufrag = demux::stun_local_ufrag(frame).ok_or(demux::Drop::Garbage)?;
        self.table()
            .get(ufrag)
            .copied()
            .ok_or(demux::Drop::UnknownUfrag)
    }
}

/// Why a datagram could not be queued for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpSendError {
    /// The connection's write queue is full.
    Full,
    /// The connection is gone.
    Closed,
}

/// A shard's handle on one connection: queues datagrams to write (framed by the
/// connection's task) and closes it.
#[derive(Clone)]
pub struct TcpConn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    shut: Arc<watch::Sender<Option<TcpClose>>>,
}

impl TcpConn {
    /// A connection's handle and the two ends its task keeps (for tests of the shard's side).
    pub fn new(
        id: u64,
        queue: usize,
    ) -> (
        Self,
        mpsc::Receiver<Vec<u8>>,
        watch::Receiver<Option<TcpClose>>,
    ) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (shut, shut_rx) = watch::channel(None);
        (
            Self {
                id,
                tx,
                shut: Arc::new(shut),
            },
            rx,
            shut_rx,
        )
    }

    /// Unique per connection for the life of the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues one datagram; never waits.
    pub fn send(&self, datagram: Vec<u8>) -> Result<(), TcpSendError> {
        self.tx.try_send(datagram).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TcpSendError::Full,
            mpsc::error::TrySendError::Closed(_) => TcpSendError::Closed,
        })
    }

    /// Closes the connection (the first reason given is the one counted).
    pub fn close(&self, reason: TcpClose) {
        self.shut.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// What every connection task shares.
pub struct TcpContext {
    pub ufrags: Arc<Ufrags>,
    pub shards: Vec<ShardTx>,
    pub metrics: Arc<Metrics>,
    pub max_connections: usize,
    pub first_frame_timeout: Duration,
    pub write_queue: usize,
}

/// Accepts connections until `stop` turns true, then closes every connection and returns
/// once their tasks have ended (they hold the shards' queues).
pub async fn serve(listener: TcpListener, ctx: Arc<TcpContext>, mut stop: watch::Receiver<bool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let next_id = AtomicU64::new(1);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            // Reap finished tasks as they end, so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "An ICE-TCP connection could not be accepted.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= ctx.max_connections {
            ctx.metrics
                .tcp_connections_total
                .with_label_values(&["refused"])
                .inc();
            drop(stream);
            continue;
        }
        ctx.metrics
            .tcp_connections_total
            .with_label_values(&["accepted"])
            .inc();
        let guard = OpenGuard::new(Arc::clone(&open), Arc::clone(&ctx.metrics));
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tasks.spawn(async move {
            let reason = connection(stream, remote, id, &ctx, stop).await;
            ctx.metrics
                .tcp_closed
                .with_label_values(&[reason.as_str()])
                .inc();
            tracing::debug!(%remote, reason = reason.as_str(), "An ICE-TCP connection closed.");
            drop(guard);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Counts a connection open for as long as it lives.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>, metrics: Arc<Metrics>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.tcp_connections.inc();
        Self { open, metrics }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tcp_connections.dec();
    }
}

/// One connection, from accept to close; returns why it closed.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    ctx: &TcpContext,
    mut stop: watch::Receiver<bool>,
) -> TcpClose {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
    let (conn, mut rx, mut shut) = TcpConn::new(id, ctx.write_queue);
    let (rd, mut wr) = stream.into_split();
    let reason = tokio::select! {
        r = read_loop(rd, remote, &conn, ctx) => r,
        r = write_loop(&mut wr, &mut rx, &ctx.metrics) => r,
        r = shut.wait_for(Option::is_some) => r.ok().and_then(|v| *v).unwrap_or(TcpClose::Shutdown),
        _ = stop.wait_for(|s| *s) => TcpClose::Shutdown,
    };
    // The shard may still hold the handle: it finds the queue closed when it next writes.
    conn.close(reason);
    if reason == TcpClose::PeerGone {
        // What the peer said last (its DTLS close) goes out, if the client takes it quickly.
        rx.close();
        let rest = write_loop(&mut wr, &mut rx, &ctx.metrics);
        let _ = tokio::time::timeout(Duration::from_millis(500), rest).await;
    }
    reason
}

/// Reads frames and hands them to the peer's shard.
async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    remote: SocketAddr,
    conn: &TcpConn,
    ctx: &TcpContext,
) -> TcpClose {
    let mut decoder = Decoder::with_max_frame(MAX_FRAME);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut route: Option<Route> = None;
    let mut deadline = tokio::time::Instant::now() + ctx.first_frame_timeout;
    loop {
        let read = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = tokio::time::sleep_until(deadline) => {
                return if route.is_some() { TcpClose::Idle } else { TcpClose::FirstFrameTimeout };
            }
        };
        let n = match read {
            Ok(0) => return TcpClose::RemoteClosed,
            Ok(n) => n,
            Err(_) => return TcpClose::Error,
        };
        let recv_at = Instant::now();
        let mut verdict = None;
        let mut frames = 0u64;
        let pushed = decoder.push(&buf[..n], &mut |frame| {
            if verdict.is_some() {
                return;
            }
            let r = match route {
                Some(r) => {
                    if demux::classify(frame) == Class::Garbage {
                        ctx.metrics.count_drop(DropReason::Garbage);
                        verdict = Some(TcpClose::Garbage);
                        return;
                    }
                    r
                }
                None => match ctx.ufrags.route_first(frame) {
                    Ok(r) => {
                        route = Some(r);
                        r
                    }
                    Err(d) => {
                        ctx.metrics.count_drop(DropReason::from(d));
                        verdict = Some(match d {
                            demux::Drop::UnknownUfrag => TcpClose::UnknownUfrag,
                            _ => TcpClose::Garbage,
                        });
                        return;
                    }
                },
            };
            frames += 1;
            let Some(shard) = ctx.shards.get(usize::from(r.shard)) else {
                verdict = Some(TcpClose::Shutdown);
                return;
            };
            let msg = ShardIn::Datagram {
                peer: r.peer,
                src: remote,
                recv_at,
                buf: frame.to_vec(),
                tcp: Some(conn.clone()),
            };
            match shard.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => ctx.metrics.count_drop(DropReason::ShardQueueFull),
                Err(TrySendError::Disconnected(_)) => verdict = Some(TcpClose::Shutdown),
            }
        });
        ctx.metrics
            .tcp_frames
            .with_label_values(&["in"])
            .inc_by(frames);
        if let Some(v) = verdict {
            return v;
        }
        if pushed.is_err() {
            ctx.metrics.count_drop(DropReason::Garbage);
            return TcpClose::Oversized;
        }
        if route.is_some() && frames > 0 {
            deadline = tokio::time::Instant::now() + IDLE;
        }
    }
}

/// Writes what the shard queued, framed, a batch at a time.
async fn write_loop(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    metrics: &Metrics,
) -> TcpClose {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut out = Vec::with_capacity(WRITE_BATCH * 1300);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            // Closed and empty (at the end, after the peer is gone): every handle still
            // alive is the connection task's own, so this does not happen before.
            return TcpClose::Shutdown;
        }
        out.clear();
        for d in &batch {
            // A datagram over 65 535 bytes cannot be framed; str0m never makes one.
            let _ = tcp_framing::encode(d, &mut out);
        }
        if wr.write_all(&out).await.is_err() {
            return TcpClose::Error;
        }
        metrics
            .tcp_frames
            .with_label_values(&["out"])
            .inc_by(batch.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(user: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attrs.extend_from_slice(user.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn the_first_frame_must_name_a_known_ufrag() {
        let u = Ufrags::default();
        let r = Route { shard: 0, peer: 9 };
        u.add("abcd".into(), r);
        assert_eq!(u.route_first(&stun("abcd:x")), Ok(r));
        assert_eq!(
            u.route_first(&stun("zzzz:x")),
            Err(demux::Drop::UnknownUfrag)
        );
        assert_eq!(u.route_first(&[0x80; 40]), Err(demux::Drop::Garbage));
        assert_eq!(u.route_first(&[22; 40]), Err(demux::Drop::Garbage));
        assert_eq!(u.route_first(b""), Err(demux::Drop::Garbage));
        u.remove("abcd");
        assert_eq!(
            u.route_first(&stun("abcd:x")),
            Err(demux::Drop::UnknownUfrag)
        );
    }

    #[test]
    fn a_full_queue_is_refused_and_the_first_close_reason_sticks() {
        let (conn, mut rx, shut) = TcpConn::new(1, 2);
        assert_eq!(conn.send(vec![1]), Ok(()));
        assert_eq!(conn.send(vec![2]), Ok(()));
        assert_eq!(conn.send(vec![3]), Err(TcpSendError::Full));
        assert_eq!(rx.try_recv().ok(), Some(vec![1]));
        assert_eq!(conn.send(vec![4]), Ok(()));
        conn.close(TcpClose::WriteQueueFull);
        conn.close(TcpClose::PeerGone);
        assert_eq!(*shut.borrow(), Some(TcpClose::WriteQueueFull));
        drop(rx);
        assert_eq!(conn.send(vec![5]), Err(TcpSendError::Closed));
    }
}
