//! A shard: one thread that owns some rooms, their peers' `Rtc`s and their forwarding state.
//! It takes datagrams (off the media socket itself when it is the only shard, else routed to
//! it by the UDP reader thread) and signaling requests (from the HTTP handlers) from one
//! bounded queue (`inbox.rs`), drives str0m, feeds the room policy (`room.rs`) with
//! what str0m reports, and writes the packets the policy forwards. No lock is shared with
//! other shards; the only shared things are the socket (sends) and the metrics.
//!
//! Each peer's input handling and drain, and each write to a watcher, runs under
//! `catch_unwind`: str0m panics only on its own bugs, and then that peer is closed, not the
//! shard.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Event, IceConnectionState, Input};
use tokio::sync::oneshot;

use crate::demux::Route;
use crate::forward::InPacket;
use crate::inbox::Inbox;
use crate::metrics::{DropReason, LocalCounters, Metrics};
use crate::peer::{self, Peer, PeerKind, RtcFactory, SessionError, TrackInfo};
use crate::room::{self, MediaKind, OutId, PeerId, Role, Room, RoomInput, RoomOutput, TrackId};
use crate::signal;
use crate::signal::{ClientMsg, ServerMsg};
use crate::tcp::{TcpClose, TcpConn, TcpSendError, Ufrags};
use crate::udp;

/// The number of layers of a track with these simulcast rids (1 without simulcast).
fn layer_count(rids: &[str0m::media::Rid]) -> u8 {
    u8::try_from(rids.len().max(1))
        .unwrap_or(room::MAX_LAYERS)
        .min(room::MAX_LAYERS)
}

mod cascade;
mod meeting;

