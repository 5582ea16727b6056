//! The messaging core: a sans-IO state machine. The shell feeds it connections opening and
//! closing and the text frames they receive, each with the time ([`Relay::handle_input`]); it
//! answers with frames to write and connections to close ([`Output`]). It reads and writes
//! only through its [`Store`], so that tests drive it with a store in memory and a made-up
//! clock.
//!
//! Ordering: the relay handles one input at a time, and a connection's outputs are written in
//! the order they are returned, so a device sees its inbox (oldest first) and then whatever
//! arrives after it, in store order. Exactly once: a message stays in a device's inbox until
//! that device acks it; a connecting device gets its whole inbox, and a live message is also
//! in the inbox, so a device that did not ack gets it again on its next connection, and one
//! that did never does.

use std::collections::{BTreeMap, HashMap, HashSet};

use estuary_common::chat::{
    CLIENT_TYPES, ChatMessage, ClientFrame, PushEvent, ReceiptState, ServerFrame, Signal, Target,
    id_ok,
};

use crate::config::ChatLimits;
use crate::media::MediaIssuer;
use crate::store::{
    Content, Inserted, NewMessage, Receipt, Remote, Store, StoreError, Stored, StoredReceipt,
};

/// A connection, numbered by the shell.
pub type ConnId = u64;

/// What happened, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A device connected with a valid token.
    Open {
        conn: ConnId,
        user: String,
        device: String,
    },
    /// A text frame arrived.
    Text { conn: ConnId, text: String },
    /// A binary frame arrived (frames are JSON text).
    Binary { conn: ConnId },
    /// The connection is gone.
    Closed { conn: ConnId },
    /// Other relays may have written to the shared log (a clustered relay).
    LogAdvanced,
    /// Another relay's signal (a clustered relay).
    Signal(Signal),
    /// A second went by (a clustered relay): say this relay is alive, forget silent ones.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Frame {
        conn: ConnId,
        frame: ServerFrame,
    },
    /// Write a close frame with this code and reason, then end the connection.
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
    /// The same frame to many connections (a live room): encode it once.
    Fanout {
        conns: Vec<ConnId>,
        frame: ServerFrame,
    },
    /// Tell the other relays (a clustered relay).
    Signal(Signal),
    /// Tell the push-notification service (`[push]`).
    Push(PushEvent),
}

/// A relay not heard from for this long is gone: its users are offline.
pub const RELAY_SILENCE_MS: u64 = 5_000;

/// What a clustered relay knows of the others.
struct Peers {
    /// This relay's node id.
    me: String,
    /// user -> relays it is online on.
    online: HashMap<String, HashSet<String>>,
    /// relay -> when it was last heard from (unix ms).
    heard: HashMap<String, u64>,
    said_hello: bool,
}

/// WebSocket close codes the relay uses.
pub mod close {
    /// The relay is shutting down (drain).
    pub const GOING_AWAY: u16 = 1001;
    /// Policy: a flood.
    pub const POLICY: u16 = 1008;
    /// A frame over `[chat] max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The store failed while the connection opened.
    pub const INTERNAL: u16 = 1011;
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = 4000;
    /// Nothing came from the client (not even a pong) for `[limits] idle_timeout`.
    pub const IDLE: u16 = 4001;
    /// The client reads too slowly: `[chat] send_queue` frames wait for it.
    pub const SLOW: u16 = 4002;
}

/// What the core reports for metrics and logs.
pub trait Observer {
    /// A `send` frame arrived.
    fn message_in(&self) {}
    /// `n` `message` frames went to devices.
    fn message_out(&self, n: u64) {
        let _ = n;
    }
    /// Live rooms now, and connections in them all together.
    fn rooms(&self, rooms: usize, members: usize) {
        let _ = (rooms, members);
    }
    /// A message was first acked by a recipient, `latency_ms` after it was stored.
    fn delivered(&self, latency_ms: u64) {
        let _ = latency_ms;
    }
    /// A receipt was recorded (and sent to the sender's online devices).
    fn receipt(&self, state: ReceiptState) {
        let _ = state;
    }
    /// Inbox entries were added (positive) or removed.
    fn inbox(&self, delta: i64) {
        let _ = delta;
    }
    /// A client frame was refused with an `error` frame or a close; `code` is the error
    /// code or close reason word.
    fn refused(&self, code: &'static str) {
        let _ = code;
    }
    /// The store failed.
    fn store_failed(&self, error: &StoreError) {
        let _ = error;
    }
    /// A `media.upload` was answered with an upload.
    fn media_upload(&self) {}
}

/// The observer of tests: sees nothing.
impl Observer for () {}

struct Conn {
    user: String,
    device: String,
    /// Users whose presence this connection subscribed to.
    watching: HashSet<String>,
    /// Frames refused by the rate limit in a row.
    refused_in_row: u32,
    /// The relay closed it: frames still in flight from it are ignored.
    closing: bool,
    /// Live rooms it joined.
    rooms: HashSet<String>,
}

impl Conn {
    /// Closes the connection: nothing it still sends is handled.
    fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) -> Output {
        self.closing = true;
        Output::Close { conn, code, reason }
    }
}

/// A user's token bucket: `messages_per_second` tokens a second, up to twice as many.
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Most presence subscriptions one connection holds.
const MAX_WATCHED: usize = 1000;
/// Most ids one `ack` frame may carry.
const MAX_ACK_IDS: usize = 1000;
/// Longest client id of a `send`.
const MAX_CLIENT_ID: usize = 128;

