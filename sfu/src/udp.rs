//! The one UDP socket every peer's media uses (shards send on it with sendmmsg), and the
//! reader thread that takes datagrams off it a batch at a time (recvmmsg), stamps their receive time, routes each to its peer's
//! shard (`demux.rs`) and drops the rest, counted by reason. A full shard queue drops too:
//! media must never hold the socket back.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::demux::Routes;
use crate::metrics::{DropReason, Metrics};
use crate::shard::{RouteUpdate, ShardIn};

/// Datagrams taken per recvmmsg.
const BATCH: usize = 32;
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

/// Reads datagrams until `stop`, routing each to its shard.
pub fn reader(
    socket: Arc<UdpSocket>,
    shards: Vec<SyncSender<ShardIn>>,
    updates: Receiver<RouteUpdate>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let local = metrics.local();
    let mut routes = Routes::new();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut flushed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            match recvmmsg(
                fd,
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => got.extend(msgs.map(|m| (m.bytes, m.address.and_then(std_addr)))),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; not fatal.
                    tracing::debug!(error = %e, "Media datagrams could not be received.");
                }
            }
        }
        let recv_at = Instant::now();
        // Route changes first: a peer's ufrag is added before its answer leaves, so its
        // first STUN request always finds it here.
        for u in updates.try_iter() {
            match u {
                RouteUpdate::Add { ufrag, route } => routes.add_peer(ufrag, route),
                RouteUpdate::Remove { ufrag } => routes.remove_peer(&ufrag),
            }
        }
        for (i, (len, src)) in got.iter().enumerate() {
            let Some(src) = *src else { continue };
            let buf = &bufs[i][..(*len).min(MAX_DATAGRAM)];
            match routes.route(buf, src) {
                Err(d) => local.dropped(DropReason::from(d)),
                Ok(route) => {
                    let Some(shard) = shards.get(usize::from(route.shard)) else {
                        local.dropped(DropReason::UnknownSource);
                        continue;
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
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
            }
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
