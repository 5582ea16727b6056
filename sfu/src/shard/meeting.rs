//! The shard's side of the meeting protocol (`signal.rs`): a participant's `Rtc` is made at
//! `join`, the client's offers are answered, and the slots the room opens for it become
//! m-lines of the SFU's own offers, one pending at a time (glare: a client offer that
//! arrives while ours is pending is answered first, and ours is made again afterwards).

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind as StrKind};

use super::Shard;
use crate::peer::{self, Link, Meeting, Peer, PeerKind, SessionError, SlotChange, TrackInfo};
use crate::room::{MediaKind, PeerId, Role, Room, RoomInput, TrackId};
use crate::signal::{self, Change, ClientMsg, ErrorCode, ParticipantView, ServerMsg, TrackView};

impl Shard {
    /// A participant joins `room_name`: a new `Rtc` (no offer yet), a member of the room,
    /// `joined` to it and `participant joined` to the others.
    pub(super) fn join_meeting(
        &mut self,
        now: Instant,
        room_name: &str,
        name: String,
        events: tokio::sync::mpsc::Sender<ServerMsg>,
        link: bool,
    ) -> Result<PeerId, SessionError> {
        self.room_admits(room_name)?;
        let (ufrag, pass) = peer::ice_credentials();
        // A cascade link gets no bandwidth estimator: its pacer would hold the relayed
        // streams to an estimate that starts low (see `RtcFactory::answer`).
        let rtc = self.cfg.factory.build(now, &ufrag, &pass, !link)?;
        let id = self.next_peer;
        self.next_peer += 1;
        let name: String = name.chars().take(signal::MAX_NAME_CHARS).collect();
        let kind = if link {
            PeerKind::Cascade
        } else {
            PeerKind::Meeting
        };
        let p = Peer {
            meeting: Some(Box::new(Meeting::new(name.clone(), events))),
            link: link.then(|| Box::new(Link::default())),
            policer: (!link).then(|| Box::new(peer::Policer::new(self.cfg.factory.publisher_kbps))),
            ..Peer::new(id, kind, room_name, ufrag, rtc, now)
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Err(e) = self.enter_room(now, room_name, id, Role::Member, &mut out) {
            self.out = out;
            return Err(e);
        }
        self.register(p);
        // `joined` first, so that the slots queued below are offered after it.
        let participants = self.participant_views(room_name, id);
        let tracks = self.track_views(room_name);
        self.send(
            id,
            ServerMsg::Joined {
                participant: signal::participant_id(id),
                participants,
                tracks,
            },
        );
        // A newcomer is told who speaks now (the next change may be long in coming).
        if let Some(speaker) = self.rooms.get(room_name).and_then(Room::active_speaker) {
            self.send(
                id,
                ServerMsg::Speaker {
                    participant: signal::participant_id(speaker),
                },
            );
        }
        for m in self.members_of(room_name) {
            if m != id && !link {
                self.send(
                    m,
                    ServerMsg::Participant {
                        event: Change::Joined,
                        participant: signal::participant_id(id),
                        name: name.clone(),
                    },
                );
            }
        }
        if link {
            self.metrics.cascade_links.inc();
        }
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
        tracing::info!(room = room_name, peer = id, "A meeting participant joined.");
        Ok(id)
    }

    /// One message of a joined participant.
    pub(super) fn signal(&mut self, id: PeerId, msg: ClientMsg) {
        let now = Instant::now();
        if self.peers.get(&id).is_none_or(|p| p.meeting.is_none()) {
            return;
        }
        match msg {
            ClientMsg::Join { .. } => self.send(
                id,
                ServerMsg::error(ErrorCode::AlreadyJoined, "already joined"),
            ),
            ClientMsg::Offer { sdp } => self.client_offer(now, id, &sdp),
            ClientMsg::Answer { sdp } => self.client_answer(now, id, &sdp),
            ClientMsg::Subscribe { track, max_height } => {
                let known = signal::parse_track_id(&track)
                    .is_some_and(|(peer, idx)| self.track_known(TrackId { peer, idx }));
                if !known {
                    self.send(id, ServerMsg::error(ErrorCode::UnknownTrack, track));
                    return;
                }
                let Some((peer, idx)) = signal::parse_track_id(&track) else {
                    return;
                };
                if let Some(m) = self.meeting_mut(id) {
                    match max_height {
                        Some(h) => m.max_height.insert(track, h),
                        None => m.max_height.remove(&track),
                    };
                }
                let Some(room_name) = self.peers.get(&id).map(|p| p.room.clone()) else {
                    return;
                };
                let input = RoomInput::MaxHeight {
                    sub: id,
                    track: TrackId { peer, idx },
                    max_height,
                };
                self.room_input(now, &room_name, input, None);
            }
            ClientMsg::Mute { track, muted } if self.is_link(id) => {
                self.ghost_mute(now, id, &track, muted);
            }
            ClientMsg::Mute { track, muted } => self.mute(now, id, &track, muted),
            ClientMsg::Relay {
                event,
                participant,
                name,
            } => {
                if !self.is_link(id) {
                    self.send(
                        id,
                        ServerMsg::error(ErrorCode::BadMessage, "relay is for cascade links"),
                    );
                    return;
                }
                match event {
                    signal::RelayEvent::Joined => {
                        self.ghost_for(now, id, &participant, Some(name));
                    }
                    signal::RelayEvent::Left => self.ghost_remove(now, id, &participant),
                }
            }
            ClientMsg::Leave {} => self.close_peer(id),
            ClientMsg::Ping {} => self.send(id, ServerMsg::Pong),
        }
    }

    pub(super) fn meeting_mut(&mut self, id: PeerId) -> Option<&mut Meeting> {
        self.peers.get_mut(&id)?.meeting.as_deref_mut()
    }

    fn mute(&mut self, now: Instant, id: PeerId, track: &str, muted: bool) {
        let own = signal::parse_track_id(track)
            .filter(|(peer, _)| *peer == id)
            .and_then(|(_, idx)| {
                let p = self.peers.get(&id)?;
                p.tracks.values().find(|t| t.idx == idx).copied()
            });
        let Some(info) = own else {
            self.send(
                id,
                ServerMsg::error(ErrorCode::UnknownTrack, "not one of your tracks"),
            );
            return;
        };
        let Some(m) = self.meeting_mut(id) else {
            return;
        };
        let changed = if muted {
            m.muted.insert(info.idx)
        } else {
            m.muted.remove(&info.idx)
        };
        if !changed {
            return;
        }
        // The room stops (or resumes) forwarding it; a video track resumes at a keyframe.
        if let Some(room_name) = self.peers.get(&id).map(|p| p.room.clone()) {
            let input = RoomInput::Mute {
                track: TrackId {
                    peer: id,
                    idx: info.idx,
                },
                muted,
            };
            self.room_input(now, &room_name, input, None);
        }
        let view = TrackView {
            track: track.to_owned(),
            participant: signal::participant_id(id),
            kind: info.kind.as_str(),
            muted,
        };
        let event = if muted {
            Change::Muted
        } else {
            Change::Unmuted
        };
        self.broadcast_except(id, &ServerMsg::Track { event, track: view });
    }

    /// The client's offer (to publish): answered; the m-lines it sends on become tracks. A
    /// pending offer of ours is dropped and made again after.
    pub(super) fn client_offer(&mut self, now: Instant, id: PeerId, sdp: &str) {
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "A meeting offer is not valid SDP.");
                self.send(
                    id,
                    ServerMsg::error(ErrorCode::BadSdp, "the offer is not valid SDP"),
                );
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        // The relaying end of a link is the impolite side: the upstream drops its own offer
        // when ours arrives, so theirs is ignored while ours is pending.
        if p.link.as_ref().is_some_and(|l| l.client.is_some())
            && p.meeting.as_ref().is_some_and(|m| m.pending.is_some())
        {
            tracing::debug!(peer = id, "A crossing offer on a cascade link is ignored.");
            return;
        }
        if let Some(m) = p.meeting.as_deref_mut()
            && let Some((_, changes)) = m.pending.take()
        {
            // Glare: ours is invalidated by accepting theirs; its changes go back first.
            let mut again: Vec<SlotChange> = changes
                .into_iter()
                .map(|c| match c {
                    SlotChange::Open {
                        slot,
                        stream,
                        track,
                        ..
                    } => SlotChange::Open {
                        slot,
                        stream,
                        track,
                        mid: None,
                    },
                    close => close,
                })
                .collect();
            again.append(&mut m.queued);
            m.queued = again;
        }
        let answer = match p.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "A meeting offer was refused.");
                self.send(
                    id,
                    ServerMsg::error(ErrorCode::BadSdp, "the offer cannot be answered"),
                );
                self.drained(now, id);
                return;
            }
        };
        // The m-lines the client sends on (our side receives) that are new are its tracks.
        let ours: HashSet<_> = p.out_mids.values().copied().collect();
        let mut added = Vec::new();
        let mut relayed = Vec::new();
        for line in answer.media_lines.iter().filter(|l| !l.disabled) {
            let mid = line.mid();
            if ours.contains(&mid) || p.tracks.contains_key(&mid) {
                continue;
            }
            let Some(media) = p.rtc.media(mid) else {
                continue;
            };
            if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) {
                continue;
            }
            let kind = match media.kind() {
                StrKind::Audio => MediaKind::Audio,
                StrKind::Video => MediaKind::Video,
            };
            let rids = peer::rids_of(media.rids_rx());
            let idx = self.next_track;
            self.next_track += 1;
            if p.link.is_some() {
                // Another site's track: its stream id names its participant there.
                relayed.push((
                    mid,
                    idx,
                    kind,
                    media.stream_id().to_owned(),
                    media.track_id().to_owned(),
                ));
                continue;
            }
            p.tracks.insert(
                mid,
                TrackInfo {
                    idx,
                    kind,
                    owner: id,
                },
            );
            added.push((TrackId { peer: id, idx }, kind, super::layer_count(&rids)));
            if !rids.is_empty() {
                p.rids.insert(mid, rids);
            }
        }
        if let Some(m) = p.meeting.as_deref_mut()
            && !m.offered
        {
            m.offered = true;
            p.created = now;
        }
        // A participant is told its bitrate limit; a link is not limited.
        let sdp = match p.link {
            Some(_) => answer.to_sdp_string(),
            None => peer::cap_bandwidth(&answer.to_sdp_string(), self.cfg.factory.publisher_kbps),
        };
        self.send(id, ServerMsg::Answer { sdp });
        self.drained(now, id);
        for (mid, idx, kind, stream, remote_track) in relayed {
            if let Some(track) = self.relayed_track(now, id, mid, idx, kind, &stream, &remote_track)
            {
                added.push((track, kind, 1));
            }
        }
        let room_name = match self.peers.get(&id) {
            Some(p) => p.room.clone(),
            None => return,
        };
        // All of the offer's tracks at once: each other participant gets one offer for them.
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Some(room) = self.rooms.get_mut(&room_name) {
            for &(track, kind, layers) in &added {
                self.metrics
                    .tracks
                    .with_label_values(&[kind.as_str()])
                    .inc();
                let input = RoomInput::TrackAdded {
                    track,
                    kind,
                    layers,
                };
                room.handle_input(now, input, &mut out);
            }
        }
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
        let added: Vec<(TrackId, MediaKind)> = added.iter().map(|a| (a.0, a.1)).collect();
        self.announce_tracks(id, &added);
        self.negotiate(now, id);
    }

    /// The answer to our pending offer: its new m-lines get their slots.
    pub(super) fn client_answer(&mut self, now: Instant, id: PeerId, sdp: &str) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some((pending, changes)) = p.meeting.as_deref_mut().and_then(|m| m.pending.take())
        else {
            self.send(
                id,
                ServerMsg::error(ErrorCode::NoPendingOffer, "no offer of ours is pending"),
            );
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "A meeting answer is not valid SDP.");
                self.send(
                    id,
                    ServerMsg::error(ErrorCode::BadSdp, "the answer is not valid SDP"),
                );
                return;
            }
        };
        if let Err(e) = p.rtc.sdp_api().accept_answer(pending, answer) {
            tracing::debug!(peer = id, error = %e, "A meeting answer was refused.");
            self.send(
                id,
                ServerMsg::error(ErrorCode::BadSdp, "the answer cannot be accepted"),
            );
            self.drained(now, id);
            return;
        }
        for c in changes {
            match c {
                SlotChange::Open {
                    slot,
                    mid: Some(mid),
                    ..
                } => {
                    p.out_mids.insert(slot, mid);
                }
                SlotChange::Open { .. } => {}
                SlotChange::Close { slot } => {
                    p.out_mids.remove(&slot);
                }
            }
        }
        self.drained(now, id);
        self.negotiate(now, id);
    }

    /// Queues a change of `sub`'s sending m-lines, offered once the outputs being applied are
    /// (one offer for all the changes of one input).
    pub(super) fn queue_slot(&mut self, sub: PeerId, change: SlotChange) {
        let Some(p) = self.peers.get_mut(&sub) else {
            return;
        };
        let Some(m) = p.meeting.as_deref_mut() else {
            return;
        };
        if let SlotChange::Close { slot } = &change {
            // A slot that was never offered needs no m-line at all.
            let before = m.queued.len();
            m.queued
                .retain(|c| !matches!(c, SlotChange::Open { slot: s, .. } if s == slot));
            if m.queued.len() != before {
                return;
            }
        }
        m.queued.push(change);
        if !self.to_negotiate.contains(&sub) {
            self.to_negotiate.push(sub);
        }
    }

    /// Makes our next offer, if the client's first offer is answered, none of ours is
    /// pending, and changes are queued.
    pub(super) fn negotiate(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(m) = p.meeting.as_deref_mut() else {
            return;
        };
        if !m.offered || m.pending.is_some() || m.queued.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        let mut keep = Vec::new();
        let mut api = p.rtc.sdp_api();
        for c in m.queued.drain(..) {
            match c {
                SlotChange::Open {
                    slot,
                    stream,
                    track,
                    ..
                } => {
                    let kind = match slot.0 {
                        MediaKind::Audio => StrKind::Audio,
                        MediaKind::Video => StrKind::Video,
                    };
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(stream.clone()),
                        Some(track.clone()),
                        None,
                    );
                    changes.push(SlotChange::Open {
                        slot,
                        stream,
                        track,
                        mid: Some(mid),
                    });
                }
                SlotChange::Close { slot } => match p.out_mids.get(&slot) {
                    Some(mid) => {
                        api.set_direction(*mid, Direction::Inactive);
                        changes.push(SlotChange::Close { slot });
                    }
                    // Its m-line is in no answered offer yet: closed after the next one.
                    None => keep.push(SlotChange::Close { slot }),
                },
            }
        }
        m.queued = keep;
        match api.apply() {
            Some((offer, pending)) => {
                m.pending = Some((pending, changes));
                self.send(
                    id,
                    ServerMsg::Offer {
                        sdp: offer.to_sdp_string(),
                    },
                );
            }
            None => {
                // Direct changes only (nothing to negotiate): the slots are gone already.
                for c in changes {
                    if let SlotChange::Close { slot } = c {
                        p.out_mids.remove(&slot);
                    }
                }
            }
        }
        self.drained(now, id);
    }

    /// Polls a peer after a change of its SDP.
    pub(super) fn drained(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut events = Vec::new();
        let outbox = &mut self.outbox.sends;
        let result = catch_unwind(AssertUnwindSafe(|| {
            peer::drain(&mut p.rtc, outbox, &mut events)
        }));
        self.after_drain(now, id, result, &mut events);
    }

    /// Sends one event to a participant; one that cannot take it is closed.
    pub(super) fn send(&mut self, id: PeerId, msg: ServerMsg) {
        // A link is never told about the participants it relays itself.
        if self.relayed_over(id, &msg) {
            return;
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(m) = p.meeting.as_deref() else {
            return;
        };
        match m.events.try_send(msg) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                if !p.closing {
                    tracing::info!(
                        peer = id,
                        "A meeting participant does not read its events; it is closed."
                    );
                }
                p.closing = true;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                if !p.closing {
                    tracing::info!(
                        peer = id,
                        "A meeting participant's WebSocket is gone; it is closed."
                    );
                }
                p.closing = true;
            }
        }
    }

    fn broadcast_except(&mut self, id: PeerId, msg: &ServerMsg) {
        let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) else {
            return;
        };
        for m in self.members_of(&room) {
            if m != id {
                self.send(m, msg.clone());
            }
        }
    }

    pub(super) fn members_of(&self, room: &str) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.room == room && p.meeting.is_some())
            .map(|p| p.id)
            .collect();
        v.sort_unstable();
        v
    }

    /// The room's participants as `joined` shows them to `to`: its members and other sites'
    /// participants, not cascade links, not `to` itself, not those relayed over `to`.
    pub(super) fn participant_views(&self, room: &str, to: PeerId) -> Vec<ParticipantView> {
        let mut v: Vec<(PeerId, String)> = self
            .peers
            .values()
            .filter(|p| p.room == room && p.id != to && p.link.is_none())
            .filter_map(|p| Some((p.id, p.meeting.as_ref()?.name.clone())))
            .collect();
        v.extend(
            self.ghosts
                .iter()
                .filter(|(_, g)| g.room == room && g.link != to)
                .map(|(id, g)| (*id, g.name.clone())),
        );
        v.sort_unstable();
        v.into_iter()
            .map(|(id, name)| ParticipantView {
                participant: signal::participant_id(id),
                name,
            })
            .collect()
    }

    fn track_views(&self, room: &str) -> Vec<TrackView> {
        let mut v: Vec<(TrackId, TrackView)> = Vec::new();
        for p in self.peers.values().filter(|p| p.room == room) {
            for t in p.tracks.values() {
                let muted = match self.ghosts.get(&t.owner) {
                    Some(g) => g.muted.contains(&t.idx),
                    None => p.meeting.as_ref().is_some_and(|m| m.muted.contains(&t.idx)),
                };
                v.push((
                    TrackId {
                        peer: t.owner,
                        idx: t.idx,
                    },
                    TrackView {
                        track: signal::track_id(t.owner, t.idx),
                        participant: signal::participant_id(t.owner),
                        kind: t.kind.as_str(),
                        muted,
                    },
                ));
            }
        }
        v.sort_by_key(|(t, _)| *t);
        v.into_iter().map(|(_, view)| view).collect()
    }

    /// `track added` for `publisher`'s new tracks, to every participant (the publisher too:
    /// so it learns its own track ids, which `mute` names).
    pub(super) fn announce_tracks(&mut self, publisher: PeerId, added: &[(TrackId, MediaKind)]) {
        let Some(room) = self.peers.get(&publisher).map(|p| p.room.clone()) else {
            return;
        };
        let members = self.members_of(&room);
        for &(t, kind) in added {
            let msg = ServerMsg::Track {
                event: Change::Added,
                track: TrackView {
                    track: signal::track_id(t.peer, t.idx),
                    participant: signal::participant_id(t.peer),
                    kind: kind.as_str(),
                    muted: false,
                },
            };
            for &m in &members {
                self.send(m, msg.clone());
            }
        }
    }

    /// `speaker` to every participant of the speaker's room.
    pub(super) fn announce_speaker(&mut self, speaker: PeerId) {
        let Some(room) = self.room_of(speaker) else {
            return;
        };
        let msg = ServerMsg::Speaker {
            participant: signal::participant_id(speaker),
        };
        for m in self.members_of(&room) {
            self.send(m, msg.clone());
        }
    }

    /// `track removed` for each of a removed peer's tracks, then `participant left`.
    pub(super) fn announce_gone(&mut self, gone: &Peer) {
        let tracks: Vec<TrackInfo> = gone.tracks.values().copied().collect();
        let name = gone.meeting.as_deref().map(|m| m.name.clone());
        self.announce_left(&gone.room, gone.id, &tracks, name);
    }

    /// `track removed` for each of `tracks`, then `participant left` when `name` is given, to
    /// every member of `room` but `gone`.
    pub(super) fn announce_left(
        &mut self,
        room: &str,
        gone: PeerId,
        tracks: &[TrackInfo],
        name: Option<String>,
    ) {
        let members: Vec<PeerId> = self
            .members_of(room)
            .into_iter()
            .filter(|m| *m != gone)
            .collect();
        let mut tracks = tracks.to_vec();
        tracks.sort_by_key(|t| t.idx);
        for t in tracks {
            let msg = ServerMsg::Track {
                event: Change::Removed,
                track: TrackView {
                    track: signal::track_id(gone, t.idx),
                    participant: signal::participant_id(gone),
                    kind: t.kind.as_str(),
                    muted: false,
                },
            };
            for &m in &members {
                self.send(m, msg.clone());
            }
        }
        if let Some(name) = name {
            let msg = ServerMsg::Participant {
                event: Change::Left,
                participant: signal::participant_id(gone),
                name,
            };
            for &m in &members {
                self.send(m, msg.clone());
            }
        }
    }
}
