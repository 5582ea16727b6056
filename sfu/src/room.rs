//! One room's forwarding policy: who is in it, which tracks are published, which track each
//! watcher's outgoing stream carries, and when a publisher is asked for a keyframe. Pure:
//! `(now, input)` in, outputs out; no str0m `Rtc`, no socket, no clock, no payload bytes.
//!
//! A watcher (a WHEP session) brings a fixed number of receiving slots per kind (its offer's
//! `recvonly` m-lines). Every published track goes to every watcher that has a free slot of
//! its kind, oldest track first; when a track ends, its slots take the next track nobody in
//! them carries yet. Each slot has one [`Forwarder`], so its numbering stays continuous when
//! the track in it changes, and the change waits for a keyframe (requested from the
//! publisher, at most once per `keyframe_interval_min` per track and layer).
//!
//! A simulcast track has several layers (rids, lowest first). Each video slot carrying one
//! has a [`Selector`] that picks its layer from the subscriber's bandwidth estimate, the
//! layers' measured bitrates and heights, the height the subscriber asked for and the
//! overload shedding level ([`crate::layers`]), re-evaluated at every `Tick`; a switch keeps
//! sending the old layer until the new one's keyframe. Layers no slot sends or waits for are
//! reported unwanted (`LayersWanted`, dynacast), so the shell can pause them at the publisher.
//!
//! Audio: each receiver gets the audio of the `max_audio_forwarded` loudest other publishers
//! (ranked by `speaker.rs` every [`RANK_INTERVAL`]) and of the active speaker; the rest is
//! not sent to it. A muted track is sent to nobody. Either way the slot's forwarder is
//! interrupted, so the receiver sees no gap in its sequence numbers when sending resumes
//! (video resumes at a keyframe, requested at unmute).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::forward::{Forwarder, InPacket, OutPacket, SourceKey, Verdict};
use crate::layers::{self, LayerView, RateMeter, Selector};
use crate::speaker::SpeakerDetector;

/// How often the loudest audio publishers are ranked again.
pub const RANK_INTERVAL: Duration = Duration::from_millis(250);

pub type PeerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// A published track: its publisher and its index among that publisher's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId {
    pub peer: PeerId,
    pub idx: u32,
}

impl TrackId {
    fn source_key(self, layer: u8) -> SourceKey {
        (u128::from(self.peer) << 64) | (u128::from(self.idx) << 8) | u128::from(layer)
    }
}

/// The layer packed in a source key.
fn layer_of(key: SourceKey) -> u8 {
    (key & 0xff) as u8
}

/// The most simulcast layers a track may have (a bitmask of them fits in a `u8`).
pub const MAX_LAYERS: u8 = 8;

/// A watcher's outgoing stream: its `slot`-th receiving m-line of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutId {
    pub sub: PeerId,
    pub kind: MediaKind,
    pub slot: u8,
}

/// What a participant does in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends tracks (WHIP).
    Publisher,
    /// Receives, into `audio` and `video` slots (WHEP).
    Watcher { audio: u8, video: u8 },
    /// A meeting participant: publishes, and receives every other participant's tracks,
    /// each in a slot of its own opened for it (the shell adds an m-line per slot). A cascade
    /// link to another SFU is a member too: it receives what this site's participants
    /// publish, once per track, and never the tracks that came in over it.
    Member,
    /// A participant of another site (cascading): publishes what arrives over the link
    /// member `via`, receives nothing here, and its tracks are never sent back over `via`.
    Relayed { via: PeerId },
}

impl Role {
    fn publishes(self) -> bool {
        matches!(self, Role::Publisher | Role::Member | Role::Relayed { .. })
    }
}

/// The most slots of one kind a member has over its life (slots are not reused).
pub const MAX_MEMBER_SLOTS: usize = 255;

