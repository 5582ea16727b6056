//! One room's forwarding policy: who is in it, which tracks are published, which track each
//! watcher's outgoing stream carries, and when a publisher is asked for a keyframe. Pure:
//! `(now, input)` in, outputs out; no str0m `Rtc`, no socket, no clock, no payload bytes.
//!
//! A watcher (a WHEP session) brings a fixed number of receiving slots per kind (its offer's
//! `recvonly` m-lines). Every published track goes to every watcher that has a free slot of
//! its kind, oldest track first; when a track ends, its slots take the next track nobody in
//! them carries yet. Each slot has one [`Forwarder`], so its numbering stays continuous when
//! the track in it changes, and the change waits for a keyframe (requested from the
//! publisher, at most once per `keyframe_interval_min` per track).
//!
//! Audio: each receiver gets the audio of the `max_audio_forwarded` loudest other publishers
//! (ranked by `speaker.rs` every [`RANK_INTERVAL`]) and of the active speaker; the rest is
//! not sent to it. A muted track is sent to nobody. Either way the slot's forwarder is
//! interrupted, so the receiver sees no gap in its sequence numbers when sending resumes
//! (video resumes at a keyframe, requested at unmute).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::forward::{Forwarder, InPacket, OutPacket, SourceKey, Verdict};
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
    fn source_key(self) -> SourceKey {
        (self.peer << 32) | u64::from(self.idx)
    }
}

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
    /// each in a slot of its own opened for it (the shell adds an m-line per slot).
    Member,
}

impl Role {
    fn publishes(self) -> bool {
        matches!(self, Role::Publisher | Role::Member)
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
    /// A track of a participant who joined as a publisher.
    TrackAdded { track: TrackId, kind: MediaKind },
    /// One incoming RTP packet of `track`, as the policy sees it (no payload).
    Packet { track: TrackId, packet: InPacket },
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
    /// Ask the publisher of `track` for a keyframe (PLI).
    RequestKeyframe { track: TrackId },
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
    /// An audio packet was not sent on `out`: its publisher is neither among the loudest
    /// `max_audio_forwarded` others nor the active speaker.
    NotLoudest { out: OutId },
    /// A packet of a muted track was sent to nobody.
    Muted { track: TrackId },
}

struct Slot {
    track: Option<TrackId>,
    forwarder: Forwarder,
}

struct Participant {
    role: Role,
    /// Receiving slots by kind (watchers).
    slots: BTreeMap<MediaKind, Vec<Slot>>,
}

/// One room.
pub struct Room {
    limits: Limits,
    participants: BTreeMap<PeerId, Participant>,
    /// Published tracks, oldest first (track ids grow).
    tracks: BTreeMap<TrackId, MediaKind>,
    last_keyframe_request: HashMap<TrackId, Instant>,
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
                    .map(|i| Slot {
                        track: None,
                        forwarder: Forwarder::new(
                            self.first_seq.wrapping_add(u16::from(i) * 1000) & 0x7fff,
                        ),
                    })
                    .collect();
                slots.insert(kind, v);
            }
        }
        self.participants.insert(peer, Participant { role, slots });
        if role == Role::Member {
            let tracks: Vec<(TrackId, MediaKind)> = self
                .tracks
                .iter()
                .filter(|(t, _)| t.peer != peer)
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
            self.last_keyframe_request.remove(&t);
            self.muted.remove(&t);
        }
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
            RoomInput::TrackAdded { track, kind } => {
                let is_publisher = self
                    .participants
                    .get(&track.peer)
                    .is_some_and(|p| p.role.publishes());
                if is_publisher && !self.tracks.contains_key(&track) {
                    self.tracks.insert(track, kind);
                    // A new voice is ranked at its first packet.
                    self.ranked_at = None;
                    let members: Vec<PeerId> = self
                        .participants
                        .iter()
                        .filter(|(id, p)| p.role == Role::Member && **id != track.peer)
                        .map(|(id, _)| *id)
                        .collect();
                    for m in members {
                        self.open_slot(now, m, track, kind, out);
                    }
                    self.assign(now, out);
                }
            }
            RoomInput::Packet { track, packet } => self.packet(now, track, &packet, out),
            RoomInput::KeyframeRequest { out: o } => {
                if let Some(track) = self.track_of(o) {
                    self.request_keyframe(now, track, out);
                }
            }
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
            self.request_keyframe(now, track, out);
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

    fn packet(&mut self, now: Instant, track: TrackId, p: &InPacket, out: &mut Vec<RoomOutput>) {
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
        let source = track.source_key();
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
            self.request_keyframe(now, track, out);
        }
    }

    fn request_keyframe(&mut self, now: Instant, track: TrackId, out: &mut Vec<RoomOutput>) {
        if self.muted.contains(&track) {
            // Nothing of it is sent: a keyframe is asked for at unmute.
            return;
        }
        if self.tracks.get(&track) != Some(&MediaKind::Video) {
            return;
        }
        let last = self.last_keyframe_request.get(&track).copied();
        if last
            .is_some_and(|t| now.saturating_duration_since(t) < self.limits.keyframe_interval_min)
        {
            out.push(RoomOutput::KeyframeThrottled { track });
            return;
        }
        self.last_keyframe_request.insert(track, now);
        out.push(RoomOutput::RequestKeyframe { track });
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
        let mut forwarder = Forwarder::new(first_seq.wrapping_add(i as u16 * 1000) & 0x7fff);
        forwarder.select(Some(track.source_key()));
        slots.push(Slot {
            track: Some(track),
            forwarder,
        });
        out.push(RoomOutput::OpenSlot {
            out: OutId {
                sub,
                kind,
                slot: i as u8,
            },
            track,
        });
        self.request_keyframe(now, track, out);
    }

    /// Fills every free slot of a watcher with the oldest track of its kind that it does not
    /// receive yet, and asks for keyframes for the video tracks newly placed. (A member's
    /// slots are opened for one track each and never refilled.)
    fn assign(&mut self, now: Instant, out: &mut Vec<RoomOutput>) {
        let mut wanted = Vec::new();
        for part in self
            .participants
            .values_mut()
            .filter(|p| p.role != Role::Member)
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
                    slots[i].forwarder.select(Some(t.source_key()));
                    if *kind == MediaKind::Video {
                        wanted.push(t);
                    }
                }
            }
        }
        wanted.sort();
        wanted.dedup();
        for t in wanted {
            self.request_keyframe(now, t, out);
        }
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
            room.handle_input(t0, RoomInput::TrackAdded { track: t, kind }, &mut out);
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
            },
            &mut out,
        );
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: video,
                kind: MediaKind::Video,
            },
            &mut out,
        );
        assert_eq!(out, vec![RoomOutput::RequestKeyframe { track: video }]);
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
            Some(&RoomOutput::RequestKeyframe { track: video })
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
            },
            &mut out,
        );
        room.handle_input(
            t0,
            RoomInput::TrackAdded {
                track: v2,
                kind: MediaKind::Video,
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
        assert_eq!(out, vec![RoomOutput::RequestKeyframe { track: v2 }]);
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
        assert_eq!(out, vec![RoomOutput::RequestKeyframe { track: v1 }]);
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
                    2 => { next_idx += 1; room.handle_input(t0, RoomInput::TrackAdded { track: TrackId { peer, idx: next_idx }, kind: if flag { MediaKind::Video } else { MediaKind::Audio } }, &mut out); }
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
}