/// A live room: connections in it, ephemeral messages, no store.
#[derive(Default)]
struct Room {
    members: HashSet<ConnId>,
    /// With slow mode: each user's last post, unix ms.
    last_post: HashMap<String, u64>,
}

/// The relay's state: who is connected, who watches whom, rate limits; the rest is in the
/// store.
pub struct Relay<S, O> {
    store: S,
    limits: ChatLimits,
    observer: O,
    conns: HashMap<ConnId, Conn>,
    /// user -> device -> connection.
    online: HashMap<String, BTreeMap<String, ConnId>>,
    /// user -> connections subscribed to the user's presence.
    watchers: HashMap<String, HashSet<ConnId>>,
    buckets: HashMap<String, Bucket>,
    rooms: HashMap<String, Room>,
    /// Connections in rooms, all rooms together.
    room_members: usize,
    /// The last room message's number (room messages are `r<n>`).
    room_seq: u64,
    /// With `[cluster]`: the other relays.
    peers: Option<Peers>,
    /// With `[push]`: this relay's node id, named in push events.
    push_as: Option<String>,
    /// With `[media]`: uploads handed out and media URLs checked and signed.
    media: Option<MediaIssuer>,
    /// The random source of media asset ids (seeded by the shell; tests pass a seed).
    rng: rand::rngs::StdRng,
}

/// A refused frame: the `error` frame's code and sentence.
struct Refusal {
    code: &'static str,
    message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        refuse(
            "store",
            format!("The relay could not use its store ({e}); try again."),
        )
    }
}

/// The store key of the 1:1 conversation of `a` and `b`.
pub fn dm_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// A stored conversation key as `reader` names it: `user:<other party>` or `group:<id>`.
fn conversation_for(key: &str, reader: &str) -> String {
    match key.strip_prefix("dm:").and_then(|k| k.split_once(':')) {
        Some((a, b)) => format!("user:{}", if a == reader { b } else { a }),
        None => key.to_owned(),
    }
}

fn chat_message(m: &Stored, reader: &str) -> ChatMessage {
    let (body, media) = match &m.content {
        Content::Body(b) => (Some(b.clone()), None),
        Content::Media(media) => (None, Some(media.clone())),
    };
    ChatMessage {
        msg: m.id.to_string(),
        from: m.sender.clone(),
        conversation: conversation_for(&m.conversation, reader),
        body,
        media,
        ts: m.ts,
    }
}

fn parse_msg_id(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().filter(|id| *id > 0)
}

impl<S: Store, O: Observer> Relay<S, O> {
    pub fn new(store: S, limits: ChatLimits, observer: O) -> Self {
        Self {
            store,
            limits,
            observer,
            conns: HashMap::new(),
            online: HashMap::new(),
            watchers: HashMap::new(),
            buckets: HashMap::new(),
            rooms: HashMap::new(),
            room_members: 0,
            room_seq: 0,
            peers: None,
            push_as: None,
            media: None,
            rng: rand::SeedableRng::seed_from_u64(0),
        }
    }

    /// Answers `media.upload` with `media`, taking asset ids' randomness from `rng`; checks
    /// the media of every `send` and signs it for every delivery.
    pub fn with_media(mut self, media: MediaIssuer, rng: rand::rngs::StdRng) -> Self {
        self.media = Some(media);
        self.rng = rng;
        self
    }

    /// A stored message as `reader` gets it at `now`: its media URL freshly signed.
    fn message_for(&self, m: &Stored, reader: &str, now: u64) -> ChatMessage {
        self.presented(chat_message(m, reader), now)
    }

    /// A message with its media URL signed at `now` (with `[media]`).
    fn presented(&self, mut message: ChatMessage, now: u64) -> ChatMessage {
        if let (Some(issuer), Some(media)) = (&self.media, &message.media) {
            message.media = Some(issuer.present(media, now));
        }
        message
    }

    /// Emits a [`PushEvent`] for each recipient of a stored message who has no device
    /// connected to any relay.
    pub fn with_push(mut self, me: &str) -> Self {
        self.push_as = Some(me.to_owned());
        self
    }

    /// Makes this relay node `me` of a cluster: presence, typing and rooms span the relays
    /// through [`Signal`]s.
    pub fn in_cluster(mut self, me: &str) -> Self {
        self.peers = Some(Peers {
            me: me.to_owned(),
            online: HashMap::new(),
            heard: HashMap::new(),
            said_hello: false,
        });
        self
    }

    /// Whether `user` is online here or on another relay.
    fn online_anywhere(&self, user: &str) -> bool {
        self.online.get(user).is_some_and(|d| !d.is_empty())
            || self
                .peers
                .as_ref()
                .is_some_and(|p| p.online.get(user).is_some_and(|r| !r.is_empty()))
    }

    /// Tells the other relays, if there are any.
    fn signal(&self, out: &mut Vec<Output>, make: impl FnOnce(&str) -> Signal) {
        if let Some(p) = &self.peers {
            out.push(Output::Signal(make(&p.me)));
        }
    }

    fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let Some(p) = self.peers.as_mut() else {
            return;
        };
        let hello = !p.said_hello;
        p.said_hello = true;
        let me = p.me.clone();
        let gone: Vec<(String, u64)> = p
            .heard
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) > RELAY_SILENCE_MS)
            .map(|(r, at)| (r.clone(), *at))
            .collect();
        out.push(Output::Signal(Signal::Alive { relay: me, hello }));
        for (relay, at) in gone {
            if let Some(p) = self.peers.as_mut() {
                p.heard.remove(&relay);
            }
            self.forget_relay(&relay, at, out);
        }
    }

    /// Tells the other relays every user online here.
    fn announce(&self, now: u64, out: &mut Vec<Output>) {
        let users: Vec<String> = self.online.keys().cloned().collect();
        if !users.is_empty() {
            self.signal(out, |me| Signal::Presence {
                relay: me.to_owned(),
                users,
                online: true,
                ts: now,
            });
        }
    }

    /// Every user online on `relay` is not any more (as of `at`).
    fn forget_relay(&mut self, relay: &str, at: u64, out: &mut Vec<Output>) {
        let users: Vec<String> = self
            .peers
            .as_ref()
            .map(|p| {
                p.online
                    .iter()
                    .filter(|(_, r)| r.contains(relay))
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.remote_presence(relay, &users, false, at, out);
    }

    /// Users online (or not) on another relay; local subscribers hear of those whose state
    /// changed for the whole cluster.
    fn remote_presence(
        &mut self,
        relay: &str,
        users: &[String],
        online: bool,
        ts: u64,
        out: &mut Vec<Output>,
    ) {
        for user in users {
            let before = self.online_anywhere(user);
            if let Some(p) = self.peers.as_mut() {
                let relays = p.online.entry(user.clone()).or_default();
                if online {
                    relays.insert(relay.to_owned());
                } else {
                    relays.remove(relay);
                    if relays.is_empty() {
                        p.online.remove(user);
                    }
                }
            }
            if before != self.online_anywhere(user) {
                self.presence_changed(user, online, ts, out);
            }
        }
    }

    fn signal_in(&mut self, now: u64, signal: Signal, out: &mut Vec<Output>) {
        let Some(p) = self.peers.as_mut() else {
            return;
        };
        let (Signal::Alive { relay, .. }
        | Signal::Presence { relay, .. }
        | Signal::Typing { relay, .. }
        | Signal::Room { relay, .. }
        | Signal::Resync { relay, .. }) = &signal;
        if *relay == p.me {
            return;
        }
        let relay = relay.clone();
        let given_up = p.heard.insert(relay.clone(), now).is_none();
        let hello = matches!(signal, Signal::Alive { hello: true, .. });
        if given_up || hello {
            // Never heard, silent for too long and forgotten, or just started (its previous
            // run's users are forgotten below): it tells its users again.
            self.signal(out, |me| Signal::Resync {
                relay: me.to_owned(),
                of: relay.clone(),
            });
        }
        match signal {
            Signal::Alive { hello: true, .. } => {
                // A relay that just started has nobody online yet, whatever its previous run
                // had (it may have been killed and restarted within the silence limit).
                self.forget_relay(&relay, now, out);
                // It learns who is online here.
                self.announce(now, out);
            }
            Signal::Resync { of, .. } => {
                if self.peers.as_ref().is_some_and(|p| p.me == of) {
                    self.announce(now, out);
                }
            }
            Signal::Alive { .. } => {}
            Signal::Presence {
                relay,
                users,
                online,
                ts,
            } => self.remote_presence(&relay, &users, online, ts, out),
            Signal::Typing {
                from,
                to,
                conversation,
                ..
            } => {
                for r in to {
                    let frame = ServerFrame::Typing {
                        from: from.clone(),
                        conversation: conversation_for(&conversation, &r),
                    };
                    self.frames_to_user(&r, &frame, out);
                }
            }
            Signal::Room { room, message, .. } => {
                if let Some(r) = self.rooms.get(&room) {
                    let conns: Vec<ConnId> = r.members.iter().copied().collect();
                    self.observer.message_out(conns.len() as u64);
                    out.push(Output::Fanout {
                        conns,
                        frame: ServerFrame::Message(self.presented(message, now)),
                    });
                }
            }
        }
    }

    /// The store (for the shell's start-up figures).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Connections the relay knows.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles one input at `now_ms` (unix milliseconds) and returns what to do, in order.
    pub fn handle_input(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        // What other relays wrote first: their messages go out before this input's, and
        // this input sees their groups and devices.
        if let Err(e) = self.store.catch_up() {
            self.observer.store_failed(&e);
        }
        self.deliver_remote(now_ms, &mut out);
        match input {
            Input::Open { conn, user, device } => self.open(now_ms, conn, user, device, &mut out),
            Input::Text { conn, text } => self.text(now_ms, conn, &text, &mut out),
            Input::Binary { conn } => {
                if self.conns.contains_key(&conn) {
                    self.observer.refused("bad_frame");
                    out.push(error(
                        conn,
                        refuse("bad_frame", "Frames are JSON text, not binary."),
                        None,
                    ));
                }
            }
            Input::Closed { conn } => self.closed(now_ms, conn, &mut out),
            Input::LogAdvanced => {}
            Input::Signal(signal) => self.signal_in(now_ms, signal, &mut out),
            Input::Tick => self.tick(now_ms, &mut out),
        }
        self.deliver_remote(now_ms, &mut out);
        out
    }

    /// Hands what other relays wrote to the connections here: their messages to the
    /// recipients' devices, receipts to the senders' devices.
    fn deliver_remote(&mut self, now: u64, out: &mut Vec<Output>) {
        loop {
            let remote = self.store.take_remote();
            if remote.is_empty() {
                return;
            }
            for r in remote {
                match r {
                    Remote::Message { message, inboxes } => {
                        for (user, device) in &inboxes {
                            if let Some(conn) = self.online.get(user).and_then(|d| d.get(device)) {
                                self.observer.message_out(1);
                                out.push(Output::Frame {
                                    conn: *conn,
                                    frame: ServerFrame::Message(
                                        self.message_for(&message, user, now),
                                    ),
                                });
                            }
                        }
                    }
                    Remote::Receipt { sender, receipt } => {
                        if let Err(e) = self.hand_receipt(&sender, &receipt, out) {
                            self.observer.store_failed(&e);
                        }
                    }
                }
            }
        }
    }

    fn open(
        &mut self,
        now: u64,
        conn: ConnId,
        user: String,
        device: String,
        out: &mut Vec<Output>,
    ) {
        if let Some(old) = self.online.get(&user).and_then(|d| d.get(&device)).copied() {
            out.push(Output::Close {
                conn: old,
                code: close::REPLACED,
                reason: "replaced by a newer connection of the same device",
            });
            self.forget(old);
        }
        let inbox = self
            .store
            .register_device(&user, &device)
            .and_then(|_| self.store.inbox(&user, &device));
        let inbox = inbox.and_then(|i| Ok((i, self.store.receipts_for(&user, &device)?)));
        let (inbox, receipts) = match inbox {
            Ok(i) => i,
            Err(e) => {
                self.observer.store_failed(&e);
                out.push(Output::Close {
                    conn,
                    code: close::INTERNAL,
                    reason: "the relay could not read its store",
                });
                return;
            }
        };
        let was_here = self.online.get(&user).is_some_and(|d| !d.is_empty());
        let was_online = self.online_anywhere(&user);
        self.online
            .entry(user.clone())
            .or_default()
            .insert(device.clone(), conn);
        for m in &inbox {
            self.observer.message_out(1);
            out.push(Output::Frame {
                conn,
                frame: ServerFrame::Message(self.message_for(m, &user, now)),
            });
        }
        for r in &receipts {
            out.push(Output::Frame {
                conn,
                frame: ServerFrame::Receipt {
                    msg: r.msg.to_string(),
                    by: r.by.clone(),
                    state: r.state,
                    ts: r.ts,
                },
            });
        }
        if let Some(last) = receipts.last()
            && let Err(e) = self.store.receipts_seen(&user, &device, last.seq)
        {
            self.observer.store_failed(&e);
        }
        if !was_online {
            self.presence_changed(&user, true, now, out);
        }
        if !was_here {
            let users = vec![user.clone()];
            self.signal(out, |me| Signal::Presence {
                relay: me.to_owned(),
                users,
                online: true,
                ts: now,
            });
        }
        self.conns.insert(
            conn,
            Conn {
                user,
                device,
                watching: HashSet::new(),
                refused_in_row: 0,
                closing: false,
                rooms: HashSet::new(),
            },
        );
    }

    /// Drops a connection's state; returns its user if that user has no connection left.
    fn forget(&mut self, conn: ConnId) -> Option<String> {
        let c = self.conns.remove(&conn)?;
        for room in &c.rooms {
            self.leave_room(conn, room);
        }
        if !c.rooms.is_empty() {
            self.observer.rooms(self.rooms.len(), self.room_members);
        }
        for watched in &c.watching {
            if let Some(w) = self.watchers.get_mut(watched) {
                w.remove(&conn);
                if w.is_empty() {
                    self.watchers.remove(watched);
                }
            }
        }
        let devices = self.online.get_mut(&c.user)?;
        if devices.get(&c.device) == Some(&conn) {
            devices.remove(&c.device);
        }
        if devices.is_empty() {
            self.online.remove(&c.user);
            self.buckets.remove(&c.user);
            return Some(c.user);
        }
        None
    }

    fn closed(&mut self, now: u64, conn: ConnId, out: &mut Vec<Output>) {
        if let Some(user) = self.forget(conn) {
            if let Err(e) = self.store.set_last_seen(&user, now) {
                self.observer.store_failed(&e);
            }
            if !self.online_anywhere(&user) {
                self.presence_changed(&user, false, now, out);
            }
            let users = vec![user];
            self.signal(out, |me| Signal::Presence {
                relay: me.to_owned(),
                users,
                online: false,
                ts: now,
            });
        }
    }

    fn presence_changed(&self, user: &str, online: bool, now: u64, out: &mut Vec<Output>) {
        for conn in self.watchers.get(user).into_iter().flatten() {
            out.push(Output::Frame {
                conn: *conn,
                frame: ServerFrame::Presence {
                    user: user.to_owned(),
                    online,
                    last_seen: Some(now),
                },
            });
        }
    }

    /// Takes a token from the user's bucket.
    fn allow(&mut self, user: &str, now: u64) -> bool {
        let rate = f64::from(self.limits.messages_per_second);
        let capacity = 2.0 * rate;
        let b = self.buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at_ms: now,
        });
        let elapsed = now.saturating_sub(b.at_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.at_ms = b.at_ms.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn text(&mut self, now: u64, conn: ConnId, text: &str, out: &mut Vec<Output>) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.closing) else {
            return;
        };
        let user = c.user.clone();
        if text.len() > self.limits.max_frame_bytes {
            self.observer.refused("too_big");
            out.push(c.close(conn, close::TOO_BIG, "the frame is too large"));
            return;
        }
        let allowed = self.allow(&user, now);
        let flood_limit = self.limits.messages_per_second.max(5);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !allowed {
            c.refused_in_row += 1;
            if c.refused_in_row >= flood_limit {
                self.observer.refused("flood");
                out.push(c.close(conn, close::POLICY, "too many frames"));
            } else {
                self.observer.refused("rate_limited");
                out.push(error(
                    conn,
                    refuse("rate_limited", "Too many frames: slow down."),
                    None,
                ));
            }
            return;
        }
        c.refused_in_row = 0;
        let frame = match parse_frame(text) {
            Ok(f) => f,
            Err(r) => {
                self.observer.refused(r.code);
                out.push(error(conn, r, None));
                return;
            }
        };
        let client_id = match &frame {
            ClientFrame::Send { id, .. } => Some(id.clone()),
            ClientFrame::MediaUpload { id, .. } => id.clone(),
            _ => None,
        };
        if let Err(r) = self.frame(now, conn, frame, out) {
            self.observer.refused(r.code);
            out.push(error(conn, r, client_id));
        }
    }

    fn frame(
        &mut self,
        now: u64,
        conn: ConnId,
        frame: ClientFrame,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        let (user, device) = match self.conns.get(&conn) {
            Some(c) => (c.user.clone(), c.device.clone()),
            None => return Ok(()),
        };
        match frame {
            ClientFrame::Send {
                id,
                to,
                body,
                media,
            } => self.send(now, conn, &user, &device, id, to, body, media, out),
            ClientFrame::Ack { ids } => self.ack(now, &user, &device, &ids, out),
            ClientFrame::Read { conversation, upto } => {
                self.read(now, &user, &conversation, &upto, out)
            }
            ClientFrame::Typing { to } => self.typing(&user, to, out),
            ClientFrame::PresenceSubscribe { users } => self.subscribe(now, conn, users, out),
            ClientFrame::History {
                conversation,
                before,
                limit,
            } => {
                let key = self.conversation_key(&user, &conversation)?;
                let before = match before.as_deref() {
                    None => None,
                    Some(b) => Some(
                        parse_msg_id(b)
                            .ok_or_else(|| refuse("bad_frame", "before: not a message id."))?,
                    ),
                };
                let limit = limit.min(self.limits.history_max);
                let messages = self
                    .store
                    .history(&key, before, limit)
                    .map_err(|e| self.store_error(e))?
                    .iter()
                    .map(|m| self.message_for(m, &user, now))
                    .collect();
                out.push(Output::Frame {
                    conn,
                    frame: ServerFrame::History {
                        conversation,
                        messages,
                    },
                });
                Ok(())
            }
            ClientFrame::GroupCreate { group, members } => {
                check_ids(std::iter::once(&group).chain(&members))?;
                let mut all: Vec<String> = members;
                all.push(user.clone());
                all.sort();
                all.dedup();
                self.within_member_limit(all.len())?;
                if !self
                    .store
                    .create_group(&group, &user, &all)
                    .map_err(|e| self.store_error(e))?
                {
                    return Err(refuse("group_exists", "That group already exists."));
                }
                out.push(group_frame(conn, group, all));
                Ok(())
            }
            ClientFrame::GroupAdd { group, members } => {
                check_ids(std::iter::once(&group).chain(&members))?;
                let (_, current) = self.member_of(&user, &group)?;
                let mut all = current;
                all.extend(members.iter().cloned());
                all.sort();
                all.dedup();
                self.within_member_limit(all.len())?;
                self.store
                    .add_members(&group, &members)
                    .map_err(|e| self.store_error(e))?;
                out.push(group_frame(conn, group, all));
                Ok(())
            }
            ClientFrame::GroupRemove { group, members } => {
                check_ids(std::iter::once(&group).chain(&members))?;
                let (owner, current) = self.member_of(&user, &group)?;
                if owner != user {
                    return Err(refuse(
                        "not_allowed",
                        "Only the group's creator may remove members.",
                    ));
                }
                self.store
                    .remove_members(&group, &members)
                    .map_err(|e| self.store_error(e))?;
                let left = current
                    .into_iter()
                    .filter(|m| !members.contains(m))
                    .collect();
                out.push(group_frame(conn, group, left));
                Ok(())
            }
            ClientFrame::GroupLeave { group } => {
                check_ids([&group])?;
                let (_, current) = self.member_of(&user, &group)?;
                self.store
                    .remove_members(&group, std::slice::from_ref(&user))
                    .map_err(|e| self.store_error(e))?;
                let left = current.into_iter().filter(|m| *m != user).collect();
                out.push(group_frame(conn, group, left));
                Ok(())
            }
            ClientFrame::RoomJoin { room } => self.join_room(conn, room, out),
            ClientFrame::RoomLeave { room } => {
                check_ids([&room])?;
                let was_in = self
                    .conns
                    .get_mut(&conn)
                    .is_some_and(|c| c.rooms.remove(&room));
                if !was_in {
                    return Err(refuse("not_member", "You are not in that room."));
                }
                self.leave_room(conn, &room);
                self.observer.rooms(self.rooms.len(), self.room_members);
                let members = self.rooms.get(&room).map_or(0, |r| r.members.len());
                out.push(room_frame(conn, room, false, members));
                Ok(())
            }
            ClientFrame::MediaUpload { id, mime, size } => {
                let Some(issuer) = &self.media else {
                    return Err(unsupported());
                };
                if id.as_ref().is_some_and(|i| i.len() > MAX_CLIENT_ID) {
                    return Err(refuse("bad_frame", "id: at most 128 bytes."));
                }
                let nonce = crate::media::nonce(&mut self.rng);
                let (upload, media) = issuer.issue(now, &nonce, &mime, size).map_err(bad_media)?;
                self.observer.media_upload();
                out.push(Output::Frame {
                    conn,
                    frame: ServerFrame::MediaUpload { id, upload, media },
                });
                Ok(())
            }
            ClientFrame::Ping => {
                out.push(Output::Frame {
                    conn,
                    frame: ServerFrame::Pong,
                });
                Ok(())
            }
        }
    }

    fn within_member_limit(&self, members: usize) -> Result<(), Refusal> {
        let limit = self.limits.group_member_limit;
        if members > limit {
            return Err(refuse(
                "group_full",
                format!("A group has at most {limit} members."),
            ));
        }
        Ok(())
    }

    fn store_error(&self, e: StoreError) -> Refusal {
        self.observer.store_failed(&e);
        Refusal::from(e)
    }

    /// The group's owner and members, if `user` is one of them.
    fn member_of(&mut self, user: &str, group: &str) -> Result<(String, Vec<String>), Refusal> {
        match self.store.group(group).map_err(|e| self.store_error(e))? {
            None => Err(refuse("no_such_group", "There is no such group.")),
            Some((_, members)) if !members.iter().any(|m| m == user) => {
                Err(refuse("not_member", "You are not a member of that group."))
            }
            Some(g) => Ok(g),
        }
    }

    /// The store key of a conversation as `user` names it (`user:<id>`, `group:<id>`, of
    /// which `user` must be a member).
    fn conversation_key(&mut self, user: &str, conversation: &str) -> Result<String, Refusal> {
        if let Some(other) = conversation.strip_prefix("user:")
            && id_ok(other)
        {
            return Ok(dm_key(user, other));
        }
        if let Some(group) = conversation.strip_prefix("group:")
            && id_ok(group)
        {
            self.member_of(user, group)?;
            return Ok(conversation.to_owned());
        }
        if conversation.starts_with("room:") {
            return Err(refuse(
                "not_stored",
                "Room messages are ephemeral: rooms have no history and no receipts.",
            ));
        }
        Err(refuse(
            "bad_frame",
            "conversation: user:<id> or group:<id>.",
        ))
    }

    /// Who a message or typing to `to` reaches besides the sender, and the store key.
    fn recipients(&mut self, user: &str, to: &Target) -> Result<(String, Vec<String>), Refusal> {
        match to {
            Target::User(other) if !id_ok(other) => {
                Err(refuse("bad_frame", "to.user: not a valid user id."))
            }
            Target::User(other) if other == user => {
                Err(refuse("bad_frame", "A message to oneself is not relayed."))
            }
            Target::User(other) => Ok((dm_key(user, other), vec![other.clone()])),
            Target::Group(group) => {
                check_ids([group])?;
                let (_, members) = self.member_of(user, group)?;
                Ok((
                    format!("group:{group}"),
                    members.into_iter().filter(|m| m != user).collect(),
                ))
            }
            Target::Room(_) => Err(refuse(
                "unsupported",
                "Typing is not relayed in live rooms.",
            )),
        }
    }

    fn frames_to_user(&self, user: &str, frame: &ServerFrame, out: &mut Vec<Output>) {
        for conn in self.online.get(user).into_iter().flat_map(|d| d.values()) {
            out.push(Output::Frame {
                conn: *conn,
                frame: frame.clone(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: u64,
        conn: ConnId,
        user: &str,
        device: &str,
        id: String,
        to: Target,
        body: Option<String>,
        media: Option<estuary_common::chat::Media>,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        self.observer.message_in();
        if id.is_empty() || id.len() > MAX_CLIENT_ID {
            return Err(refuse("bad_frame", "id: 1 to 128 bytes."));
        }
        let content = match (body, media) {
            (Some(b), None) => Content::Body(b),
            // With `[media]`, only media this service issued, kept as its bare path.
            (None, Some(m)) if self.media.is_some() => match &self.media {
                Some(issuer) => Content::Media(issuer.accept(&m).map_err(bad_media)?),
                None => Content::Media(m),
            },
            (None, Some(m)) if m.url.len() <= 4096 && m.mime.len() <= 255 && !m.url.is_empty() => {
                Content::Media(m)
            }
            _ => {
                return Err(refuse(
                    "bad_frame",
                    "A message has either a body or a media object with url, mime and size.",
                ));
            }
        };
        if let Target::Room(room) = &to {
            return self.post_to_room(now, conn, user, id, room, content, out);
        }
        let (conversation, recipients) = self.recipients(user, &to)?;
        let mut inboxes = Vec::new();
        for r in &recipients {
            for d in self.store.devices(r).map_err(|e| self.store_error(e))? {
                inboxes.push((r.clone(), d));
            }
        }
        let message = NewMessage {
            conversation,
            sender: user.to_owned(),
            sender_device: device.to_owned(),
            client_id: id.clone(),
            content,
            ts: now,
        };
        let inserted = self
            .store
            .insert_message(&message, &inboxes)
            .map_err(|e| self.store_error(e))?;
        // What other relays stored before it goes out first, so that a conversation's
        // messages reach each device in log order.
        self.deliver_remote(now, out);
        match inserted {
            Inserted::Duplicate(m) => out.push(Output::Frame {
                conn,
                frame: ServerFrame::Sent {
                    id,
                    msg: m.id.to_string(),
                    ts: m.ts,
                },
            }),
            Inserted::New(m, entries) => {
                self.observer.inbox(entries as i64);
                out.push(Output::Frame {
                    conn,
                    frame: ServerFrame::Sent {
                        id,
                        msg: m.id.to_string(),
                        ts: m.ts,
                    },
                });
                for (r, d) in &inboxes {
                    if let Some(c) = self.online.get(r).and_then(|devices| devices.get(d)) {
                        self.observer.message_out(1);
                        out.push(Output::Frame {
                            conn: *c,
                            frame: ServerFrame::Message(self.message_for(&m, r, now)),
                        });
                    }
                }
                if let Some(relay) = &self.push_as {
                    for r in &recipients {
                        if !self.online_anywhere(r) {
                            out.push(Output::Push(PushEvent {
                                kind: "message".to_owned(),
                                user: r.clone(),
                                msg: m.id.to_string(),
                                from: m.sender.clone(),
                                conversation: conversation_for(&m.conversation, r),
                                ts: m.ts,
                                relay: relay.clone(),
                            }));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn ack(
        &mut self,
        now: u64,
        user: &str,
        device: &str,
        ids: &[String],
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        if ids.len() > MAX_ACK_IDS {
            return Err(refuse("bad_frame", "ids: at most 1000 in one ack."));
        }
        let ids: Vec<i64> = ids.iter().filter_map(|s| parse_msg_id(s)).collect();
        let acked = self
            .store
            .ack(user, device, &ids)
            .map_err(|e| self.store_error(e))?;
        self.observer.inbox(-(acked.len() as i64));
        for m in acked {
            if self.give_receipt(&m, user, ReceiptState::Delivered, now, out)? {
                self.observer.delivered(now.saturating_sub(m.ts));
            }
        }
        Ok(())
    }

    /// Records a receipt and hands it to the sender's connected devices; `false` if the user
    /// gave it before.
    fn give_receipt(
        &mut self,
        m: &Stored,
        by: &str,
        state: ReceiptState,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Result<bool, Refusal> {
        let receipt = Receipt {
            msg: m.id,
            user: by,
            state,
            ts: now,
            sender: &m.sender,
        };
        let Some(seq) = self
            .store
            .record_receipt(receipt)
            .map_err(|e| self.store_error(e))?
        else {
            return Ok(false);
        };
        self.observer.receipt(state);
        let receipt = StoredReceipt {
            seq,
            msg: m.id,
            by: by.to_owned(),
            state,
            ts: now,
        };
        self.hand_receipt(&m.sender, &receipt, out)
            .map_err(|e| self.store_error(e))?;
        Ok(true)
    }

    /// Hands a receipt to the sender's devices connected here, and marks it handed to them.
    fn hand_receipt(
        &mut self,
        sender: &str,
        receipt: &StoredReceipt,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        let devices: Vec<(String, ConnId)> = self
            .online
            .get(sender)
            .into_iter()
            .flatten()
            .map(|(d, c)| (d.clone(), *c))
            .collect();
        for (device, conn) in devices {
            out.push(Output::Frame {
                conn,
                frame: ServerFrame::Receipt {
                    msg: receipt.msg.to_string(),
                    by: receipt.by.clone(),
                    state: receipt.state,
                    ts: receipt.ts,
                },
            });
            self.store.receipts_seen(sender, &device, receipt.seq)?;
        }
        Ok(())
    }

    fn read(
        &mut self,
        now: u64,
        user: &str,
        conversation: &str,
        upto: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        let key = self.conversation_key(user, conversation)?;
        let upto =
            parse_msg_id(upto).ok_or_else(|| refuse("bad_frame", "upto: not a message id."))?;
        let unread = self
            .store
            .unread_upto(&key, user, upto)
            .map_err(|e| self.store_error(e))?;
        for m in unread {
            self.give_receipt(&m, user, ReceiptState::Read, now, out)?;
        }
        Ok(())
    }

    fn typing(&mut self, user: &str, to: Target, out: &mut Vec<Output>) -> Result<(), Refusal> {
        let (key, recipients) = self.recipients(user, &to)?;
        for r in &recipients {
            let frame = ServerFrame::Typing {
                from: user.to_owned(),
                conversation: conversation_for(&key, r),
            };
            self.frames_to_user(r, &frame, out);
        }
        self.signal(out, |me| Signal::Typing {
            relay: me.to_owned(),
            from: user.to_owned(),
            to: recipients,
            conversation: key,
        });
        Ok(())
    }

    fn subscribe(
        &mut self,
        now: u64,
        conn: ConnId,
        users: Vec<String>,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        check_ids(&users)?;
        let watching = self.conns.get(&conn).map_or(0, |c| c.watching.len());
        if watching + users.len() > MAX_WATCHED {
            return Err(refuse(
                "bad_frame",
                "A connection watches at most 1000 users.",
            ));
        }
        for u in users {
            let online = self.online_anywhere(&u);
            let last_seen = if online {
                Some(now)
            } else {
                self.store.last_seen(&u).map_err(|e| self.store_error(e))?
            };
            self.watchers.entry(u.clone()).or_default().insert(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.watching.insert(u.clone());
            }
            out.push(Output::Frame {
                conn,
                frame: ServerFrame::Presence {
                    user: u,
                    online,
                    last_seen,
                },
            });
        }
        Ok(())
    }
}

impl<S: Store, O: Observer> Relay<S, O> {
    fn join_room(
        &mut self,
        conn: ConnId,
        room: String,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        check_ids([&room])?;
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        if c.rooms.contains(&room) {
            let members = self.rooms.get(&room).map_or(0, |r| r.members.len());
            out.push(room_frame(conn, room, true, members));
            return Ok(());
        }
        if c.rooms.len() >= self.limits.rooms_per_connection {
            return Err(refuse(
                "too_many_rooms",
                format!(
                    "A connection is in at most {} rooms at once.",
                    self.limits.rooms_per_connection
                ),
            ));
        }
        let members = self.rooms.get(&room).map_or(0, |r| r.members.len());
        if members >= self.limits.room_member_limit {
            return Err(refuse(
                "room_full",
                format!(
                    "A room holds at most {} connections.",
                    self.limits.room_member_limit
                ),
            ));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.insert(room.clone());
        }
        self.rooms
            .entry(room.clone())
            .or_default()
            .members
            .insert(conn);
        self.room_members += 1;
        self.observer.rooms(self.rooms.len(), self.room_members);
        out.push(room_frame(conn, room, true, members + 1));
        Ok(())
    }

    /// Takes `conn` out of `room` (its own set of rooms is the caller's); an empty room is
    /// forgotten.
    fn leave_room(&mut self, conn: ConnId, room: &str) {
        if let Some(r) = self.rooms.get_mut(room)
            && r.members.remove(&conn)
        {
            self.room_members -= 1;
            if r.members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// An ephemeral message to a live room: `sent` to the poster, the message to every other
    /// connection in the room, nothing stored.
    #[allow(clippy::too_many_arguments)]
    fn post_to_room(
        &mut self,
        now: u64,
        conn: ConnId,
        user: &str,
        id: String,
        room: &str,
        content: Content,
        out: &mut Vec<Output>,
    ) -> Result<(), Refusal> {
        check_ids([room])?;
        let joined = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.rooms.contains(room));
        let slow_mode = self.limits.room_slow_mode.as_millis() as u64;
        let Some(r) = self.rooms.get_mut(room).filter(|_| joined) else {
            return Err(refuse("not_member", "Join the room before posting to it."));
        };
        if slow_mode > 0 {
            if let Some(last) = r.last_post.get(user)
                && now < last.saturating_add(slow_mode)
            {
                let wait = (last.saturating_add(slow_mode) - now).div_ceil(1000);
                return Err(refuse(
                    "slow_mode",
                    format!(
                        "Slow mode: one message per {}s in this room; wait {wait}s.",
                        slow_mode.div_ceil(1000)
                    ),
                ));
            }
            r.last_post.insert(user.to_owned(), now);
        }
        self.room_seq += 1;
        let msg = match &self.peers {
            // Unique across the cluster's relays.
            Some(p) => format!("r{}.{}", self.room_seq, p.me),
            None => format!("r{}", self.room_seq),
        };
        let conns: Vec<ConnId> = r.members.iter().copied().filter(|c| *c != conn).collect();
        out.push(Output::Frame {
            conn,
            frame: ServerFrame::Sent {
                id,
                msg: msg.clone(),
                ts: now,
            },
        });
        let (body, media) = match content {
            Content::Body(b) => (Some(b), None),
            Content::Media(m) => (None, Some(m)),
        };
        self.observer.message_out(conns.len() as u64);
        let message = ChatMessage {
            msg,
            from: user.to_owned(),
            conversation: format!("room:{room}"),
            body,
            media,
            ts: now,
        };
        self.signal(out, |me| Signal::Room {
            relay: me.to_owned(),
            room: room.to_owned(),
            message: message.clone(),
        });
        out.push(Output::Fanout {
            conns,
            frame: ServerFrame::Message(self.presented(message, now)),
        });
        Ok(())
    }
}

fn room_frame(conn: ConnId, room: String, joined: bool, members: usize) -> Output {
    Output::Frame {
        conn,
        frame: ServerFrame::Room {
            room,
            joined,
            members,
        },
    }
}

fn group_frame(conn: ConnId, group: String, members: Vec<String>) -> Output {
    Output::Frame {
        conn,
        frame: ServerFrame::Group { group, members },
    }
}

fn bad_media(e: crate::media::MediaError) -> Refusal {
    let mut sentence = e.to_string();
    if let Some(first) = sentence.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    refuse("bad_media", format!("{sentence}."))
}

fn unsupported() -> Refusal {
    refuse(
        "unsupported",
        "Media uploads are not implemented by this relay yet.",
    )
}

fn check_ids<I: IntoIterator>(ids: I) -> Result<(), Refusal>
where
    I::Item: AsRef<str>,
{
    match ids.into_iter().find(|id| !id_ok(id.as_ref())) {
        Some(bad) => Err(refuse(
            "bad_frame",
            format!(
                "{:?} is not a valid id (1-64 of A-Z a-z 0-9 - _ . @).",
                bad.as_ref().chars().take(70).collect::<String>()
            ),
        )),
        None => Ok(()),
    }
}

fn error(conn: ConnId, r: Refusal, id: Option<String>) -> Output {
    Output::Frame {
        conn,
        frame: ServerFrame::Error {
            code: r.code.to_owned(),
            message: r.message,
            id,
        },
    }
}

/// Parses a client frame, telling bad JSON, a missing or unknown `type` and bad fields apart.
fn parse_frame(text: &str) -> Result<ClientFrame, Refusal> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| refuse("bad_json", format!("The frame is not JSON: {e}.")))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| refuse("bad_frame", "A frame is a JSON object with a string type."))?;
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        return Err(refuse(
            "unknown_type",
            format!(
                "Unknown frame type {:?}.",
                kind.chars().take(64).collect::<String>()
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| refuse("bad_frame", format!("The {kind} frame is not valid: {e}.")))
}

#[cfg(test)]
mod tests;
