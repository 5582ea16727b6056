//! The one UDP socket every peer's media uses (shards send on it with sendmmsg), and how
//! datagrams are taken off it a batch at a time (recvmmsg), stamped with their receive time,
//! routed to their peer's shard (`demux.rs`) or dropped, counted by reason. The only shard
//! reads the socket itself; with several, a reader thread hands each its datagrams, and a
//! full shard queue drops too: media must never hold the socket back.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TrySendError};
use std::time::{Duration, Instant};

use crate::demux::{Route, Routes};
use crate::inbox::ShardTx;
use crate::metrics::{DropReason, Metrics};
use crate::shard::{RouteUpdate, ShardIn};

/// Datagrams taken per recvmmsg.
pub const BATCH: usize = 32;
/// The largest datagram read (larger ones are cut, and then fail SRTP or DTLS checks).
const MAX_DATAGRAM: usize = 2048;

/// Binds the media socket with a large receive buffer and a read timeout (so the reader
/// notices a stop).
pub fn bind(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps it at net.core.rmem_max; a smaller buffer is not fatal.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket)
}

/// A batch of datagrams taken off the media socket, and the routes that say whose each is.
/// Made on the thread that reads (its headers are not `Send`).
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    got: Vec<(usize, Option<SocketAddr>)>,
    routes: Routes,
    updates: Receiver<RouteUpdate>,
}

impl RecvBatch {
    /// An empty batch whose routes follow `updates` (sent by the shards).
    pub fn new(updates: Receiver<RouteUpdate>) -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            headers: nix::sys::socket::MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
            routes: Routes::new(),
            updates,
        }
    }

    /// Takes up to [`BATCH`] datagrams off `socket`: with `wait`, waits for the first (up to
    /// the socket's read timeout); without, only what is already there. Returns how many.
    pub fn recv(&mut self, socket: &UdpSocket, wait: bool) -> usize {
        use nix::sys::socket::{MsgFlags, recvmmsg};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        self.got.clear();
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(b.as_mut_slice())])
            .collect();
        match recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            flags,
            None,
        ) {
            Ok(msgs) => self
                .got
                .extend(msgs.map(|m| (m.bytes, m.address.and_then(std_addr)))),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; not fatal.
                tracing::debug!(error = %e, "Media datagrams could not be received.");
            }
        }
        self.got.len()
    }

    /// Each datagram of the batch with its route, or why it has none. Route changes are
    /// applied first: a peer's ufrag is added before its answer leaves, so its first STUN
    /// request always finds it here.
    pub fn route_each(
        &mut self,
        mut each: impl FnMut(Result<(Route, SocketAddr, &[u8]), DropReason>),
    ) {
        for u in self.updates.try_iter() {
            match u {
                RouteUpdate::Add { ufrag, route } => self.routes.add_peer(ufrag, route),
                RouteUpdate::Remove { ufrag } => self.routes.remove_peer(&ufrag),
            }
        }
        for (i, (len, src)) in self.got.iter().enumerate() {
            let Some(src) = *src else { continue };
            let buf = &self.bufs[i][..(*len).min(MAX_DATAGRAM)];
            match self.routes.route(buf, src) {
                Err(d) => each(Err(DropReason::from(d))),
                Ok(route) => each(Ok((route, src, buf))),
            }
        }
    }
}

/// The reader thread of several shards: reads datagrams until `stop`, routing each to its
/// shard. (The only shard reads the socket itself: `Shard::run`.)
pub fn reader(
    socket: Arc<UdpSocket>,
    shards: Vec<ShardTx>,
    updates: Receiver<RouteUpdate>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let local = metrics.local();
    let mut batch = RecvBatch::new(updates);
    let mut flushed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        batch.recv(&socket, true);
        let recv_at = Instant::now();
        let mut disconnected = false;
        batch.route_each(|r| match r {
            Err(reason) => local.dropped(reason),
            Ok((route, src, buf)) => {
                let Some(shard) = shards.get(usize::from(route.shard)) else {
                    local.dropped(DropReason::UnknownSource);
                    return;
                };
                let msg = ShardIn::Datagram {
                    peer: route.peer,
                    src,
                    recv_at,
                    buf: buf.to_vec(),
                    tcp: None,
                };
                match shard.try_send(msg) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => local.dropped(DropReason::ShardQueueFull),
                    Err(TrySendError::Disconnected(_)) => disconnected = true,
                }
            }
        });
        if disconnected {
            break;
        }
        if recv_at.duration_since(flushed) >= Duration::from_millis(500) {
            local.flush();
            flushed = recv_at;
        }
    }
    local.flush();
}

/// Datagrams handed to the kernel per sendmmsg.
pub const SEND_BATCH: usize = 64;

/// Sends `datagrams` (destination, bytes) with as few sendmmsg calls as it takes; a datagram
/// the kernel refuses (a bad destination) is skipped. Returns how many were skipped.
#[must_use]
pub fn send_batch(
    socket: &UdpSocket,
    headers: &mut nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    datagrams: &[(SocketAddr, Vec<u8>)],
) -> usize {
    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut failed = 0;
    for chunk in datagrams.chunks(SEND_BATCH) {
        let dests: Vec<Option<SockaddrStorage>> = chunk
            .iter()
            .map(|(to, _)| Some(SockaddrStorage::from(*to)))
            .collect();
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, b)| [IoSlice::new(b)]).collect();
        let mut sent = 0;
        while sent < chunk.len() {
            match sendmmsg(
                fd,
                headers,
                slices[sent..].iter(),
                &dests[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let n = results.count();
                    if n == 0 {
                        failed += chunk.len() - sent;
                        break;
                    }
                    sent += n;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, to = %chunk[sent].0, "A datagram could not be sent.");
                    failed += 1;
                    sent += 1;
                }
            }
        }
    }
    failed
}

/// A socket address from the kernel's form.
fn std_addr(a: nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}