/// Longest sleep between two looks at timers (peers' timeouts, connect deadlines, metrics).
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Queued datagrams that make a batch worth sending at once (sendmmsg takes up to
/// [`udp::SEND_BATCH`]).
const FLUSH_BATCH: usize = 32;
/// The longest a forwarded copy waits in the batch for more.
const FLUSH_AGE: Duration = Duration::from_micros(200);
/// How often rooms re-evaluate their simulcast layer choices.
const LAYER_TICK: Duration = Duration::from_millis(200);
/// Messages taken from the inbox before the shard looks at its socket and timers again.
const INBOX_TAKE: usize = 256;

/// What a shard is sent.
pub enum ShardIn {
    /// A datagram for `peer`: from the UDP reader thread, a cascade link's socket, or a frame
    /// from an ICE-TCP connection
    /// (`tcp`: its handle, by which the peer's TCP transmits to `src` go back).
    Datagram {
        peer: PeerId,
        src: SocketAddr,
        recv_at: Instant,
        buf: Vec<u8>,
        tcp: Option<TcpConn>,
    },
    Open(Open),
    Close {
        room: String,
        session: String,
        kind: PeerKind,
        reply: oneshot::Sender<bool>,
    },
    /// A meeting participant joins (its WebSocket's first message): the shard answers with
    /// its id and sends `joined` on `events`.
    Join {
        room: String,
        name: String,
        events: tokio::sync::mpsc::Sender<ServerMsg>,
        /// The upstream end of a cascade link (`cascade.rs`), not a participant.
        link: bool,
        reply: oneshot::Sender<Result<PeerId, SessionError>>,
    },
    /// The relaying end of a cascade link opens (a full-ICE peer on its own socket).
    LinkOpen {
        room: String,
        events: tokio::sync::mpsc::Sender<ServerMsg>,
        client: peer::LinkClient,
        reply: oneshot::Sender<Result<PeerId, SessionError>>,
    },
    /// A message of the upstream SFU to the relaying end of a link.
    Upstream {
        peer: PeerId,
        msg: crate::cascade::UpstreamMsg,
    },
    /// A later message of a meeting participant.
    Signal {
        peer: PeerId,
        msg: ClientMsg,
    },
    /// A meeting participant's WebSocket closed.
    Leave {
        peer: PeerId,
    },
}

/// A WHIP or WHEP offer to answer.
pub struct Open {
    pub room: String,
    pub kind: PeerKind,
    pub offer: String,
    pub reply: oneshot::Sender<Result<Opened, SessionError>>,
}

/// An answered session.
#[derive(Debug)]
pub struct Opened {
    pub session: String,
    pub answer: String,
}

/// What the media socket's reader (the only shard, or the reader thread) is told about
/// routes.
pub enum RouteUpdate {
    Add { ufrag: String, route: Route },
    Remove { ufrag: String },
}

/// The settings a shard runs with.
pub struct ShardConfig {
    pub index: u16,
    pub factory: RtcFactory,
    pub limits: room::Limits,
    pub max_rooms: usize,
    pub connect_timeout: Duration,
    pub ice_disconnect_grace: Duration,
    /// Above this share of a second spent working, the shard sheds a simulcast layer.
    pub shed_layers_above: f64,
    /// Below this share, it gives one back.
    pub restore_layers_below: f64,
}

pub struct Shard {
    cfg: ShardConfig,
    socket: Arc<UdpSocket>,
    routes: Sender<RouteUpdate>,
    /// The ICE-TCP listener's ufrag table, when ICE-TCP is on.
    tcp_ufrags: Option<Arc<Ufrags>>,
    /// Open ICE-TCP connections by remote address, with the peer each belongs to.
    tcp_conns: HashMap<SocketAddr, (PeerId, TcpConn)>,
    metrics: Arc<Metrics>,
    local: LocalCounters,
    rooms: HashMap<String, Room>,
    peers: HashMap<PeerId, Peer>,
    sessions: HashMap<String, PeerId>,
    next_peer: PeerId,
    next_track: u32,
    out: Vec<RoomOutput>,
    events: Vec<Event>,
    outbox: Outbox,
    /// Meeting participants whose m-lines changed while applying the room's outputs: they
    /// get one offer for all of the changes, once the outputs are applied.
    to_negotiate: Vec<PeerId>,
    /// Top simulcast layers shed for overload now.
    shed: u8,
    /// Other sites' participants, standing in here for what arrives over a cascade link.
    ghosts: HashMap<PeerId, cascade::Ghost>,
    /// The relaying cascade links' own sockets, by the address their candidate names.
    link_sockets: HashMap<SocketAddr, Arc<UdpSocket>>,
}

/// Datagrams waiting for the next sendmmsg (and for ICE-TCP connections), and the receive
/// times of the forwarded packets among them (observed in the latency histogram once handed
/// to the kernel).
struct Outbox {
    sends: peer::Sends,
    forwarded_at: Vec<Instant>,
    /// When the shard first saw the current batch (for [`FLUSH_AGE`]).
    since: Option<Instant>,
}

/// sendmmsg's headers (not `Send`: made on the shard's own thread).
type SendHeaders = nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>;

impl Shard {
    pub fn new(
        cfg: ShardConfig,
        socket: Arc<UdpSocket>,
        routes: Sender<RouteUpdate>,
        tcp_ufrags: Option<Arc<Ufrags>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let local = metrics.local();
        metrics
            .shed_layers
            .with_label_values(&[&cfg.index.to_string()])
            .set(0);
        Self {
            cfg,
            socket,
            routes,
            tcp_ufrags,
            tcp_conns: HashMap::new(),
            metrics,
            local,
            rooms: HashMap::new(),
            peers: HashMap::new(),
            sessions: HashMap::new(),
            next_peer: 1,
            next_track: 1,
            out: Vec::new(),
            events: Vec::new(),
            outbox: Outbox {
                sends: peer::Sends::default(),
                forwarded_at: Vec::new(),
                since: None,
            },
            to_negotiate: Vec::new(),
            shed: 0,
            ghosts: HashMap::new(),
            link_sockets: HashMap::new(),
        }
    }

    /// Runs until every sender of `inbox` is gone, then closes its peers. With
    /// `inbox.media`, the shard reads the media socket itself between its messages.
    pub fn run(mut self, inbox: Inbox) {
        let mut headers = SendHeaders::preallocate(udp::SEND_BATCH, None);
        let mut own = inbox
            .media
            .map(|(waiter, routes)| (waiter, udp::RecvBatch::new(routes)));
        let rx = inbox.rx;
        let mut flushed = Instant::now();
        let mut ticked = flushed;
        let mut busy = Duration::ZERO;
        // Work was left waiting last round (a full batch, a full take): look again at once.
        let mut more = false;
        loop {
            let now = Instant::now();
            let wake = self
                .peers
                .values()
                .map(|p| p.timeout)
                .min()
                .unwrap_or(now + HOUSEKEEPING)
                .min(now + HOUSEKEEPING);
            let timeout = wake.saturating_duration_since(now);
            let work_started;
            let mut closed = false;
            match own.as_mut() {
                None => {
                    let received = rx.recv_timeout(timeout);
                    work_started = Instant::now();
                    match received {
                        Ok(msg) => {
                            self.handle(msg);
                            closed = self.take_inbox(&rx, &mut headers).1;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Some((waker, batch)) => {
                    if !more {
                        waker.wait(self.socket.as_fd(), timeout);
                    }
                    work_started = Instant::now();
                    let taken;
                    (taken, closed) = self.take_inbox(&rx, &mut headers);
                    let got = batch.recv(&self.socket, false);
                    let recv_at = Instant::now();
                    batch.route_each(|r| match r {
                        Err(reason) => self.local.dropped(reason),
                        Ok((route, src, buf)) => {
                            if route.shard == self.cfg.index {
                                self.datagram(route.peer, src, recv_at, buf, None);
                                if self.flush_due() {
                                    self.flush(&mut headers);
                                }
                            } else {
                                self.local.dropped(DropReason::UnknownSource);
                            }
                        }
                    });
                    more = got == udp::BATCH || taken == INBOX_TAKE;
                }
            }
            let now = Instant::now();
            self.timers(now);
            if now.duration_since(ticked) >= LAYER_TICK {
                self.tick(now);
                ticked = now;
            }
            self.flush(&mut headers);
            busy += work_started.elapsed();
            let window = now.duration_since(flushed);
            if window >= Duration::from_secs(1) {
                self.local.flush();
                self.overload(now, busy.as_secs_f64() / window.as_secs_f64());
                busy = Duration::ZERO;
                flushed = now;
            }
            if closed {
                break;
            }
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.close_peer(id);
        }
        self.flush(&mut headers);
        for (_, (_, conn)) in self.tcp_conns.drain() {
            conn.close(TcpClose::Shutdown);
        }
        self.local.flush();
    }

    /// Handles what is waiting in the inbox, up to [`INBOX_TAKE`] messages, before the shard
    /// looks at its socket and timers again; sends once a batch is worth a syscall, or once
    /// its oldest copy has waited long enough (a packet for 45 watchers is its own batch: its
    /// copies do not wait for the next packet's). Returns how many it took, and whether every
    /// sender is gone.
    fn take_inbox(&mut self, rx: &Receiver<ShardIn>, headers: &mut SendHeaders) -> (usize, bool) {
        for taken in 0..INBOX_TAKE {
            match rx.try_recv() {
                Ok(msg) => {
                    self.handle(msg);
                    if self.flush_due() {
                        self.flush(headers);
                    }
                }
                Err(TryRecvError::Empty) => return (taken, false),
                Err(TryRecvError::Disconnected) => return (taken, true),
            }
        }
        (INBOX_TAKE, false)
    }

    /// Whether the queued datagrams should go now rather than wait for more: a batch of
    /// [`FLUSH_BATCH`], or a batch begun [`FLUSH_AGE`] ago (so a busy shard still batches,
    /// and a batch never holds its first copy long).
    fn flush_due(&mut self) -> bool {
        let queued = self.outbox.sends.udp.len() + self.outbox.sends.link.len();
        if queued == 0 {
            self.outbox.since = None;
            return false;
        }
        let since = *self.outbox.since.get_or_insert_with(Instant::now);
        queued >= FLUSH_BATCH || since.elapsed() >= FLUSH_AGE
    }

    /// Hands the queued datagrams to the kernel, then records how long each forwarded packet
    /// took from the socket in to the socket out.
    fn flush(&mut self, headers: &mut SendHeaders) {
        self.outbox.since = None;
        if self.outbox.sends.is_empty() {
            return;
        }
        if !self.outbox.sends.udp.is_empty() {
            let failed = udp::send_batch(&self.socket, headers, &self.outbox.sends.udp);
            self.local.dropped_n(DropReason::SendFailed, failed as u64);
            self.outbox.sends.udp.clear();
        }
        self.send_tcp();
        for (src, dst, datagram) in self.outbox.sends.link.drain(..) {
            let sent = self
                .link_sockets
                .get(&src)
                .is_some_and(|s| s.send_to(&datagram, dst).is_ok());
            if !sent {
                self.local.dropped(DropReason::SendFailed);
            }
        }
        let now = Instant::now();
        for t in self.outbox.forwarded_at.drain(..) {
            self.local
                .latency
                .observe(now.saturating_duration_since(t).as_secs_f64());
        }
    }

    /// Hands the queued ICE-TCP datagrams to their connections' write queues. A connection
    /// whose queue is full is closed (its reader is too slow; the shard never waits).
    fn send_tcp(&mut self) {
        let mut sends = std::mem::take(&mut self.outbox.sends.tcp);
        for (to, datagram) in sends.drain(..) {
            let Some((_, conn)) = self.tcp_conns.get(&to) else {
                self.local.dropped(DropReason::TcpNoConnection);
                continue;
            };
            match conn.send(datagram) {
                Ok(()) => {}
                Err(e) => {
                    if let Some((peer, conn)) = self.tcp_conns.remove(&to) {
                        let reason = match e {
                            TcpSendError::Full => {
                                tracing::info!(
                                    peer,
                                    remote = %to,
                                    "An ICE-TCP connection reads too slowly; it is closed."
                                );
                                self.local.dropped(DropReason::TcpQueueFull);
                                TcpClose::WriteQueueFull
                            }
                            TcpSendError::Closed => {
                                self.local.dropped(DropReason::TcpNoConnection);
                                TcpClose::RemoteClosed
                            }
                        };
                        conn.close(reason);
                    }
                }
            }
        }
        // The buffer is kept for the next drain.
        self.outbox.sends.tcp = sends;
    }

    /// Remembers the ICE-TCP connection a datagram accepted by peer `id` came on, so that the
    /// peer's transmits to `src` go back on it. A peer keeps at most
    /// [`crate::demux::MAX_ADDRS_PER_PEER`] connections.
    fn learn_tcp(&mut self, id: PeerId, src: SocketAddr, conn: TcpConn) {
        if let Some((_, known)) = self.tcp_conns.get(&src)
            && known.id() == conn.id()
        {
            return;
        }
        let held = self.tcp_conns.values().filter(|(p, _)| *p == id).count();
        if held >= crate::demux::MAX_ADDRS_PER_PEER {
            conn.close(TcpClose::TooManyForPeer);
            return;
        }
        // An address reused by a new connection: the old one is gone.
        if let Some((_, old)) = self.tcp_conns.insert(src, (id, conn)) {
            old.close(TcpClose::RemoteClosed);
        }
    }

    /// Ends a peer's session on our side (DTLS close), then removes it.
    fn close_peer(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            let outbox = &mut self.outbox.sends;
            let closed = catch_unwind(AssertUnwindSafe(|| {
                p.rtc.disconnect();
                peer::drain(&mut p.rtc, outbox, &mut Vec::new())
            }));
            if closed.is_err() {
                self.metrics.peer_panics.inc();
            }
            // Its DTLS close goes to its TCP connections before they are closed with it.
            self.send_tcp();
        }
        self.remove_peer(Instant::now(), id);
    }

    fn handle(&mut self, msg: ShardIn) {
        match msg {
            ShardIn::Datagram {
                peer,
                src,
                recv_at,
                buf,
                tcp,
            } => self.datagram(peer, src, recv_at, &buf, tcp),
            ShardIn::Open(open) => {
                let now = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| {
                    self.open(now, &open.room, open.kind, &open.offer)
                }))
                .unwrap_or_else(|_| {
                    self.metrics.peer_panics.inc();
                    Err(SessionError::Internal)
                });
                let _ = open.reply.send(result);
            }
            ShardIn::Close {
                room,
                session,
                kind,
                reply,
            } => {
                let found = self.sessions.get(&session).copied().filter(|id| {
                    self.peers
                        .get(id)
                        .is_some_and(|p| p.room == room && p.kind == kind)
                });
                if let Some(id) = found {
                    self.close_peer(id);
                }
                let _ = reply.send(found.is_some());
            }
            ShardIn::Join {
                room,
                name,
                events,
                link,
                reply,
            } => {
                let now = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| {
                    self.join_meeting(now, &room, name, events, link)
                }))
                .unwrap_or_else(|_| {
                    self.metrics.peer_panics.inc();
                    Err(SessionError::Internal)
                });
                let _ = reply.send(result);
            }
            ShardIn::Signal { peer, msg } => {
                let result = catch_unwind(AssertUnwindSafe(|| self.signal(peer, msg)));
                if result.is_err() {
                    self.metrics.peer_panics.inc();
                    self.remove_peer(Instant::now(), peer);
                }
            }
            ShardIn::Leave { peer } => {
                if self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| matches!(p.kind, PeerKind::Meeting | PeerKind::Cascade))
                {
                    self.close_peer(peer);
                }
            }
            ShardIn::LinkOpen {
                room,
                events,
                client,
                reply,
            } => {
                let now = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| {
                    self.link_open(now, &room, events, client)
                }))
                .unwrap_or_else(|_| {
                    self.metrics.peer_panics.inc();
                    Err(SessionError::Internal)
                });
                let _ = reply.send(result);
            }
            ShardIn::Upstream { peer, msg } => {
                let result = catch_unwind(AssertUnwindSafe(|| self.upstream(peer, msg)));
                if result.is_err() {
                    self.metrics.peer_panics.inc();
                    self.remove_peer(Instant::now(), peer);
                }
            }
        }
    }

    /// Whether a peer may enter `room_name`: an open room, or room for one more room.
    fn room_admits(&self, room_name: &str) -> Result<(), SessionError> {
        if !self.rooms.contains_key(room_name)
            && usize::try_from(self.metrics.rooms.get()).unwrap_or(0) >= self.cfg.max_rooms
        {
            return Err(SessionError::TooManyRooms);
        }
        Ok(())
    }

    /// Answers an offer: a new peer in `room` (created if needed), routed before the answer
    /// leaves (its first STUN request may come at once).
    fn open(
        &mut self,
        now: Instant,
        room_name: &str,
        kind: PeerKind,
        offer: &str,
    ) -> Result<Opened, SessionError> {
        self.room_admits(room_name)?;
        let (ufrag, pass) = peer::ice_credentials();
        let peer::Answered {
            rtc,
            answer,
            media,
            timeout,
        } = self.cfg.factory.answer(now, kind, &ufrag, &pass, offer)?;
        let id = self.next_peer;
        self.next_peer += 1;
        let mut p = Peer {
            timeout,
            policer: matches!(kind, PeerKind::Whip)
                .then(|| Box::new(peer::Policer::new(self.cfg.factory.publisher_kbps))),
            ..Peer::new(id, kind, room_name, ufrag.clone(), rtc, now)
        };
        let session = p.session.clone();
        let mut added = Vec::new();
        for (mid, k, rids) in media {
            match kind {
                PeerKind::Whip | PeerKind::Meeting | PeerKind::Cascade => {
                    let idx = self.next_track;
                    self.next_track += 1;
                    p.tracks.insert(
                        mid,
                        TrackInfo {
                            idx,
                            kind: k,
                            owner: id,
                        },
                    );
                    added.push((TrackId { peer: id, idx }, k, layer_count(&rids)));
                    if !rids.is_empty() {
                        p.rids.insert(mid, rids);
                    }
                }
                PeerKind::Whep => {
                    let slot = p.out_mids.keys().filter(|(kk, _)| *kk == k).count();
                    p.out_mids
                        .insert((k, u8::try_from(slot).unwrap_or(u8::MAX)), mid);
                }
            }
        }
        let role = match kind {
            PeerKind::Whip | PeerKind::Meeting | PeerKind::Cascade => Role::Publisher,
            PeerKind::Whep => {
                let n = |k| {
                    let count = p.out_mids.keys().filter(|(kk, _)| *kk == k).count();
                    u8::try_from(count).unwrap_or(u8::MAX)
                };
                Role::Watcher {
                    audio: n(MediaKind::Audio),
                    video: n(MediaKind::Video),
                }
            }
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Err(e) = self.enter_room(now, room_name, id, role, &mut out) {
            self.out = out;
            return Err(e);
        }
        if let Some(room) = self.rooms.get_mut(room_name) {
            for &(track, k, layers) in &added {
                let input = RoomInput::TrackAdded {
                    track,
                    kind: k,
                    layers,
                };
                room.handle_input(now, input, &mut out);
                self.metrics.tracks.with_label_values(&[k.as_str()]).inc();
            }
        }
        self.register(p);
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
        let added: Vec<(TrackId, MediaKind)> = added.iter().map(|a| (a.0, a.1)).collect();
        self.announce_tracks(id, &added);
        tracing::info!(
            room = room_name,
            kind = kind.as_str(),
            peer = id,
            "A session was opened."
        );
        Ok(Opened { session, answer })
    }

    /// Admits peer `id` into `room_name` (made if needed) as `role`, within its limits; the
    /// room's outputs go to `out`.
    fn enter_room(
        &mut self,
        now: Instant,
        room_name: &str,
        id: PeerId,
        role: Role,
        out: &mut Vec<RoomOutput>,
    ) -> Result<(), SessionError> {
        let new_room = !self.rooms.contains_key(room_name);
        let room = self
            .rooms
            .entry(room_name.to_owned())
            .or_insert_with(|| Room::new(self.cfg.limits, rand::random::<u16>() & 0x7fff));
        if let Err(e) = room.join(now, id, role, out) {
            if new_room {
                self.rooms.remove(room_name);
            }
            return Err(match e {
                room::JoinError::RoomFull | room::JoinError::TooManyPublishers => {
                    SessionError::RoomFull
                }
                room::JoinError::AlreadyIn => SessionError::Internal,
            });
        }
        if new_room {
            self.metrics.room_opened(room_name);
        }
        Ok(())
    }

    /// Keeps a new peer: routed (before its answer leaves: its first STUN request may come at
    /// once), found by its session, counted.
    fn register(&mut self, p: Peer) {
        let route = Route {
            shard: self.cfg.index,
            peer: p.id,
        };
        if let Some(u) = &self.tcp_ufrags {
            u.add(p.ufrag.clone(), route);
        }
        let _ = self.routes.send(RouteUpdate::Add {
            ufrag: p.ufrag.clone(),
            route,
        });
        let kind = p.kind.as_str();
        self.sessions.insert(p.session.clone(), p.id);
        self.peers.insert(p.id, p);
        self.metrics.peers.with_label_values(&[kind]).inc();
        self.metrics.peers_total.with_label_values(&[kind]).inc();
    }

    fn datagram(
        &mut self,
        id: PeerId,
        src: SocketAddr,
        recv_at: Instant,
        buf: &[u8],
        tcp: Option<TcpConn>,
    ) {
        // What str0m is told the datagram arrived on: one of the peer's local candidates (a
        // relaying cascade link's is its own socket's).
        let tcp_local = match (&tcp, self.cfg.factory.public_tcp) {
            (None, _) => None,
            (Some(_), Some(public_tcp)) => Some(public_tcp),
            (Some(conn), None) => {
                conn.close(TcpClose::Shutdown);
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&id) else {
            self.local.dropped(DropReason::UnknownSource);
            if let Some(conn) = tcp {
                // Its peer is gone: so is the connection's purpose.
                conn.close(TcpClose::PeerGone);
            }
            return;
        };
        let (proto, local) = match tcp_local {
            Some(public_tcp) => (Protocol::Tcp, public_tcp),
            None => (
                Protocol::Udp,
                p.link
                    .as_ref()
                    .and_then(|l| l.client.as_ref())
                    .map_or(self.cfg.factory.public_udp, |c| c.local),
            ),
        };
        let Ok(recv) = Receive::new(proto, src, local, buf) else {
            self.local.dropped(DropReason::Garbage);
            return;
        };
        let input = Input::Receive(recv_at, recv);
        if !p.rtc.accepts(&input) {
            self.local.dropped(DropReason::PeerRefused);
            return;
        }
        if let Some(conn) = tcp {
            self.learn_tcp(id, src, conn);
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let outbox = &mut self.outbox.sends;
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.handle_input(input)?;
            peer::drain(&mut p.rtc, outbox, &mut events)
        }));
        self.after_drain(recv_at, id, result, &mut events);
        self.events = events;
    }

    /// Records the outcome of a peer's drain, then acts on its events.
    fn after_drain(
        &mut self,
        now: Instant,
        id: PeerId,
        result: std::thread::Result<Result<Instant, str0m::RtcError>>,
        events: &mut Vec<Event>,
    ) {
        match result {
            Ok(Ok(t)) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.timeout = t;
                }
            }
            Ok(Err(e)) => {
                tracing::info!(peer = id, error = %e, "A peer failed and is closed.");
                self.remove_peer(now, id);
                return;
            }
            Err(_) => {
                self.metrics.peer_panics.inc();
                tracing::error!(
                    peer = id,
                    "A peer's WebRTC stack panicked; the peer is closed."
                );
                self.remove_peer(now, id);
                return;
            }
        }
        for e in events.drain(..) {
            self.event(id, e);
        }
    }

    fn event(&mut self, id: PeerId, e: Event) {
        let now = Instant::now();
        match e {
            Event::Connected => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.connected = true;
                    tracing::info!(peer = id, "A peer is connected.");
                }
            }
            Event::IceConnectionStateChange(s) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.disconnected_at = match s {
                        IceConnectionState::Disconnected => Some(now),
                        _ => None,
                    };
                }
            }
            Event::RtpPacket(pkt) => self.media(id, pkt),
            Event::EgressBitrateEstimate(
                str0m::bwe::BweKind::Twcc { estimate, .. }
                | str0m::bwe::BweKind::Remb { estimate, .. },
            ) => {
                let bps = estimate.as_u64();
                self.local.bandwidth.observe(bps as f64);
                let Some(p) = self.peers.get(&id) else { return };
                let room_name = p.room.clone();
                self.room_input(now, &room_name, RoomInput::Estimate { sub: id, bps }, None);
            }
            // NACKs a watcher sent us (answered by str0m with retransmissions) and NACKs str0m
            // sent a publisher: totals per stream, counted by their increase.
            Event::MediaEgressStats(st) => self.count_nacks(id, st.mid, st.nacks, true),
            Event::MediaIngressStats(st) => self.count_nacks(id, st.mid, st.nacks, false),
            Event::KeyframeRequest(r) => {
                let Some(p) = self.peers.get(&id) else { return };
                let slot = p
                    .out_mids
                    .iter()
                    .find_map(|(slot, m)| (*m == r.mid).then_some(*slot));
                if let Some((kind, slot)) = slot {
                    let room_name = p.room.clone();
                    let input = RoomInput::KeyframeRequest {
                        out: OutId {
                            sub: id,
                            kind,
                            slot,
                        },
                    };
                    self.room_input(now, &room_name, input, None);
                }
            }
            _ => {}
        }
    }

    fn count_nacks(&mut self, id: PeerId, mid: Mid, total: u64, from_watcher: bool) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let last = p.nacks.insert(mid, total).unwrap_or(0);
        let new = total.saturating_sub(last);
        if from_watcher {
            self.local.nacks_received.inc_by(new);
        } else {
            self.local.nacks_sent.inc_by(new);
        }
    }

    /// One RTP packet from a publisher: through the room's policy, out to its watchers.
    fn media(&mut self, id: PeerId, pkt: RtpPacket) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let found = match p.ssrc_mid.get(&ssrc) {
            Some(m) => Some(*m),
            None => {
                let m = p
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()));
                let m = m.map(|(mid, rid)| {
                    let layer = rid
                        .and_then(|r| p.rids.get(&mid)?.iter().position(|x| *x == r))
                        .and_then(|i| u8::try_from(i).ok())
                        .unwrap_or(0);
                    (mid, layer)
                });
                if let Some(m) = m {
                    p.ssrc_mid.insert(ssrc, m);
                }
                m
            }
        };
        let layer = found.map_or(0, |f| f.1);
        let mid = found.map(|f| f.0);
        let Some(track) = mid.and_then(|m| p.tracks.get(&m).copied()) else {
            self.local.dropped(DropReason::NotForwarded);
            return;
        };
        let pt = pkt.header.payload_type;
        let Some(params) = p
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|c| c.pt() == pt)
            .cloned()
        else {
            self.local.dropped(DropReason::NotForwarded);
            return;
        };
        // A publisher over its bitrate limit loses what is over (a cascade link has none: it
        // carries many publishers, each limited at its own SFU).
        if let Some(policer) = &p.policer
            && !policer.allow(track.kind, pkt.payload.len())
        {
            self.local.dropped(DropReason::OverBitrate);
            return;
        }
        self.local.received(track.kind);
        if track.kind == MediaKind::Video {
            self.local.layer_received(layer);
        }
        let keyframe_start = peer::keyframe_start(&params, &pkt.payload);
        let codec = params.spec().codec;
        let is_vp8 = codec == str0m::format::Codec::Vp8;
        let input = RoomInput::Packet {
            track: TrackId {
                peer: track.owner,
                idx: track.idx,
            },
            layer,
            bytes: u32::try_from(pkt.payload.len()).unwrap_or(u32::MAX),
            // VP8 carries the size in the keyframe itself; H.264 in the sequence parameter
            // set that starts its keyframes.
            height: match (keyframe_start, codec) {
                (true, str0m::format::Codec::Vp8) => peer::vp8_keyframe_height(&pkt.payload),
                (true, str0m::format::Codec::H264) => peer::h264_keyframe_height(&pkt.payload),
                _ => None,
            },
            packet: InPacket {
                seq: *pkt.seq_no,
                ts: pkt.header.timestamp,
                keyframe_start,
                vp8: if is_vp8 {
                    peer::vp8_ids(&pkt.payload)
                } else {
                    None
                },
                recv_at: pkt.timestamp,
                clock_rate: params.spec().clock_rate.get(),
            },
        };
        let room_name = p.room.clone();
        self.room_input(pkt.timestamp, &room_name, input, Some((&pkt, &params, id)));
        if track.kind == MediaKind::Audio
            && let Some(level) = pkt.header.ext_vals.audio_level
        {
            let input = RoomInput::AudioLevel {
                peer: track.owner,
                level,
            };
            self.room_input(pkt.timestamp, &room_name, input, None);
        }
    }

    fn room_input(
        &mut self,
        now: Instant,
        room_name: &str,
        input: RoomInput,
        pkt: Option<(&RtpPacket, &str0m::format::PayloadParams, PeerId)>,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        room.handle_input(now, input, &mut out);
        self.apply(now, &out, pkt);
        out.clear();
        self.out = out;
    }

    /// Carries out the room's outputs: forwards to watchers, keyframe requests to publishers.
    fn apply(
        &mut self,
        now: Instant,
        out: &[RoomOutput],
        pkt: Option<(&RtpPacket, &str0m::format::PayloadParams, PeerId)>,
    ) {
        for o in out {
            match *o {
                RoomOutput::Forward {
                    out: to,
                    pkt: numbers,
                } => {
                    if let Some((rtp, params, from)) = pkt {
                        self.forward(to, numbers, rtp, params, from);
                    }
                }
                RoomOutput::RequestKeyframe { track, layer } => {
                    self.local.keyframes_sent.inc();
                    self.request_keyframe(now, track, layer);
                }
                RoomOutput::LayerSwitch { up, .. } => self.local.layer_switch(up),
                RoomOutput::LayersWanted { track, active } => self.layers_wanted(track, active),
                RoomOutput::Bitrate { sub, min, desired } => {
                    self.set_bitrate(now, sub, min, desired)
                }
                RoomOutput::KeyframeThrottled { .. } => self.local.keyframes_throttled.inc(),
                RoomOutput::Dropped => self.local.dropped(DropReason::NotForwarded),
                RoomOutput::NotLoudest { .. } => self.local.dropped(DropReason::AudioNotLoudest),
                RoomOutput::Muted { .. } => self.local.dropped(DropReason::Muted),
                RoomOutput::ActiveSpeaker { peer } => self.announce_speaker(peer),
                RoomOutput::OpenSlot { out: slot, track } => {
                    self.queue_slot(
                        slot.sub,
                        peer::SlotChange::Open {
                            slot: (slot.kind, slot.slot),
                            stream: signal::participant_id(track.peer),
                            track: signal::track_id(track.peer, track.idx),
                            mid: None,
                        },
                    );
                }
                RoomOutput::CloseSlot { out: slot } => {
                    self.queue_slot(
                        slot.sub,
                        peer::SlotChange::Close {
                            slot: (slot.kind, slot.slot),
                        },
                    );
                }
            }
        }
        let subs = std::mem::take(&mut self.to_negotiate);
        for sub in subs {
            self.negotiate(now, sub);
        }
    }

    fn forward(
        &mut self,
        to: OutId,
        numbers: crate::forward::OutPacket,
        rtp: &RtpPacket,
        params: &str0m::format::PayloadParams,
        from: PeerId,
    ) {
        let Some(sub) = self.peers.get_mut(&to.sub) else {
            return;
        };
        let Some(mid) = sub.out_mids.get(&(to.kind, to.slot)).copied() else {
            return;
        };
        let in_pt = rtp.header.payload_type;
        let out_pt = *sub
            .out_pt
            .entry((from, in_pt))
            .or_insert_with(|| sub.rtc.codec_config().match_params(*params).map(|p| p.pt()));
        let Some(out_pt) = out_pt else {
            self.local.dropped(DropReason::NotForwarded);
            return;
        };
        let vp8_patch = match (numbers.vp8, rtp.header.payload_type) {
            (Some(ids), _) => str0m::rtp::Vp8Descriptor::parse(&rtp.payload)
                .ok()
                .and_then(|d| {
                    let b = d.patch().picture_id(ids.pid);
                    let b = match ids.tl0 {
                        Some(t) if d.tl0_pic_idx().is_some() => b.tl0_pic_idx(t),
                        _ => b,
                    };
                    b.build().ok()
                }),
            _ => None,
        };
        let ext = &rtp.header.ext_vals;
        let ext_vals = ExtensionValues {
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            ..Default::default()
        };
        let bytes = rtp.payload.len();
        let mut w = RtpWrite::new(
            out_pt,
            SeqNo::from(numbers.seq),
            numbers.ts,
            rtp.timestamp,
            Arc::clone(&rtp.payload),
        )
        .marker(rtp.header.marker)
        .nackable(to.kind == MediaKind::Video)
        .ext_vals(ext_vals);
        if let Some(patch) = vp8_patch {
            w = w.vp8_patch(patch);
        }
        let mut events = Vec::new();
        let outbox = &mut self.outbox.sends;
        let result = catch_unwind(AssertUnwindSafe(|| {
            match sub.rtc.direct_api().stream_tx_by_mid(mid, None) {
                Some(tx) => tx.write_rtp(w),
                None => return Ok(None),
            }
            peer::drain(&mut sub.rtc, outbox, &mut events).map(Some)
        }));
        match result {
            Ok(Ok(None)) => self.local.dropped(DropReason::NotForwarded),
            Ok(Ok(Some(t))) => {
                sub.timeout = t;
                self.local.forwarded(to.kind, bytes);
                self.outbox.forwarded_at.push(rtp.timestamp);
                for e in events {
                    self.event(to.sub, e);
                }
            }
            Ok(Err(e)) => {
                let now = Instant::now();
                tracing::info!(peer = to.sub, error = %e, "A watcher failed and is closed.");
                self.remove_peer(now, to.sub);
            }
            Err(_) => {
                self.metrics.peer_panics.inc();
                tracing::error!(
                    peer = to.sub,
                    "A watcher's WebRTC stack panicked; it is closed."
                );
                self.remove_peer(Instant::now(), to.sub);
            }
        }
    }

    fn request_keyframe(&mut self, now: Instant, track: TrackId, layer: u8) {
        // Another site's participant's track: asked of the link it comes over.
        let holder = match self.ghosts.get(&track.peer) {
            Some(g) => g.link,
            None => track.peer,
        };
        let Some(p) = self.peers.get_mut(&holder) else {
            return;
        };
        let Some(mid) = p
            .tracks
            .iter()
            .find(|(_, t)| t.idx == track.idx && t.owner == track.peer)
            .map(|(m, _)| *m)
        else {
            return;
        };
        let rid = p
            .rids
            .get(&mid)
            .and_then(|r| r.get(usize::from(layer)))
            .copied();
        let mut events = Vec::new();
        let outbox = &mut self.outbox.sends;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
            peer::drain(&mut p.rtc, outbox, &mut events)
        }));
        self.after_drain(now, holder, result, &mut events);
    }

    /// Dynacast: tells a meeting publisher which rids of its track are received (the page
    /// pauses the others); counts the paused layers.
    fn layers_wanted(&mut self, track: TrackId, active: u8) {
        let Some(p) = self.peers.get_mut(&track.peer) else {
            return;
        };
        let Some(mid) = p
            .tracks
            .iter()
            .find(|(_, t)| t.idx == track.idx)
            .map(|(m, _)| *m)
        else {
            return;
        };
        let Some(rids) = p.rids.get(&mid) else { return };
        let n = rids.len().min(usize::from(room::MAX_LAYERS));
        let active_rids: Vec<String> = rids
            .iter()
            .take(n)
            .enumerate()
            .filter(|(i, _)| active & (1 << i) != 0)
            .map(|(_, r)| r.to_string())
            .collect();
        let paused = (n - active_rids.len()) as i64;
        let before = p.paused_layers.insert(track.idx, paused).unwrap_or(0);
        self.metrics.layers_paused.add(paused - before);
        if p.meeting.is_some() {
            let msg = ServerMsg::Layers {
                track: signal::track_id(track.peer, track.idx),
                active: active_rids,
            };
            self.send(track.peer, msg);
        }
    }

    /// Tells a subscriber's bandwidth estimator what to aim at (str0m probes up to `min`).
    fn set_bitrate(&mut self, now: Instant, sub: PeerId, min: u64, desired: u64) {
        let Some(p) = self.peers.get_mut(&sub) else {
            return;
        };
        let mut events = Vec::new();
        let outbox = &mut self.outbox.sends;
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.bwe().set_bitrate(
                str0m::bwe::Bitrate::bps(min),
                str0m::bwe::Bitrate::bps(desired),
            );
            peer::drain(&mut p.rtc, outbox, &mut events)
        }));
        self.after_drain(now, sub, result, &mut events);
    }

    /// Every room re-evaluates its layer choices.
    fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.room_input(now, &name, RoomInput::Tick, None);
        }
    }

    /// Overload: the share of the last second this thread was busy sets how many top
    /// simulcast layers every room sheds (one more above `[media] shed_layers_above`, one fewer
    /// below `restore_layers_below`), before any call is refused or dropped.
    fn overload(&mut self, now: Instant, busy: f64) {
        let shed = if busy > self.cfg.shed_layers_above {
            self.shed.saturating_add(1).min(2)
        } else if busy < self.cfg.restore_layers_below {
            self.shed.saturating_sub(1)
        } else {
            self.shed
        };
        if shed == self.shed {
            return;
        }
        tracing::warn!(busy, shed, "Simulcast layers shed for load changed.");
        self.shed = shed;
        self.metrics
            .shed_layers
            .with_label_values(&[&self.cfg.index.to_string()])
            .set(i64::from(shed));
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.room_input(now, &name, RoomInput::Shed { layers: shed }, None);
        }
    }

    /// Timeouts str0m asked for, and peers that never connected or lost ICE for too long.
    fn timers(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.timeout <= now)
            .map(|p| p.id)
            .collect();
        for id in due {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            let outbox = &mut self.outbox.sends;
            let result = catch_unwind(AssertUnwindSafe(|| {
                p.rtc.handle_input(Input::Timeout(now))?;
                peer::drain(&mut p.rtc, outbox, &mut events)
            }));
            self.after_drain(now, id, result, &mut events);
            self.events = events;
        }
        let gone: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| {
                !p.rtc.is_alive()
                    || p.closing
                    // A meeting participant's clock starts at its first offer (a person may
                    // take a while to allow the camera).
                    || (!p.connected
                        && p.meeting.as_ref().is_none_or(|m| m.offered)
                        && now.saturating_duration_since(p.created) > self.cfg.connect_timeout)
                    || p.disconnected_at.is_some_and(|t| {
                        now.saturating_duration_since(t) > self.cfg.ice_disconnect_grace
                    })
            })
            .map(|p| p.id)
            .collect();
        for id in gone {
            tracing::info!(
                peer = id,
                "A peer is closed: disconnected, or never connected."
            );
            self.remove_peer(now, id);
        }
    }

    fn remove_peer(&mut self, now: Instant, id: PeerId) {
        // A link's stand-ins leave with it (their tracks are its m-lines).
        self.link_closing(now, id);
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        self.sessions.remove(&p.session);
        if p.link.is_none() && (p.meeting.is_some() || !p.tracks.is_empty()) {
            self.announce_gone(&p);
        }
        let paused: i64 = p.paused_layers.values().sum();
        self.metrics.layers_paused.sub(paused);
        if !p.tracks.is_empty() {
            // Watchers forget the payload types they mapped for this publisher.
            for w in self.peers.values_mut().filter(|w| w.room == p.room) {
                w.out_pt.retain(|(from, _), _| *from != id);
            }
        }
        if let Some(u) = &self.tcp_ufrags {
            u.remove(&p.ufrag);
        }
        self.tcp_conns.retain(|_, (owner, conn)| {
            if *owner == id {
                conn.close(TcpClose::PeerGone);
            }
            *owner != id
        });
        let _ = self.routes.send(RouteUpdate::Remove { ufrag: p.ufrag });
        self.metrics
            .peers
            .with_label_values(&[p.kind.as_str()])
            .dec();
        for t in p.tracks.values() {
            self.metrics
                .tracks
                .with_label_values(&[t.kind.as_str()])
                .dec();
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut empty = false;
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.leave(now, id, &mut out);
            empty = room.is_empty();
        }
        if empty {
            self.rooms.remove(&p.room);
            self.metrics.room_closed(&p.room);
        } else {
            self.apply(now, &out, None);
        }
        out.clear();
        self.out = out;
        if p.link.is_none() {
            self.close_idle_links(&p.room);
        }
    }
}
