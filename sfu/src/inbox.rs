//! A shard's inbox: the bounded channel every other thread (signaling, ICE-TCP, cascade
//! links, the UDP reader) hands it work on. A shard that reads the media socket itself (the
//! only shard: no reader thread, so a datagram wakes one thread, not two) waits on the socket
//! and on an eventfd at once; each message sent then also bumps the eventfd, and the last
//! sender's going does too, so the shard sees its inbox close.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;

use crate::shard::{RouteUpdate, ShardIn};

/// The sending side of a shard's inbox (cheap to clone).
#[derive(Clone)]
pub struct ShardTx {
    tx: SyncSender<ShardIn>,
    wake: Option<Arc<Waker>>,
}

impl ShardTx {
    /// Queues `msg` without waiting; a full inbox gives it back.
    pub fn try_send(&self, msg: ShardIn) -> Result<(), TrySendError<ShardIn>> {
        self.tx.try_send(msg)?;
        if let Some(w) = &self.wake {
            w.wake();
        }
        Ok(())
    }
}

/// Held by the senders only: its drop, when the last sender goes, wakes the shard too.
struct Waker(Arc<EventFd>);

impl Waker {
    fn wake(&self) {
        // Fails only when the counter would overflow (2^64 - 2 wakes unread): then the shard
        // is already awake.
        let _ = self.0.write(1);
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.wake();
    }
}

/// The receiving side, owned by the shard's thread.
pub struct Inbox {
    pub rx: Receiver<ShardIn>,
    /// When the shard reads the media socket itself: what wakes it, and the route changes
    /// its own reading applies (the reader thread's otherwise).
    pub media: Option<(Waiter, Receiver<RouteUpdate>)>,
}

/// The shard's side of the eventfd.
pub struct Waiter(Arc<EventFd>);

impl Waiter {
    /// Waits until `socket` has a datagram, a message was sent, or `timeout` has passed
    /// (nanosecond precision: str0m's pacing timers are finer than poll's milliseconds).
    pub fn wait(&self, socket: BorrowedFd<'_>, timeout: Duration) {
        let mut fds = [
            PollFd::new(socket, PollFlags::POLLIN),
            PollFd::new(self.0.as_fd(), PollFlags::POLLIN),
        ];
        if ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None).is_err() {
            // EINTR (or a stray error): the caller's loop looks again.
            return;
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            // Resets the counter (non-blocking: a racing read finds 0 and fails harmlessly).
            let _ = self.0.read();
        }
    }
}

/// A shard's inbox holding up to `bound` messages; with `own_socket` (the route changes the
/// shard will apply itself), the shard reads the media socket and is woken by every send.
pub fn channel(
    bound: usize,
    own_socket: Option<Receiver<RouteUpdate>>,
) -> std::io::Result<(ShardTx, Inbox)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(bound);
    let Some(routes) = own_socket else {
        return Ok((ShardTx { tx, wake: None }, Inbox { rx, media: None }));
    };
    let efd = Arc::new(EventFd::from_value_and_flags(
        0,
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    Ok((
        ShardTx {
            tx,
            wake: Some(Arc::new(Waker(Arc::clone(&efd)))),
        },
        Inbox {
            rx,
            media: Some((Waiter(efd), routes)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Instant;

    fn leave() -> ShardIn {
        ShardIn::Leave { peer: 1 }
    }

    #[test]
    fn a_send_wakes_a_shard_waiting_on_its_socket() {
        let (_routes_tx, routes_rx) = std::sync::mpsc::channel();
        let (tx, inbox) = channel(4, Some(routes_rx)).expect("eventfd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (own, _) = inbox.media.as_ref().expect("own socket");
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.try_send(leave()).map_err(|_| "full").expect("sent");
            tx
        });
        let started = Instant::now();
        own.wait(socket.as_fd(), Duration::from_secs(30));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "woken by the send, not the timeout"
        );
        assert!(matches!(
            inbox.rx.try_recv(),
            Ok(ShardIn::Leave { peer: 1 })
        ));
        let tx = sender.join().expect("sender");
        // The last sender's going wakes it too, and the inbox then reads as closed.
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(tx);
        });
        let started = Instant::now();
        own.wait(socket.as_fd(), Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(20));
        dropper.join().expect("dropper");
        assert!(matches!(
            inbox.rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_datagram_wakes_it_and_nothing_else_before_the_timeout() {
        let (_routes_tx, routes_rx) = std::sync::mpsc::channel();
        let (_tx, inbox) = channel(4, Some(routes_rx)).expect("eventfd");
        let (own, _) = inbox.media.as_ref().expect("own socket");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let started = Instant::now();
        own.wait(socket.as_fd(), Duration::from_millis(30));
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "waited out its timeout"
        );
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .send_to(b"x", socket.local_addr().expect("addr"))
            .expect("send");
        let started = Instant::now();
        own.wait(socket.as_fd(), Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