/// The room's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_participants: usize,
    pub max_publishers: usize,
    pub keyframe_interval_min: Duration,
    /// Audio streams sent to each receiver: the loudest this many, plus the active speaker.
    pub max_audio_forwarded: usize,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the room is full")]
    RoomFull,
    #[error("the room has as many publishers as it may")]
    TooManyPublishers,
    #[error("this participant is already in the room")]
    AlreadyIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomInput {
    /// A track of a participant who joined as a publisher, with its number of simulcast
    /// layers (1: no simulcast; at most [`MAX_LAYERS`]).
    TrackAdded {
        track: TrackId,
        kind: MediaKind,
        layers: u8,
    },
    /// One incoming RTP packet of `track`'s `layer` (0 without simulcast), as the policy
    /// sees it (no payload): its size, and the frame height when it carries one (a VP8
    /// keyframe's start, an H.264 sequence parameter set).
    Packet {
        track: TrackId,
        layer: u8,
        bytes: u32,
        height: Option<u32>,
        packet: InPacket,
    },
    /// A subscriber's bandwidth estimate (bits/s) for what the SFU sends it.
    Estimate { sub: PeerId, bps: u64 },
    /// The largest video height `sub` wants of `track` (`None`: any).
    MaxHeight {
        sub: PeerId,
        track: TrackId,
        max_height: Option<u32>,
    },
    /// Overload: this many top layers of every simulcast track are not sent (0: none).
    Shed { layers: u8 },
    /// Time passes: layer choices are re-evaluated.
    Tick,
    /// A watcher asked for a keyframe (PLI/FIR) on one of its outgoing streams.
    KeyframeRequest { out: OutId },
    /// The audio level (RFC 6464, dBov) of a packet from `peer`.
    AudioLevel { peer: PeerId, level: i8 },
    /// A publisher muted or unmuted one of its tracks.
    Mute { track: TrackId, muted: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomOutput {
    /// Send the input packet on `out` with these numbers.
    Forward { out: OutId, pkt: OutPacket },
    /// Ask the publisher of `track` for a keyframe (PLI) of `layer` (0 without simulcast).
    RequestKeyframe { track: TrackId, layer: u8 },
    /// A keyframe request for `track` was not sent: one went out less than
    /// `keyframe_interval_min` ago.
    KeyframeThrottled { track: TrackId },
    /// The packet was for no outgoing stream, or a stream dropped it (waiting for a
    /// keyframe, older than its segment).
    Dropped,
    /// A member has a new slot, carrying `track`: the shell offers it a new m-line.
    OpenSlot { out: OutId, track: TrackId },
    /// A member's slot carries nothing any more (its track ended): the m-line goes inactive.
    CloseSlot { out: OutId },
    /// The active speaker changed.
    ActiveSpeaker { peer: PeerId },
    /// A subscriber's stream was switched to a higher (`up`) or lower simulcast layer (it
    /// takes effect at that layer's keyframe).
    LayerSwitch { sub: PeerId, up: bool },
    /// The layers of simulcast `track` someone receives or waits for changed: bit `i` of
    /// `active` is layer `i` (dynacast: the others may be paused at the publisher).
    LayersWanted { track: TrackId, active: u8 },
    /// What `sub`'s bandwidth estimator should aim at: `min`, what its streams need now
    /// plus the next layer up (probing), and `desired`, what its requested sizes would need.
    Bitrate { sub: PeerId, min: u64, desired: u64 },
    /// An audio packet was not sent on `out`: its publisher is neither among the loudest
    /// `max_audio_forwarded` others nor the active speaker.
    NotLoudest { out: OutId },
    /// A packet of a muted track was sent to nobody.
    Muted { track: TrackId },
}

struct Slot {
    track: Option<TrackId>,
    forwarder: Forwarder,
    /// The layer choice, for simulcast tracks.
    selector: Selector,
}

impl Slot {
    fn new(first_seq: u16) -> Self {
        Self {
            track: None,
            forwarder: Forwarder::new(first_seq),
            selector: Selector::default(),
        }
    }
}

struct Participant {
    role: Role,
    /// Receiving slots by kind (watchers).
    slots: BTreeMap<MediaKind, Vec<Slot>>,
    /// Its bandwidth estimate, if its stack sends feedback.
    estimate: Option<u64>,
    /// The largest heights it asked for, per track.
    max_height: HashMap<TrackId, u32>,
    /// The last bitrate aims reported (`Bitrate`).
    aims: Option<(u64, u64)>,
}

/// What the room knows of one simulcast layer.
#[derive(Default)]
struct LayerState {
    meter: RateMeter,
    height: Option<u32>,
    /// Since when some slot has sent or waited for it (dynacast asks the publisher for it).
    wanted_since: Option<Instant>,
    /// When it was found silent though wanted (see [`LayerState::check_stall`]).
    stalled_at: Option<Instant>,
}

impl LayerState {
    /// A layer wanted for [`layers::STALL_AFTER`] that has sent nothing for as long is
    /// stalled: the publisher stopped it (a browser drops its top layers when its uplink or
    /// its CPU cannot carry them), and slots move off it. It is tried again
    /// [`layers::RETRY_AFTER`] later, or at once when a packet of it comes.
    fn check_stall(&mut self, now: Instant) {
        if self
            .stalled_at
            .is_some_and(|t| now.saturating_duration_since(t) >= layers::RETRY_AFTER)
        {
            self.stalled_at = None;
            // Wanted again from now on: a fresh grace before it counts as stalled.
            self.wanted_since = None;
        }
        let silent = |t: Instant| now.saturating_duration_since(t) >= layers::STALL_AFTER;
        if self.stalled_at.is_none()
            && self.wanted_since.is_some_and(silent)
            && self.meter.last_at().is_none_or(silent)
        {
            self.stalled_at = Some(now);
        }
    }
}

/// A simulcast track's layers, and which were last reported wanted.
struct Simulcast {
    layers: Vec<LayerState>,
    wanted: Option<u8>,
}

impl Simulcast {
    fn views(&self) -> Vec<LayerView> {
        self.layers
            .iter()
            .map(|l| LayerView {
                bps: l.meter.bps(),
                height: l.height,
                fps: l.meter.fps(),
                stalled: l.stalled_at.is_some(),
            })
            .collect()
    }
}

/// One room.
pub struct Room {
    limits: Limits,
    participants: BTreeMap<PeerId, Participant>,
    /// Published tracks, oldest first (track ids grow).
    tracks: BTreeMap<TrackId, MediaKind>,
    last_keyframe_request: HashMap<(TrackId, u8), Instant>,
    /// Simulcast tracks (more than one layer).
    simulcast: HashMap<TrackId, Simulcast>,
    /// Top layers shed for overload.
    shed: u8,
    /// Where each new slot's numbering starts: from the shell (random), so a test can fix it.
    first_seq: u16,
    speaker: SpeakerDetector,
    muted: std::collections::BTreeSet<TrackId>,
    /// The loudest audio publishers, loudest first (`max_audio_forwarded` + 1 of them: a
    /// receiver's own voice is skipped), and when they were ranked.
    loudest: Vec<PeerId>,
    ranked_at: Option<Instant>,
}

impl Room {
    pub fn new(limits: Limits, first_seq: u16) -> Self {
        Self {
            limits,
            participants: BTreeMap::new(),
            tracks: BTreeMap::new(),
            last_keyframe_request: HashMap::new(),
            simulcast: HashMap::new(),
            shed: 0,
            first_seq,
            speaker: SpeakerDetector::default(),
            muted: Default::default(),
            loudest: Vec::new(),
            ranked_at: None,
        }
    }

    /// Whether `track` is muted now.
    pub fn is_muted(&self, track: TrackId) -> bool {
        self.muted.contains(&track)
    }

    /// The audio publishers ranked loudest at the last ranking, loudest first.
    pub fn loudest(&self) -> &[PeerId] {
        &self.loudest
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    pub fn participants(&self) -> usize {
        self.participants.len()
    }

    pub fn publishers(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.role.publishes())
            .count()
    }

    /// Tracks published now, of `kind`.
    pub fn tracks(&self, kind: MediaKind) -> usize {
        self.tracks.values().filter(|k| **k == kind).count()
    }

    /// The active speaker now, if anyone speaks.
    pub fn active_speaker(&self) -> Option<PeerId> {
        self.speaker.active()
    }

    /// The track an outgoing stream carries now, if any.
    pub fn track_of(&self, out: OutId) -> Option<TrackId> {
        self.participants
            .get(&out.sub)?
            .slots
            .get(&out.kind)?
            .get(usize::from(out.slot))?
            .track
    }

    /// The simulcast layer an outgoing stream is sending now (0 without simulcast).
    pub fn sending_layer(&self, out: OutId) -> Option<u8> {
        let s = self
            .participants
            .get(&out.sub)?
            .slots
            .get(&out.kind)?
            .get(usize::from(out.slot))?;
        s.forwarder.sending().map(layer_of)
    }

    /// Whether `publisher`'s tracks come from `member` itself: its own, or those of another
    /// site's participant relayed over it (sending them back would make a loop).
    fn comes_from(&self, publisher: PeerId, member: PeerId) -> bool {
        publisher == member
            || self
                .participants
                .get(&publisher)
                .is_some_and(|p| p.role == Role::Relayed { via: member })
    }

    /// Admits a participant, within the room's limits. A watcher is given the tracks
    /// published now (keyframes requested into `out`).
    pub fn join(
        &mut self,
        now: Instant,
        peer: PeerId,
        role: Role,
        out: &mut Vec<RoomOutput>,
    ) -> Result<(), JoinError> {
        if self.participants.contains_key(&peer) {
            return Err(JoinError::AlreadyIn);
        }
        if self.participants.len() >= self.limits.max_participants {
            return Err(JoinError::RoomFull);
        }
        if role.publishes() && self.publishers() >= self.limits.max_publishers {
            return Err(JoinError::TooManyPublishers);
        }
        let mut slots = BTreeMap::new();
        if let Role::Watcher { audio, video } = role {
            for (kind, n) in [(MediaKind::Audio, audio), (MediaKind::Video, video)] {
                // Numbering differs per slot, so two streams of one watcher never look alike.
                let v = (0..n)
                    .map(|i| Slot::new(self.first_seq.wrapping_add(u16::from(i) * 1000) & 0x7fff))
                    .collect();
                slots.insert(kind, v);
            }
        }
        self.participants.insert(
            peer,
            Participant {
                role,
                slots,
                estimate: None,
                max_height: HashMap::new(),
                aims: None,
            },
        );
        if role == Role::Member {
            let tracks: Vec<(TrackId, MediaKind)> = self
                .tracks
                .iter()
                .filter(|(t, _)| !self.comes_from(t.peer, peer))
                .map(|(t, k)| (*t, *k))
                .collect();
            for (t, k) in tracks {
                self.open_slot(now, peer, t, k, out);
            }
        }
        self.assign(now, out);
        Ok(())
    }

    /// A participant leaves; its tracks end and the slots that carried them take others.
    pub fn leave(&mut self, now: Instant, peer: PeerId, out: &mut Vec<RoomOutput>) {
        if self.participants.remove(&peer).is_none() {
            return;
        }
        self.speaker.remove(peer);
        let gone: Vec<TrackId> = self
            .tracks
            .keys()
            .filter(|t| t.peer == peer)
            .copied()
            .collect();
        for t in gone {
            self.tracks.remove(&t);
            self.simulcast.remove(&t);
            self.muted.remove(&t);
        }
        self.last_keyframe_request
            .retain(|(t, _), _| t.peer != peer);
        self.loudest.retain(|p| *p != peer);
        self.ranked_at = None;
        for (&sub, p) in self.participants.iter_mut() {
            for (&kind, slots) in p.slots.iter_mut() {
                for (i, s) in slots.iter_mut().enumerate() {
                    if s.track.is_some_and(|t| t.peer == peer) {
                        s.track = None;
                        s.forwarder.select(None);
                        if p.role == Role::Member {
                            out.push(RoomOutput::CloseSlot {
                                out: OutId {
                                    sub,
                                    kind,
                                    slot: i as u8,
                                },
                            });
                        }
                    }
                }
            }
        }
        self.assign(now, out);
    }

    pub fn handle_input(&mut self, now: Instant, input: RoomInput, out: &mut Vec<RoomOutput>) {
        match input {
            RoomInput::TrackAdded {
                track,
                kind,
                layers,
            } => {
                let is_publisher = self
                    .participants
                    .get(&track.peer)
                    .is_some_and(|p| p.role.publishes());
                if is_publisher && !self.tracks.contains_key(&track) {
                    self.tracks.insert(track, kind);
                    let layers = layers.min(MAX_LAYERS);
                    if kind == MediaKind::Video && layers > 1 {
                        self.simulcast.insert(
                            track,
                            Simulcast {
                                layers: (0..layers).map(|_| LayerState::default()).collect(),
                                wanted: None,
                            },
                        );
                    }
                    // A new voice is ranked at its first packet.
                    self.ranked_at = None;
                    let members: Vec<PeerId> = self
                        .participants
                        .iter()
                        .filter(|(_, p)| p.role == Role::Member)
                        .map(|(id, _)| *id)
                        .filter(|id| !self.comes_from(track.peer, *id))
                        .collect();
                    for m in members {
                        self.open_slot(now, m, track, kind, out);
                    }
                    self.assign(now, out);
                }
            }
            RoomInput::Packet {
                track,
                layer,
                bytes,
                height,
                packet,
            } => {
                if let Some(sc) = self.simulcast.get_mut(&track)
                    && let Some(l) = sc.layers.get_mut(usize::from(layer))
                {
                    l.meter.add(packet.recv_at, u64::from(bytes), packet.ts);
                    l.stalled_at = None;
                    if height.is_some() {
                        l.height = height;
                    }
                }
                self.packet(now, track, layer, &packet, out)
            }
            RoomInput::KeyframeRequest { out: o } => {
                let slot = self
                    .participants
                    .get(&o.sub)
                    .and_then(|p| p.slots.get(&o.kind))
                    .and_then(|s| s.get(usize::from(o.slot)));
                if let Some(s) = slot
                    && let Some(track) = s.track
                {
                    let key = s.forwarder.sending().or(s.forwarder.selected());
                    let layer = key.map_or(0, layer_of);
                    self.request_keyframe(now, track, layer, out);
                }
            }
            RoomInput::Estimate { sub, bps } => {
                if let Some(p) = self.participants.get_mut(&sub) {
                    p.estimate = Some(bps);
                }
            }
            RoomInput::MaxHeight {
                sub,
                track,
                max_height,
            } => {
                if let Some(p) = self.participants.get_mut(&sub) {
                    match max_height {
                        Some(h) => p.max_height.insert(track, h),
                        None => p.max_height.remove(&track),
                    };
                }
            }
            RoomInput::Shed { layers } => {
                if layers != self.shed {
                    self.shed = layers;
                    self.evaluate(now, out);
                }
            }
            RoomInput::Tick => self.evaluate(now, out),
            RoomInput::AudioLevel { peer, level } => {
                // A participant whose audio is all muted does not speak (its packets may
                // still carry levels).
                let mut audio = self
                    .tracks
                    .iter()
                    .filter(|(t, k)| t.peer == peer && **k == MediaKind::Audio);
                let all_muted = audio.all(|(t, _)| self.muted.contains(t));
                let has_audio = self
                    .tracks
                    .iter()
                    .any(|(t, k)| t.peer == peer && *k == MediaKind::Audio);
                if self.participants.contains_key(&peer)
                    && !(has_audio && all_muted)
                    && let Some(p) = self.speaker.level(now, peer, level)
                {
                    out.push(RoomOutput::ActiveSpeaker { peer: p });
                }
            }
            RoomInput::Mute { track, muted } => self.mute(now, track, muted, out),
        }
    }

    fn mute(&mut self, now: Instant, track: TrackId, muted: bool, out: &mut Vec<RoomOutput>) {
        let Some(kind) = self.tracks.get(&track).copied() else {
            return;
        };
        let changed = if muted {
            self.muted.insert(track)
        } else {
            self.muted.remove(&track)
        };
        if !changed {
            return;
        }
        self.ranked_at = None;
        // Sending stops here; when it resumes, a new segment follows the last packet sent.
        for part in self.participants.values_mut() {
            if let Some(slots) = part.slots.get_mut(&kind) {
                for s in slots.iter_mut().filter(|s| s.track == Some(track)) {
                    s.forwarder.interrupt();
                }
            }
        }
        if !muted && kind == MediaKind::Video {
            let layers = self.simulcast.get(&track).map_or(1, |s| s.layers.len());
            for l in 0..layers {
                self.request_keyframe(now, track, u8::try_from(l).unwrap_or(0), out);
            }
        }
    }

    /// Ranks the audio publishers by loudness again, if the last ranking is older than
    /// [`RANK_INTERVAL`].
    fn rank_audio(&mut self, now: Instant) {
        if self
            .ranked_at
            .is_some_and(|t| now.saturating_duration_since(t) < RANK_INTERVAL)
        {
            return;
        }
        let mut publishers: Vec<PeerId> = self
            .tracks
            .iter()
            .filter(|(t, k)| **k == MediaKind::Audio && !self.muted.contains(t))
            .map(|(t, _)| t.peer)
            .collect();
        publishers.dedup();
        self.loudest = self.speaker.loudest(
            now,
            &publishers,
            &self.loudest,
            self.limits.max_audio_forwarded.saturating_add(1),
        );
        self.ranked_at = Some(now);
    }

    fn packet(
        &mut self,
        now: Instant,
        track: TrackId,
        layer: u8,
        p: &InPacket,
        out: &mut Vec<RoomOutput>,
    ) {
        let Some(kind) = self.tracks.get(&track).copied() else {
            out.push(RoomOutput::Dropped);
            return;
        };
        if self.muted.contains(&track) {
            out.push(RoomOutput::Muted { track });
            return;
        }
        if kind == MediaKind::Audio {
            self.rank_audio(now);
        }
        let n_audio = self.limits.max_audio_forwarded;
        let active = self.speaker.active();
        let loudest = &self.loudest;
        let source = track.source_key(layer);
        let before = out.len();
        let mut waiting = false;
        for (&sub, part) in &mut self.participants {
            let Some(slots) = part.slots.get_mut(&kind) else {
                continue;
            };
            let audible = kind != MediaKind::Audio
                || audio_allowed(loudest, active, n_audio, sub, track.peer);
            for (i, s) in slots.iter_mut().enumerate() {
                if s.track != Some(track) {
                    continue;
                }
                if !audible {
                    s.forwarder.interrupt();
                    out.push(RoomOutput::NotLoudest {
                        out: OutId {
                            sub,
                            kind,
                            slot: i as u8,
                        },
                    });
                    continue;
                }
                match s.forwarder.handle(source, p) {
                    Verdict::Forward(pkt) => out.push(RoomOutput::Forward {
                        out: OutId {
                            sub,
                            kind,
                            slot: i as u8,
                        },
                        pkt,
                    }),
                    Verdict::WaitingForKeyframe => waiting = true,
                    Verdict::NotSelected | Verdict::TooOld => {}
                }
            }
        }
        if out.len() == before {
            out.push(RoomOutput::Dropped);
        }
        // A watcher still waiting (its first request was throttled or lost) asks again.
        if waiting {
            self.request_keyframe(now, track, layer, out);
        }
    }

    fn request_keyframe(
        &mut self,
        now: Instant,
        track: TrackId,
        layer: u8,
        out: &mut Vec<RoomOutput>,
    ) {
        if self.muted.contains(&track) {
            // Nothing of it is sent: a keyframe is asked for at unmute.
            return;
        }
        if self.tracks.get(&track) != Some(&MediaKind::Video) {
            return;
        }
        let last = self.last_keyframe_request.get(&(track, layer)).copied();
        if last
            .is_some_and(|t| now.saturating_duration_since(t) < self.limits.keyframe_interval_min)
        {
            out.push(RoomOutput::KeyframeThrottled { track });
            return;
        }
        self.last_keyframe_request.insert((track, layer), now);
        out.push(RoomOutput::RequestKeyframe { track, layer });
    }

    /// The layer a slot of `sub` carrying `track` should start on (0 without simulcast).
    fn first_layer(&self, now: Instant, sub: PeerId, track: TrackId, slot: &mut Slot) -> u8 {
        let Some(sc) = self.simulcast.get(&track) else {
            return 0;
        };
        let p = self.participants.get(&sub);
        let ideal = layers::ideal(
            &sc.views(),
            p.and_then(|p| p.estimate),
            p.and_then(|p| p.max_height.get(&track).copied()),
            self.shed,
        );
        slot.selector = Selector::default();
        let l = slot.selector.update(now, ideal).unwrap_or(ideal);
        u8::try_from(l).unwrap_or(0)
    }

    /// Re-chooses every simulcast slot's layer, then reports the bitrate aims and the
    /// layers wanted that changed.
    fn evaluate(&mut self, now: Instant, out: &mut Vec<RoomOutput>) {
        for sc in self.simulcast.values_mut() {
            for l in &mut sc.layers {
                l.check_stall(now);
            }
        }
        let views: HashMap<TrackId, Vec<LayerView>> = self
            .simulcast
            .iter()
            .map(|(t, sc)| (*t, sc.views()))
            .collect();
        let shed = self.shed;
        let mut keyframes = Vec::new();
        for (&sub, part) in self.participants.iter_mut() {
            let (mut min, mut desired) = (0u64, 0u64);
            let Some(slots) = part.slots.get_mut(&MediaKind::Video) else {
                continue;
            };
            for s in slots.iter_mut() {
                let Some(track) = s.track else { continue };
                let Some(v) = views.get(&track) else { continue };
                let max_h = part.max_height.get(&track).copied();
                let ideal = layers::ideal(v, part.estimate, max_h, shed);
                let cap = layers::ideal(v, None, None, shed);
                let before = s.selector.target();
                let new = if before.is_some_and(|b| b > cap) {
                    s.selector.force(ideal);
                    Some(ideal)
                } else {
                    s.selector.update(now, ideal)
                };
                let target = s.selector.target().unwrap_or(ideal);
                if let Some(new) = new
                    && Some(new) != before
                {
                    let layer = u8::try_from(new).unwrap_or(0);
                    s.forwarder.switch(track.source_key(layer));
                    keyframes.push((track, layer));
                    if let Some(b) = before {
                        out.push(RoomOutput::LayerSwitch { sub, up: new > b });
                    }
                }
                let unbudgeted = layers::ideal(v, None, max_h, shed);
                let next = (target + 1).min(unbudgeted);
                min += layers::planned_bps(v, next.max(target));
                desired += layers::planned_bps(v, unbudgeted);
            }
            if desired > 0 {
                let changed = part.aims.is_none_or(|(m, d)| {
                    m.abs_diff(min) * 10 > m.max(1) || d.abs_diff(desired) * 10 > d.max(1)
                });
                if changed {
                    part.aims = Some((min, desired));
                    out.push(RoomOutput::Bitrate { sub, min, desired });
                }
            }
        }
        for (track, layer) in keyframes {
            self.request_keyframe(now, track, layer, out);
        }
        self.report_wanted(now, out);
    }

    /// Dynacast: which layers of each simulcast track some slot sends or waits for.
    fn report_wanted(&mut self, now: Instant, out: &mut Vec<RoomOutput>) {
        let mut wanted: HashMap<TrackId, u8> = self.simulcast.keys().map(|t| (*t, 0)).collect();
        for part in self.participants.values() {
            let Some(slots) = part.slots.get(&MediaKind::Video) else {
                continue;
            };
            for s in slots {
                let Some(track) = s.track else { continue };
                let Some(mask) = wanted.get_mut(&track) else {
                    continue;
                };
                for key in [s.forwarder.sending(), s.forwarder.selected()]
                    .into_iter()
                    .flatten()
                {
                    *mask |= 1u8.checked_shl(u32::from(layer_of(key))).unwrap_or(0);
                }
            }
        }
        let mut changed: Vec<(TrackId, u8)> = Vec::new();
        for (track, sc) in self.simulcast.iter_mut() {
            let mask = wanted.get(track).copied().unwrap_or(0);
            for (i, l) in sc.layers.iter_mut().enumerate() {
                if mask & 1u8.checked_shl(i as u32).unwrap_or(0) == 0 {
                    l.wanted_since = None;
                } else {
                    l.wanted_since.get_or_insert(now);
                }
            }
            if sc.wanted != Some(mask) {
                sc.wanted = Some(mask);
                changed.push((*track, mask));
            }
        }
        changed.sort();
        for (track, active) in changed {
            out.push(RoomOutput::LayersWanted { track, active });
        }
    }

    /// Gives member `sub` a new slot carrying `track` (up to [`MAX_MEMBER_SLOTS`] per kind).
    fn open_slot(
        &mut self,
        now: Instant,
        sub: PeerId,
        track: TrackId,
        kind: MediaKind,
        out: &mut Vec<RoomOutput>,
    ) {
        let first_seq = self.first_seq;
        let Some(slots) = self
            .participants
            .get_mut(&sub)
            .map(|p| p.slots.entry(kind).or_default())
        else {
            return;
        };
        if slots.len() >= MAX_MEMBER_SLOTS {
            return;
        }
        let i = slots.len();
        let mut slot = Slot::new(first_seq.wrapping_add(i as u16 * 1000) & 0x7fff);
        let layer = self.first_layer(now, sub, track, &mut slot);
        slot.track = Some(track);
        slot.forwarder.select(Some(track.source_key(layer)));
        if let Some(slots) = self
            .participants
            .get_mut(&sub)
            .and_then(|p| p.slots.get_mut(&kind))
        {
            slots.push(slot);
        }
        out.push(RoomOutput::OpenSlot {
            out: OutId {
                sub,
                kind,
                slot: i as u8,
            },
            track,
        });
        self.request_keyframe(now, track, layer, out);
        self.report_wanted(now, out);
    }

    /// Fills every free slot of a watcher with the oldest track of its kind that it does not
    /// receive yet, and asks for keyframes for the video tracks newly placed. (A member's
    /// slots are opened for one track each and never refilled.)
    fn assign(&mut self, now: Instant, out: &mut Vec<RoomOutput>) {
        let mut placed = Vec::new();
        for (&sub, part) in self
            .participants
            .iter_mut()
            .filter(|(_, p)| p.role != Role::Member)
        {
            for (kind, slots) in part.slots.iter_mut() {
                for i in 0..slots.len() {
                    if slots[i].track.is_some() {
                        continue;
                    }
                    let next = self
                        .tracks
                        .iter()
                        .find(|(t, k)| *k == kind && !slots.iter().any(|s| s.track == Some(**t)));
                    let Some((&t, _)) = next else {
                        break;
                    };
                    slots[i].track = Some(t);
                    placed.push((sub, *kind, i, t));
                }
            }
        }
        let mut wanted = Vec::new();
        for (sub, kind, i, t) in placed {
            let mut slot = Slot::new(0);
            let layer = self.first_layer(now, sub, t, &mut slot);
            let Some(s) = self
                .participants
                .get_mut(&sub)
                .and_then(|p| p.slots.get_mut(&kind))
                .and_then(|v| v.get_mut(i))
            else {
                continue;
            };
            s.selector = slot.selector;
            s.forwarder.select(Some(t.source_key(layer)));
            if kind == MediaKind::Video {
                wanted.push((t, layer));
            }
        }
        wanted.sort();
        wanted.dedup();
        for (t, layer) in wanted {
            self.request_keyframe(now, t, layer, out);
        }
        self.report_wanted(now, out);
    }
}

/// Whether receiver `sub` gets `publisher`'s audio: the active speaker always; otherwise when
/// the publisher is among the `n` loudest in `loudest` that are not `sub` itself.
pub fn audio_allowed(
    loudest: &[PeerId],
    active: Option<PeerId>,
    n: usize,
    sub: PeerId,
    publisher: PeerId,
) -> bool {
    active == Some(publisher)
        || loudest
            .iter()
            .filter(|p| **p != sub)
            .take(n)
            .any(|p| *p == publisher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_participants: 4,
            max_publishers: 2,
            keyframe_interval_min: Duration::from_millis(500),
            max_audio_forwarded: 3,
        }
    }

    const WATCHER: Role = Role::Watcher { audio: 1, video: 1 };

    fn packet(track: TrackId, seq: u64, key: bool, at: Instant) -> RoomInput {
        RoomInput::Packet {
            track,
            layer: 0,
            bytes: 1000,
            height: None,
            packet: InPacket {
                seq,
                ts: seq as u32 * 3000,
                keyframe_start: key,
                vp8: None,
                recv_at: at,
                clock_rate: 90_000,
            },
        }
    }

    fn forwards(out: &[RoomOutput]) -> Vec<(OutId, u64)> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::Forward { out, pkt } => Some((*out, pkt.seq)),
                _ => None,
            })
            .collect()
    }

    fn opened(out: &[RoomOutput]) -> Vec<(OutId, TrackId)> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::OpenSlot { out, track } => Some((*out, *track)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_cascade_link_never_gets_back_the_tracks_that_came_over_it() {
        let t0 = Instant::now();
        let limits = Limits {
            max_publishers: 8,
            max_participants: 8,
            ..limits()
        };
        let mut room = Room::new(limits, 10);
        let mut out = Vec::new();
        // 1: a local member; 2 and 3: links to two other sites (this SFU is their hub);
        // 4 is a participant of link 2's site, 5 one of link 3's.
        room.join(t0, 1, Role::Member, &mut out).expect("member");
        room.join(t0, 2, Role::Member, &mut out).expect("link 2");
        room.join(t0, 3, Role::Member, &mut out).expect("link 3");
        room.join(t0, 4, Role::Relayed { via: 2 }, &mut out)
            .expect("relayed 4");
        room.join(t0, 5, Role::Relayed { via: 3 }, &mut out)
            .expect("relayed 5");
        assert!(out.is_empty(), "{out:?}");
        let add = |room: &mut Room, out: &mut Vec<RoomOutput>, track| {
            let input = RoomInput::TrackAdded {
                track,
                kind: MediaKind::Video,
                layers: 1,
            };
            room.handle_input(t0, input, out);
        };
        let subs = |out: &[RoomOutput]| {
            let mut v: Vec<PeerId> = opened(out).into_iter().map(|(o, _)| o.sub).collect();
            v.sort_unstable();
            v
        };
        let local = TrackId { peer: 1, idx: 1 };
        add(&mut room, &mut out, local);
        assert_eq!(
            subs(&out),
            vec![2, 3],
            "a local track goes once to each link"
        );
        out.clear();
        let from_2 = TrackId { peer: 4, idx: 2 };
        add(&mut room, &mut out, from_2);
        assert_eq!(subs(&out), vec![1, 3], "never back over link 2");
        out.clear();
        let from_3 = TrackId { peer: 5, idx: 3 };
        add(&mut room, &mut out, from_3);
        assert_eq!(subs(&out), vec![1, 2], "never back over link 3");
        out.clear();
        // A link that joins later gets what is published, except what it relays itself.
        room.join(t0, 6, Role::Member, &mut out).expect("link 6");
        room.join(t0, 7, Role::Relayed { via: 6 }, &mut out)
            .expect("relayed 7");
        out.clear();
        add(&mut room, &mut out, TrackId { peer: 7, idx: 4 });
        assert_eq!(subs(&out), vec![1, 2, 3]);
        // A relayed participant receives nothing itself.
        assert!(opened(&out).iter().all(|(o, _)| o.sub != 4 && o.sub != 5));
        out.clear();
        // Its link's leaving takes nothing of the others' with it.
        room.leave(t0, 7, &mut out);
        let closed = out
            .iter()
            .filter(|o| matches!(o, RoomOutput::CloseSlot { .. }))
            .count();
        assert_eq!(closed, 3, "{out:?}");
    }

    #[test]
    fn members_receive_every_other_members_tracks_in_slots_of_their_own() {
        let t0 = Instant::now();
        let limits = Limits {
            max_publishers: 4,
            ..limits()
        };
        let mut room = Room::new(limits, 10);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Member, &mut out).expect("member 1");
        room.join(t0, 2, Role::Member, &mut out).expect("member 2");
        assert!(out.is_empty(), "{out:?}");
        let a1 = TrackId { peer: 1, idx: 1 };
        let v1 = TrackId { peer: 1, idx: 2 };
        for (t, kind) in [(a1, MediaKind::Audio), (v1, MediaKind::Video)] {
            room.handle_input(
                t0,
                RoomInput::TrackAdded {
                    track: t,
                    kind,
                    layers: 1,
                },
                &mut out,
            );
        }
        let slot = |sub, kind, slot| OutId { sub, kind, slot };
        // Member 2 gets both, member 1 none of its own.
        assert_eq!(
            opened(&out),
            vec![
                (slot(2, MediaKind::Audio, 0), a1),
                (slot(2, MediaKind::Video, 0), v1)
            ]
        );
        out.clear();
        // A third member gets member 1's tracks at once.
        room.join(t0, 3, Role::Member, &mut out).expect("member 3");
        assert_eq!(
            opened(&out),
            vec![
                (slot(3, MediaKind::Audio, 0), a1),
                (slot(3, MediaKind::Video, 0), v1)
            ]
        );
        out.clear();
        let a3 = TrackId { peer: 3, idx: 3 };
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: a3,
                kind: MediaKind::Audio,
                layers: 1,
            },
            &mut out,
        );
        assert_eq!(
            opened(&out),
            vec![
                (slot(1, MediaKind::Audio, 0), a3),
                (slot(2, MediaKind::Audio, 1), a3)
            ]
        );
        out.clear();
        room.handle_input(t0, packet(a1, 7, true, t0), &mut out);
        let mut f: Vec<OutId> = forwards(&out).into_iter().map(|(o, _)| o).collect();
        f.sort_by_key(|o| o.sub);
        assert_eq!(
            f,
            vec![slot(2, MediaKind::Audio, 0), slot(3, MediaKind::Audio, 0)]
        );
        out.clear();
        // Member 1 leaves: its slots at 2 and 3 close; nothing is reassigned into them.
        room.leave(t0, 1, &mut out);
        let mut closed: Vec<OutId> = out
            .iter()
            .filter_map(|o| match o {
                RoomOutput::CloseSlot { out } => Some(*out),
                _ => None,
            })
            .collect();
        closed.sort_by_key(|o| (o.sub, o.kind));
        assert_eq!(
            closed,
            vec![
                slot(2, MediaKind::Audio, 0),
                slot(2, MediaKind::Video, 0),
                slot(3, MediaKind::Audio, 0),
                slot(3, MediaKind::Video, 0)
            ]
        );
        assert!(opened(&out).is_empty());
        assert_eq!(room.track_of(slot(2, MediaKind::Audio, 1)), Some(a3));
    }

    #[test]
    fn members_count_as_publishers() {
        let t0 = Instant::now();
        let mut room = Room::new(limits(), 10);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Member, &mut out).expect("member 1");
        room.join(t0, 2, Role::Publisher, &mut out)
            .expect("publisher");
        assert_eq!(
            room.join(t0, 3, Role::Member, &mut out),
            Err(JoinError::TooManyPublishers)
        );
    }

    #[test]
    fn every_watcher_gets_audio_and_video_after_a_keyframe() {
        let t0 = Instant::now();
        let mut room = Room::new(limits(), 10);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Publisher, &mut out)
            .expect("publisher");
        room.join(t0, 2, WATCHER, &mut out).expect("watcher");
        let audio = TrackId { peer: 1, idx: 0 };
        let video = TrackId { peer: 1, idx: 1 };
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: audio,
                kind: MediaKind::Audio,
                layers: 1,
            },
            &mut out,
        );
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: video,
                kind: MediaKind::Video,
                layers: 1,
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![RoomOutput::RequestKeyframe {
                track: video,
                layer: 0
            }]
        );
        room.join(t0, 3, WATCHER, &mut out).expect("second watcher");
        assert_eq!(
            out.last(),
            Some(&RoomOutput::KeyframeThrottled { track: video })
        );
        out.clear();
        room.handle_input(t0, packet(audio, 5, true, t0), &mut out);
        assert_eq!(forwards(&out).len(), 2, "audio needs no keyframe: {out:?}");
        out.clear();
        room.handle_input(t0, packet(video, 50, false, t0), &mut out);
        assert!(forwards(&out).is_empty());
        assert_eq!(
            out.last(),
            Some(&RoomOutput::KeyframeThrottled { track: video })
        );
        out.clear();
        // Later, still waiting: the request goes out again.
        let t1 = t0 + Duration::from_millis(600);
        room.handle_input(t1, packet(video, 51, false, t1), &mut out);
        assert_eq!(
            out.last(),
            Some(&RoomOutput::RequestKeyframe {
                track: video,
                layer: 0
            })
        );
        out.clear();
        room.handle_input(t1, packet(video, 52, true, t1), &mut out);
        let f = forwards(&out);
        assert_eq!(f.len(), 2);
        assert!(
            f.iter()
                .all(|(o, _)| o.kind == MediaKind::Video && o.slot == 0)
        );
        assert_eq!(
            room.track_of(OutId {
                sub: 2,
                kind: MediaKind::Video,
                slot: 0
            }),
            Some(video)
        );
        assert_eq!(
            (room.tracks(MediaKind::Audio), room.tracks(MediaKind::Video)),
            (1, 1)
        );
    }

    #[test]
    fn a_slot_moves_to_the_next_publisher_and_keeps_numbering() {
        let t0 = Instant::now();
        let mut room = Room::new(limits(), 100);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Publisher, &mut out).expect("p1");
        room.join(t0, 2, Role::Publisher, &mut out).expect("p2");
        room.join(t0, 3, WATCHER, &mut out).expect("w");
        let v1 = TrackId { peer: 1, idx: 0 };
        let v2 = TrackId { peer: 2, idx: 0 };
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: v1,
                kind: MediaKind::Video,
                layers: 1,
            },
            &mut out,
        );
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: v2,
                kind: MediaKind::Video,
                layers: 1,
            },
            &mut out,
        );
        out.clear();
        room.handle_input(t0, packet(v1, 7, true, t0), &mut out);
        room.handle_input(t0, packet(v2, 900, true, t0), &mut out);
        assert_eq!(
            forwards(&out).iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![100]
        );
        out.clear();
        room.leave(t0, 1, &mut out);
        assert_eq!(
            out,
            vec![RoomOutput::RequestKeyframe {
                track: v2,
                layer: 0
            }]
        );
        out.clear();
        room.handle_input(t0, packet(v2, 901, true, t0), &mut out);
        assert_eq!(
            forwards(&out).iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![101]
        );
    }

    #[test]
    fn limits_refuse_joins() {
        let t0 = Instant::now();
        let mut room = Room::new(limits(), 0);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Publisher, &mut out).expect("p1");
        assert_eq!(
            room.join(t0, 1, WATCHER, &mut out),
            Err(JoinError::AlreadyIn)
        );
        room.join(t0, 2, Role::Publisher, &mut out).expect("p2");
        assert_eq!(
            room.join(t0, 3, Role::Publisher, &mut out),
            Err(JoinError::TooManyPublishers)
        );
        room.join(t0, 3, WATCHER, &mut out).expect("w1");
        room.join(t0, 4, WATCHER, &mut out).expect("w2");
        assert_eq!(
            room.join(t0, 5, WATCHER, &mut out),
            Err(JoinError::RoomFull)
        );
        room.leave(t0, 4, &mut out);
        room.join(t0, 5, WATCHER, &mut out).expect("after a leave");
    }

    #[test]
    fn watcher_keyframe_requests_are_throttled_per_track() {
        let t0 = Instant::now();
        let mut room = Room::new(limits(), 0);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Publisher, &mut out).expect("p");
        room.join(t0, 2, WATCHER, &mut out).expect("w");
        let v = TrackId { peer: 1, idx: 0 };
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: v,
                kind: MediaKind::Video,
                layers: 1,
            },
            &mut out,
        );
        out.clear();
        let o = OutId {
            sub: 2,
            kind: MediaKind::Video,
            slot: 0,
        };
        let mut sent = 0;
        for ms in (0..3000).step_by(50) {
            room.handle_input(
                t0 + Duration::from_millis(ms + 1),
                RoomInput::KeyframeRequest { out: o },
                &mut out,
            );
        }
        for x in &out {
            if matches!(x, RoomOutput::RequestKeyframe { .. }) {
                sent += 1;
            }
        }
        // The join's request at 0 ms, then at most one per 500 ms: 500, 1000, .. 2500.
        assert_eq!(sent, 5, "{out:?}");
    }

    /// A simulcast packet of `layer` (keyframes carry the layer's height).
    fn sc_packet(track: TrackId, layer: u8, seq: u64, key: bool, at: Instant) -> RoomInput {
        RoomInput::Packet {
            track,
            layer,
            bytes: 1000,
            height: key.then_some(180 << layer),
            packet: InPacket {
                seq,
                ts: seq as u32 * 3000,
                keyframe_start: key,
                vp8: None,
                recv_at: at,
                clock_rate: 90_000,
            },
        }
    }

    fn switches(out: &[RoomOutput]) -> Vec<bool> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::LayerSwitch { up, .. } => Some(*up),
                _ => None,
            })
            .collect()
    }

    fn wanted(out: &[RoomOutput]) -> Vec<u8> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::LayersWanted { active, .. } => Some(*active),
                _ => None,
            })
            .collect()
    }

    /// A publisher with one three-layer video track, a watcher, each layer sending 1000-byte
    /// packets: q 20/s (160 kbit/s), h 60/s (480 kbit/s), f 180/s (1.44 Mbit/s).
    fn simulcast_room(t0: Instant) -> (Room, TrackId, Vec<RoomOutput>) {
        let mut room = Room::new(limits(), 0);
        let mut out = Vec::new();
        room.join(t0, 1, Role::Publisher, &mut out).expect("p");
        let v = TrackId { peer: 1, idx: 0 };
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: v,
                kind: MediaKind::Video,
                layers: 3,
            },
            &mut out,
        );
        (room, v, out)
    }

    /// Feeds one second of all three layers from `t`, a keyframe on each at its start.
    fn second_of_media(
        room: &mut Room,
        v: TrackId,
        t: Instant,
        seqs: &mut [u64; 3],
    ) -> Vec<RoomOutput> {
        second_of_layers(room, v, t, seqs, &[0, 1, 2])
    }

    /// [`second_of_media`] with only `sent` of the layers.
    fn second_of_layers(
        room: &mut Room,
        v: TrackId,
        t: Instant,
        seqs: &mut [u64; 3],
        sent: &[u8],
    ) -> Vec<RoomOutput> {
        let mut out = Vec::new();
        for ms in 0..1000u64 {
            for (layer, per_s) in [(0u8, 20u64), (1, 60), (2, 180)] {
                if !sent.contains(&layer) {
                    continue;
                }
                if ms % (1000 / per_s) == 0 {
                    let at = t + Duration::from_millis(ms);
                    let i = usize::from(layer);
                    seqs[i] += 1;
                    room.handle_input(at, sc_packet(v, layer, seqs[i], ms == 0, at), &mut out);
                }
            }
            if ms % 200 == 0 {
                room.handle_input(t + Duration::from_millis(ms), RoomInput::Tick, &mut out);
            }
        }
        out
    }

    #[test]
    fn nobody_watching_pauses_every_layer_and_a_watcher_wakes_one() {
        let t0 = Instant::now();
        let (mut room, v, mut out) = simulcast_room(t0);
        room.handle_input(t0, RoomInput::Tick, &mut out);
        assert_eq!(wanted(&out), vec![0], "{out:?}");
        out.clear();
        room.join(t0, 2, WATCHER, &mut out).expect("w");
        // No estimate yet: the top layer; it is wanted and its keyframe requested.
        assert_eq!(wanted(&out), vec![0b100], "{out:?}");
        assert!(out.contains(&RoomOutput::RequestKeyframe { track: v, layer: 2 }));
        room.leave(t0, 2, &mut out);
        room.handle_input(t0, RoomInput::Tick, &mut out);
        assert_eq!(wanted(&out).last(), Some(&0));
    }

    #[test]
    fn the_estimate_moves_a_watcher_down_fast_and_up_slowly_at_keyframes() {
        let t0 = Instant::now();
        let (mut room, v, mut out) = simulcast_room(t0);
        let mut seqs = [0, 10_000, 20_000];
        second_of_media(&mut room, v, t0, &mut seqs);
        room.join(t0, 2, WATCHER, &mut out).expect("w");
        room.handle_input(
            t0,
            RoomInput::Estimate {
                sub: 2,
                bps: 5_000_000,
            },
            &mut out,
        );
        let mut t = t0 + Duration::from_secs(1);
        let o = second_of_media(&mut room, v, t, &mut seqs);
        let slot = OutId {
            sub: 2,
            kind: MediaKind::Video,
            slot: 0,
        };
        assert_eq!(room.sending_layer(slot), Some(2), "{o:?}");
        // The link shrinks to 300 kbit/s: down to q (160k fits 0.9 × 300k; h does not).
        room.handle_input(
            t,
            RoomInput::Estimate {
                sub: 2,
                bps: 300_000,
            },
            &mut out,
        );
        t += Duration::from_secs(1);
        let o = second_of_media(&mut room, v, t, &mut seqs);
        assert_eq!(switches(&o), vec![false], "{o:?}");
        assert!(o.contains(&RoomOutput::RequestKeyframe { track: v, layer: 0 }));
        // The old layer goes on until the new one's keyframe (the next second's first).
        assert_eq!(room.sending_layer(slot), Some(2));
        t += Duration::from_secs(1);
        let o = second_of_media(&mut room, v, t, &mut seqs);
        assert_eq!(room.sending_layer(slot), Some(0));
        // Only q and whatever is still sent are wanted: f is paused once the switch is done.
        assert_eq!(wanted(&o).last(), Some(&0b001), "{o:?}");
        // The estimate comes back: up only after UP_AFTER, to the top again.
        room.handle_input(
            t,
            RoomInput::Estimate {
                sub: 2,
                bps: 5_000_000,
            },
            &mut out,
        );
        t += Duration::from_secs(1);
        let o = second_of_media(&mut room, v, t, &mut seqs);
        assert!(switches(&o).is_empty(), "not within a second: {o:?}");
        let mut ups = Vec::new();
        for _ in 0..4 {
            t += Duration::from_secs(1);
            ups.extend(switches(&second_of_media(&mut room, v, t, &mut seqs)));
        }
        assert_eq!(ups, vec![true]);
        assert_eq!(room.sending_layer(slot), Some(2));
    }

    #[test]
    fn a_layer_its_publisher_stops_sending_is_left_for_one_still_sent() {
        let t0 = Instant::now();
        let (mut room, v, mut out) = simulcast_room(t0);
        let mut seqs = [0, 10_000, 20_000];
        second_of_media(&mut room, v, t0, &mut seqs);
        room.join(t0, 2, WATCHER, &mut out).expect("w");
        let mut t = t0 + Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        let slot = OutId {
            sub: 2,
            kind: MediaKind::Video,
            slot: 0,
        };
        assert_eq!(room.sending_layer(slot), Some(2));
        // The publisher stops f (as a browser does when its uplink cannot carry it). After
        // STALL_AFTER of silence the watcher is moved down at once (no DOWN_AFTER wait) and
        // h's keyframe is asked for; h takes over at its next keyframe.
        let mut o = Vec::new();
        for _ in 0..3 {
            t += Duration::from_secs(1);
            o.extend(second_of_layers(&mut room, v, t, &mut seqs, &[0, 1]));
        }
        assert_eq!(switches(&o), vec![false], "{o:?}");
        assert!(o.contains(&RoomOutput::RequestKeyframe { track: v, layer: 1 }));
        t += Duration::from_secs(1);
        let o = second_of_layers(&mut room, v, t, &mut seqs, &[0, 1]);
        assert_eq!(room.sending_layer(slot), Some(1));
        assert_eq!(
            wanted(&o).last(),
            Some(&0b010),
            "f is no longer asked for: {o:?}"
        );
        // For the next 20 s f stays silent: it is tried again every RETRY_AFTER (the watcher
        // selects it after UP_AFTER, f is asked for), found stalled again, and the watcher
        // never stops receiving h meanwhile.
        let mut retried = 0;
        for _ in 0..20 {
            t += Duration::from_secs(1);
            let o = second_of_layers(&mut room, v, t, &mut seqs, &[0, 1]);
            assert!(
                forwards(&o).iter().filter(|(o, _)| *o == slot).count() >= 50,
                "h keeps flowing: {o:?}"
            );
            assert_eq!(room.sending_layer(slot), Some(1));
            retried += wanted(&o).iter().filter(|m| **m & 0b100 != 0).count();
        }
        assert!(
            (1..=2).contains(&retried),
            "f asked for again {retried} times"
        );
        // f comes back: the watcher goes up to it again (after UP_AFTER, at its keyframe).
        let mut up = Vec::new();
        for _ in 0..6 {
            t += Duration::from_secs(1);
            up.extend(switches(&second_of_media(&mut room, v, t, &mut seqs)));
        }
        assert_eq!(up, vec![true]);
        assert_eq!(room.sending_layer(slot), Some(2));
    }

    #[test]
    fn the_requested_height_caps_the_layer_and_overload_sheds_the_top() {
        let t0 = Instant::now();
        let (mut room, v, mut out) = simulcast_room(t0);
        let mut seqs = [0, 10_000, 20_000];
        second_of_media(&mut room, v, t0, &mut seqs);
        room.join(t0, 2, WATCHER, &mut out).expect("w");
        let slot = OutId {
            sub: 2,
            kind: MediaKind::Video,
            slot: 0,
        };
        let mut t = t0 + Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        assert_eq!(room.sending_layer(slot), Some(2));
        room.handle_input(
            t,
            RoomInput::MaxHeight {
                sub: 2,
                track: v,
                max_height: Some(360),
            },
            &mut out,
        );
        t += Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        t += Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        assert_eq!(room.sending_layer(slot), Some(1), "360 is the h layer");
        room.handle_input(
            t,
            RoomInput::MaxHeight {
                sub: 2,
                track: v,
                max_height: None,
            },
            &mut out,
        );
        for _ in 0..5 {
            t += Duration::from_secs(1);
            second_of_media(&mut room, v, t, &mut seqs);
        }
        assert_eq!(room.sending_layer(slot), Some(2));
        // Overload: shed one layer, at once (no hysteresis), the watcher stays.
        out.clear();
        room.handle_input(t, RoomInput::Shed { layers: 1 }, &mut out);
        assert_eq!(switches(&out), vec![false]);
        t += Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        t += Duration::from_secs(1);
        second_of_media(&mut room, v, t, &mut seqs);
        assert_eq!(room.sending_layer(slot), Some(1));
        assert_eq!(room.participants(), 2);
        room.handle_input(t, RoomInput::Shed { layers: 0 }, &mut out);
        for _ in 0..5 {
            t += Duration::from_secs(1);
            second_of_media(&mut room, v, t, &mut seqs);
        }
        assert_eq!(room.sending_layer(slot), Some(2));
    }

    proptest! {
        /// Whatever the estimates, heights asked for and shedding, a watcher of a simulcast
        /// track gets one continuous stream: no outgoing number twice, and the layer it
        /// carries changes only at a keyframe of the new layer.
        #[test]
        fn simulcast_switches_only_at_keyframes_and_never_reuse_numbers(
            steps in prop::collection::vec((0u8..6, 0u64..3_000_000, 0u8..3, any::<bool>()), 1..400)
        ) {
            let t0 = Instant::now();
            let (mut room, v, mut out) = simulcast_room(t0);
            room.join(t0, 2, WATCHER, &mut out).expect("w");
            let slot = OutId { sub: 2, kind: MediaKind::Video, slot: 0 };
            let mut seqs = [0u64, 10_000, 20_000];
            let mut used = std::collections::HashSet::new();
            let mut carried: Option<u8> = None;
            let mut now = t0;
            for (op, x, layer, key) in steps {
                now += Duration::from_millis(20);
                out.clear();
                match op {
                    0 => room.handle_input(now, RoomInput::Estimate { sub: 2, bps: x }, &mut out),
                    1 => room.handle_input(now, RoomInput::Shed { layers: layer }, &mut out),
                    2 => room.handle_input(now, RoomInput::MaxHeight { sub: 2, track: v, max_height: key.then_some(180 << layer) }, &mut out),
                    3 => room.handle_input(now, RoomInput::Tick, &mut out),
                    _ => {
                        let i = usize::from(layer);
                        seqs[i] += 1;
                        room.handle_input(now, sc_packet(v, layer, seqs[i], key, now), &mut out);
                        for (o, seq) in forwards(&out) {
                            prop_assert_eq!(o, slot);
                            prop_assert!(used.insert(seq), "seq {} twice", seq);
                            if carried != Some(layer) {
                                prop_assert!(key, "layer {} started without a keyframe", layer);
                                carried = Some(layer);
                            }
                        }
                    }
                }
                prop_assert_eq!(room.sending_layer(slot), carried);
            }
        }
    }

    proptest! {
        /// Whatever joins, leaves and tracks come and go, no watcher's slot carries a track
        /// twice, every slot is filled while tracks of its kind are left over, and the
        /// limits hold.
        #[test]
        fn slots_stay_consistent(ops in prop::collection::vec((0u8..4, 0u64..6, any::<bool>()), 1..200)) {
            let t0 = Instant::now();
            let mut room = Room::new(Limits { max_participants: 5, max_publishers: 3, keyframe_interval_min: Duration::from_millis(500), max_audio_forwarded: 3 }, 0);
            let mut out = Vec::new();
            let mut next_idx = 0u32;
            for (op, peer, flag) in ops {
                match op {
                    0 => { let _ = room.join(t0, peer, if flag { Role::Publisher } else { Role::Watcher { audio: 1, video: 2 } }, &mut out); }
                    1 => room.leave(t0, peer, &mut out),
                    2 => { next_idx += 1; room.handle_input(t0, RoomInput::TrackAdded { track: TrackId { peer, idx: next_idx }, kind: if flag { MediaKind::Video } else { MediaKind::Audio }, layers: 1 }, &mut out); }
                    _ => {}
                }
                prop_assert!(room.participants() <= 5 && room.publishers() <= 3);
                for part in room.participants.values() {
                    for (kind, slots) in &part.slots {
                        let carried: Vec<_> = slots.iter().filter_map(|s| s.track).collect();
                        let mut dedup = carried.clone();
                        dedup.sort();
                        dedup.dedup();
                        prop_assert_eq!(carried.len(), dedup.len());
                        prop_assert!(carried.iter().all(|t| room.tracks.get(t) == Some(kind)));
                        let available = room.tracks(*kind);
                        prop_assert_eq!(carried.len(), available.min(slots.len()));
                    }
                }
            }
        }
    }

    /// A room of members 1..=n, each publishing one audio track (idx = peer) and, with
    /// `video`, one video track (idx = 100 + peer).
    fn meeting(n: u64, max_audio: usize, video: bool) -> (Room, Instant) {
        let t0 = Instant::now();
        let limits = Limits {
            max_participants: 10,
            max_publishers: 10,
            keyframe_interval_min: Duration::from_millis(500),
            max_audio_forwarded: max_audio,
        };
        let mut room = Room::new(limits, 10);
        let mut out = Vec::new();
        for p in 1..=n {
            room.join(t0, p, Role::Member, &mut out).expect("member");
        }
        for p in 1..=n {
            let a = TrackId {
                peer: p,
                idx: p as u32,
            };
            room.handle_input(
                t0,
                RoomInput::TrackAdded {
                    track: a,
                    kind: MediaKind::Audio,
                    layers: 1,
                },
                &mut out,
            );
            if video {
                let v = TrackId {
                    peer: p,
                    idx: 100 + p as u32,
                };
                room.handle_input(
                    t0,
                    RoomInput::TrackAdded {
                        track: v,
                        kind: MediaKind::Video,
                        layers: 1,
                    },
                    &mut out,
                );
            }
        }
        (room, t0)
    }

    /// 20 ms of audio from each (peer, level) at `t`: a level and a packet each, seq `seq`.
    fn speak(room: &mut Room, t: Instant, seq: u64, who: &[(PeerId, i8)]) -> Vec<RoomOutput> {
        let mut out = Vec::new();
        for &(p, level) in who {
            room.handle_input(t, RoomInput::AudioLevel { peer: p, level }, &mut out);
            let track = TrackId {
                peer: p,
                idx: p as u32,
            };
            let mut pkt = packet(track, seq, true, t);
            if let RoomInput::Packet { packet, .. } = &mut pkt {
                packet.clock_rate = 48_000;
            }
            room.handle_input(t, pkt, &mut out);
        }
        out
    }

    /// Which publishers' audio each receiver got: (receiver, publisher) for every forward.
    fn heard(room: &Room, out: &[RoomOutput]) -> Vec<(PeerId, PeerId)> {
        let mut v: Vec<(PeerId, PeerId)> = forwards(out)
            .into_iter()
            .filter(|(o, _)| o.kind == MediaKind::Audio)
            .filter_map(|(o, _)| Some((o.sub, room.track_of(o)?.peer)))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn only_the_loudest_others_and_the_speaker_are_heard() {
        let (mut room, t0) = meeting(3, 1, false);
        let levels = [(1, -20), (2, -40), (3, -127)];
        let mut t = t0;
        let mut last = Vec::new();
        for seq in 0..50 {
            t += Duration::from_millis(20);
            last = speak(&mut room, t, seq, &levels);
        }
        assert_eq!(room.active_speaker(), Some(1));
        // 1 hears 2 (the loudest other); 2 and 3 hear 1 (loudest, and the speaker). 3's
        // silence reaches nobody; 2 is not sent to 3.
        assert_eq!(heard(&room, &last), vec![(1, 2), (2, 1), (3, 1)]);
        let not_loudest: Vec<OutId> = last
            .iter()
            .filter_map(|o| match o {
                RoomOutput::NotLoudest { out } => Some(*out),
                _ => None,
            })
            .collect();
        assert_eq!(not_loudest.len(), 3, "{last:?}");
        assert!(not_loudest.iter().all(|o| o.kind == MediaKind::Audio));
        assert_eq!(room.loudest(), &[1, 2]);
    }

    #[test]
    fn audio_that_comes_back_continues_its_numbering() {
        let (mut room, t0) = meeting(3, 1, false);
        let mut t = t0;
        let mut seqs: HashMap<OutId, Vec<u64>> = HashMap::new();
        let mut record = |room: &Room, out: &[RoomOutput]| {
            for (o, seq) in forwards(out) {
                if room.track_of(o).is_some_and(|tr| tr.peer == 1) && o.sub == 3 {
                    seqs.entry(o).or_default().push(seq);
                }
            }
        };
        let mut seq = 0;
        // 1 speaks, then falls silent while 2 speaks, then speaks again.
        for (ms, levels) in [
            (1000, [(1, -20), (2, -127), (3, -127)]),
            (2000, [(1, -127), (2, -20), (3, -127)]),
            (2000, [(1, -10), (2, -127), (3, -127)]),
        ] {
            for _ in 0..ms / 20 {
                t += Duration::from_millis(20);
                seq += 1;
                let out = speak(&mut room, t, seq, &levels);
                record(&room, &out);
            }
        }
        let v: Vec<u64> = seqs.into_values().next().expect("3 heard 1");
        // Forwarded in two runs with a pause between, yet without a gap.
        assert!(v.len() > 60 && v.len() < 240, "{}", v.len());
        assert!(v.windows(2).all(|w| w[1] == w[0] + 1), "{v:?}");
    }

    #[test]
    fn a_muted_track_reaches_nobody_and_video_resumes_at_a_keyframe() {
        let (mut room, t0) = meeting(2, 3, true);
        let v1 = TrackId { peer: 1, idx: 101 };
        let a1 = TrackId { peer: 1, idx: 1 };
        let mut out = Vec::new();
        let t1 = t0 + Duration::from_secs(1);
        room.handle_input(t1, packet(v1, 10, true, t1), &mut out);
        room.handle_input(t1, packet(v1, 11, false, t1), &mut out);
        room.handle_input(t1, packet(a1, 5, true, t1), &mut out);
        assert_eq!(forwards(&out).len(), 3, "{out:?}");
        let last_video = forwards(&out)[1].1;
        out.clear();
        for track in [v1, a1] {
            room.handle_input(t1, RoomInput::Mute { track, muted: true }, &mut out);
        }
        assert!(room.is_muted(v1) && room.is_muted(a1));
        assert!(out.is_empty(), "{out:?}");
        for seq in 12..40 {
            room.handle_input(t1, packet(v1, seq, seq == 20, t1), &mut out);
            room.handle_input(t1, packet(a1, seq, true, t1), &mut out);
            // A muted voice does not become the speaker.
            room.handle_input(t1, RoomInput::AudioLevel { peer: 1, level: -5 }, &mut out);
        }
        assert!(forwards(&out).is_empty(), "{out:?}");
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, RoomOutput::Muted { .. }))
                .count(),
            56
        );
        assert_eq!(room.active_speaker(), None);
        out.clear();
        // Unmuted: a keyframe is asked for at once; video waits for it, audio goes on.
        let t2 = t1 + Duration::from_secs(1);
        room.handle_input(
            t2,
            RoomInput::Mute {
                track: v1,
                muted: false,
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![RoomOutput::RequestKeyframe {
                track: v1,
                layer: 0
            }]
        );
        out.clear();
        room.handle_input(t2, packet(v1, 41, false, t2), &mut out);
        assert!(forwards(&out).is_empty(), "{out:?}");
        out.clear();
        room.handle_input(t2, packet(v1, 42, true, t2), &mut out);
        let f = forwards(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, last_video + 1, "no gap for the muted span");
        // Muting what is not a track, or twice, changes nothing.
        out.clear();
        room.handle_input(
            t2,
            RoomInput::Mute {
                track: TrackId { peer: 9, idx: 9 },
                muted: true,
            },
            &mut out,
        );
        room.handle_input(
            t2,
            RoomInput::Mute {
                track: a1,
                muted: true,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    proptest! {
        /// Whatever the levels, no receiver gets more than max_audio_forwarded + 1 voices at
        /// once, never its own, and every outgoing audio stream stays contiguous.
        #[test]
        fn loudest_n_is_bounded_and_contiguous(
            n in 1usize..4,
            steps in prop::collection::vec(prop::collection::vec(-127i8..=0, 5), 1..150),
        ) {
            let (mut room, t0) = meeting(5, n, false);
            let mut t = t0;
            let mut last_seq: HashMap<OutId, u64> = HashMap::new();
            for (i, levels) in steps.iter().enumerate() {
                t += Duration::from_millis(20);
                let who: Vec<(PeerId, i8)> = levels.iter().enumerate().map(|(p, l)| (p as u64 + 1, *l)).collect();
                let out = speak(&mut room, t, i as u64, &who);
                let heard = heard(&room, &out);
                for sub in 1..=5u64 {
                    let voices = heard.iter().filter(|(s, _)| *s == sub).count();
                    prop_assert!(voices <= n + 1, "{sub} hears {voices}");
                    prop_assert!(!heard.contains(&(sub, sub)));
                }
                for (o, seq) in forwards(&out) {
                    if let Some(prev) = last_seq.insert(o, seq) {
                        prop_assert_eq!(seq, prev + 1);
                    }
                }
            }
        }
    }
}
