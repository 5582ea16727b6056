//! The shard's side of cascade links (`crate::cascade`): a link is a member of its room;
//! each of the other site's participants is a stand-in (a ghost: `Role::Relayed`) whose
//! tracks are the link's incoming m-lines. Ghosts are made when the other side announces a
//! participant (`relay`, or `joined`/`participant` from the upstream) or when an m-line names
//! one in its msid, and go when it leaves or the link closes.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use str0m::Candidate;
use str0m::media::Mid;

use super::Shard;
use crate::cascade::UpstreamMsg;
use crate::peer::{self, Link, LinkClient, Meeting, Peer, PeerKind, SessionError, TrackInfo};
use crate::room::{MediaKind, PeerId, Role, RoomInput, TrackId};
use crate::signal::{self, Change, ServerMsg, TrackView};

/// Another site's participant, standing in here.
pub struct Ghost {
    /// The link its media comes over.
    pub link: PeerId,
    pub room: String,
    pub name: String,
    /// Its tracks: the other side's track id, and the index here.
    pub tracks: HashMap<String, u32>,
    pub muted: HashSet<u32>,
}

/// Ids the other side may use (msid tokens, as `signal` makes them).
fn remote_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Shard {
    pub(super) fn is_link(&self, id: PeerId) -> bool {
        self.peers.get(&id).is_some_and(|p| p.link.is_some())
    }

    /// The room of a peer or a ghost.
    pub(super) fn room_of(&self, id: PeerId) -> Option<String> {
        match self.peers.get(&id) {
            Some(p) => Some(p.room.clone()),
            None => self.ghosts.get(&id).map(|g| g.room.clone()),
        }
    }

    /// Whether a published track of that id exists here (a peer's or a ghost's).
    pub(super) fn track_known(&self, t: TrackId) -> bool {
        match self.ghosts.get(&t.peer) {
            Some(g) => g.tracks.values().any(|i| *i == t.idx),
            None => self
                .peers
                .get(&t.peer)
                .is_some_and(|p| p.tracks.values().any(|i| i.idx == t.idx)),
        }
    }

    /// Whether `msg` is about a participant relayed over link `to` (never sent back to it).
    pub(super) fn relayed_over(&self, to: PeerId, msg: &ServerMsg) -> bool {
        if self.ghosts.is_empty() {
            return false;
        }
        let participant = match msg {
            ServerMsg::Participant { participant, .. } | ServerMsg::Speaker { participant } => {
                participant
            }
            ServerMsg::Track { track, .. } => &track.participant,
            _ => return false,
        };
        participant
            .strip_prefix('p')
            .and_then(|n| n.parse::<PeerId>().ok())
            .and_then(|n| self.ghosts.get(&n))
            .is_some_and(|g| g.link == to)
    }

    /// The relaying end of a link: a full-ICE peer on its own socket, a member of the room,
    /// told who is here (`joined`) and offering first (a data channel, so the first offer is
    /// never empty; the room's tracks follow as slots).
    pub(super) fn link_open(
        &mut self,
        now: Instant,
        room_name: &str,
        events: tokio::sync::mpsc::Sender<ServerMsg>,
        client: LinkClient,
    ) -> Result<PeerId, SessionError> {
        // A link relays for this site's participants: with none here (they left while it
        // connected), there is nothing to relay for.
        if !self
            .peers
            .values()
            .any(|p| p.room == room_name && p.link.is_none())
        {
            return Err(SessionError::WrongMedia(
                "nobody of this site is in the room".into(),
            ));
        }
        let mut rtc = self.cfg.factory.client(now);
        let candidate = Candidate::host(client.local, "udp")
            .map_err(|e| SessionError::Refused(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let id = self.next_peer;
        self.next_peer += 1;
        let (ufrag, _) = peer::ice_credentials();
        let local = client.local;
        let socket = std::sync::Arc::clone(&client.socket);
        let mut p = Peer {
            meeting: Some(Box::new(Meeting {
                offered: true,
                ..Meeting::new("cascade".into(), events)
            })),
            link: Some(Box::new(Link {
                client: Some(client),
                ..Link::default()
            })),
            ..Peer::new(id, PeerKind::Cascade, room_name, ufrag, rtc, now)
        };
        let mut api = p.rtc.sdp_api();
        api.add_channel("estuary-cascade".into());
        let Some((offer, pending)) = api.apply() else {
            return Err(SessionError::Internal);
        };
        if let Some(m) = p.meeting.as_deref_mut() {
            m.pending = Some((pending, Vec::new()));
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Err(e) = self.enter_room(now, room_name, id, Role::Member, &mut out) {
            self.out = out;
            return Err(e);
        }
        self.register(p);
        self.link_sockets.insert(local, socket);
        self.outbox.sends.link_src.push(local);
        self.metrics.cascade_links.inc();
        let participants = self.participant_views(room_name, id);
        self.send(
            id,
            ServerMsg::Joined {
                participant: signal::participant_id(id),
                participants,
                tracks: Vec::new(),
            },
        );
        self.send(
            id,
            ServerMsg::Offer {
                sdp: offer.to_sdp_string(),
            },
        );
        self.drained(now, id);
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
        tracing::info!(room = room_name, peer = id, "A cascade link opened.");
        Ok(id)
    }

    /// One message of the upstream SFU to the relaying end of link `id`.
    pub(super) fn upstream(&mut self, id: PeerId, msg: UpstreamMsg) {
        let now = Instant::now();
        if !self.is_link(id) {
            return;
        }
        match msg {
            UpstreamMsg::Offer { sdp } => self.client_offer(now, id, &sdp),
            UpstreamMsg::Answer { sdp } => self.client_answer(now, id, &sdp),
            UpstreamMsg::Joined { participants } => {
                for p in participants {
                    self.ghost_for(now, id, &p.participant, Some(p.name));
                }
            }
            UpstreamMsg::Participant {
                event,
                participant,
                name,
            } => match event.as_str() {
                "joined" => {
                    self.ghost_for(now, id, &participant, Some(name));
                }
                "left" => self.ghost_remove(now, id, &participant),
                _ => {}
            },
            UpstreamMsg::Track { event, track } => match event.as_str() {
                "muted" => self.ghost_mute(now, id, &track, true),
                "unmuted" => self.ghost_mute(now, id, &track, false),
                _ => {}
            },
            UpstreamMsg::Error { code, message } => {
                tracing::debug!(
                    peer = id,
                    code,
                    message,
                    "The upstream SFU refused a link message."
                );
            }
            UpstreamMsg::Other => {}
        }
    }

    /// The ghost of the other side's participant `remote` on link `link`, made (and announced)
    /// if new; `name` names it (a later name is kept only if it had none).
    pub(super) fn ghost_for(
        &mut self,
        now: Instant,
        link: PeerId,
        remote: &str,
        name: Option<String>,
    ) -> Option<PeerId> {
        if !remote_id_ok(remote) {
            tracing::debug!(peer = link, "A cascade link named a participant badly.");
            return None;
        }
        let name: Option<String> = name.map(|n| n.chars().take(signal::MAX_NAME_CHARS).collect());
        let p = self.peers.get(&link)?;
        let known = p.link.as_ref()?.ghosts.get(remote).copied();
        if let Some(g) = known {
            if let (Some(ghost), Some(n)) = (self.ghosts.get_mut(&g), name)
                && ghost.name.is_empty()
            {
                ghost.name = n;
            }
            return Some(g);
        }
        let room_name = p.room.clone();
        let id = self.next_peer;
        self.next_peer += 1;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let joined = match self.rooms.get_mut(&room_name) {
            Some(room) => room.join(now, id, Role::Relayed { via: link }, &mut out),
            None => Err(crate::room::JoinError::RoomFull),
        };
        if let Err(e) = joined {
            self.out = out;
            let refused = self
                .peers
                .get_mut(&link)
                .and_then(|p| p.link.as_deref_mut())
                .map(|l| {
                    l.refused += 1;
                    l.refused
                });
            if refused == Some(1) {
                tracing::info!(room = %room_name, peer = link, error = %e, "Another site's participant could not be relayed here (further ones on this link are not logged).");
            }
            return None;
        }
        let name = name.unwrap_or_default();
        self.ghosts.insert(
            id,
            Ghost {
                link,
                room: room_name.clone(),
                name: name.clone(),
                tracks: HashMap::new(),
                muted: HashSet::new(),
            },
        );
        if let Some(l) = self
            .peers
            .get_mut(&link)
            .and_then(|p| p.link.as_deref_mut())
        {
            l.ghosts.insert(remote.to_owned(), id);
        }
        self.metrics.cascade_participants.inc();
        let msg = ServerMsg::Participant {
            event: Change::Joined,
            participant: signal::participant_id(id),
            name,
        };
        for m in self.members_of(&room_name) {
            self.send(m, msg.clone());
        }
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
        Some(id)
    }

    /// A new incoming m-line of link `link`: a track of the ghost its stream id names.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relayed_track(
        &mut self,
        now: Instant,
        link: PeerId,
        mid: Mid,
        idx: u32,
        kind: MediaKind,
        stream: &str,
        remote_track: &str,
    ) -> Option<TrackId> {
        let owner = self.ghost_for(now, link, stream, None)?;
        let p = self.peers.get_mut(&link)?;
        p.tracks.insert(mid, TrackInfo { idx, kind, owner });
        if let Some(g) = self.ghosts.get_mut(&owner) {
            g.tracks.insert(remote_track.to_owned(), idx);
        }
        Some(TrackId { peer: owner, idx })
    }

    /// The other side's participant `remote` left: its tracks end here.
    pub(super) fn ghost_remove(&mut self, now: Instant, link: PeerId, remote: &str) {
        let Some(gid) = self
            .peers
            .get_mut(&link)
            .and_then(|p| p.link.as_deref_mut())
            .and_then(|l| l.ghosts.remove(remote))
        else {
            return;
        };
        self.drop_ghost(now, gid);
    }

    fn drop_ghost(&mut self, now: Instant, gid: PeerId) {
        let Some((link, room_name, name)) = self
            .ghosts
            .get(&gid)
            .map(|g| (g.link, g.room.clone(), g.name.clone()))
        else {
            return;
        };
        self.metrics.cascade_participants.dec();
        let mut tracks = Vec::new();
        if let Some(p) = self.peers.get_mut(&link) {
            let mids: Vec<Mid> = p
                .tracks
                .iter()
                .filter(|(_, t)| t.owner == gid)
                .map(|(m, _)| *m)
                .collect();
            for mid in mids {
                if let Some(t) = p.tracks.remove(&mid) {
                    tracks.push(t);
                }
                p.ssrc_mid.retain(|_, (m, _)| *m != mid);
            }
        }
        for t in &tracks {
            self.metrics
                .tracks
                .with_label_values(&[t.kind.as_str()])
                .dec();
        }
        // Announced while it is still a stand-in, so that the link it came over is not told
        // (`relayed_over`): that side knows, it said so.
        self.announce_left(&room_name, gid, &tracks, Some(name));
        self.ghosts.remove(&gid);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.leave(now, gid, &mut out);
        }
        self.apply(now, &out, None);
        out.clear();
        self.out = out;
    }

    /// The other side's participant muted or unmuted `remote_track`.
    pub(super) fn ghost_mute(
        &mut self,
        now: Instant,
        link: PeerId,
        remote_track: &str,
        muted: bool,
    ) {
        let found = self
            .ghosts
            .iter_mut()
            .filter(|(_, g)| g.link == link)
            .find_map(|(id, g)| Some((*id, *g.tracks.get(remote_track)?, g)));
        let Some((gid, idx, ghost)) = found else {
            return;
        };
        let changed = if muted {
            ghost.muted.insert(idx)
        } else {
            ghost.muted.remove(&idx)
        };
        if !changed {
            return;
        }
        let room_name = ghost.room.clone();
        let kind = self
            .peers
            .get(&link)
            .and_then(|p| p.tracks.values().find(|t| t.idx == idx && t.owner == gid))
            .map_or(MediaKind::Audio, |t| t.kind);
        let track = TrackId { peer: gid, idx };
        self.room_input(now, &room_name, RoomInput::Mute { track, muted }, None);
        let msg = ServerMsg::Track {
            event: if muted {
                Change::Muted
            } else {
                Change::Unmuted
            },
            track: TrackView {
                track: signal::track_id(gid, idx),
                participant: signal::participant_id(gid),
                kind: kind.as_str(),
                muted,
            },
        };
        for m in self.members_of(&room_name) {
            self.send(m, msg.clone());
        }
    }

    /// Before link `id` is removed: its ghosts leave, its socket is forgotten, its reader
    /// stops.
    pub(super) fn link_closing(&mut self, now: Instant, id: PeerId) {
        // The link stays a link (emptied) for what follows in `remove_peer`.
        let Some(link) = self.peers.get_mut(&id).and_then(|p| p.link.as_deref_mut()) else {
            return;
        };
        let ghosts: Vec<PeerId> = link.ghosts.drain().map(|(_, g)| g).collect();
        let client = link.client.take();
        self.metrics.cascade_links.dec();
        for gid in ghosts {
            self.drop_ghost(now, gid);
        }
        if let Some(c) = client {
            c.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            self.link_sockets.remove(&c.local);
            self.outbox.sends.link_src.retain(|a| *a != c.local);
        }
    }

    /// When nobody of this site is left in `room`, its relaying links close (the upstream's
    /// stand-ins for them go with them).
    pub(super) fn close_idle_links(&mut self, room: &str) {
        let anyone = self
            .peers
            .values()
            .any(|p| p.room == room && p.link.is_none());
        if anyone {
            return;
        }
        let links: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.room == room && p.kind == PeerKind::Cascade)
            .filter(|p| p.link.as_ref().is_some_and(|l| l.client.is_some()))
            .map(|p| p.id)
            .collect();
        for id in links {
            tracing::info!(
                room,
                peer = id,
                "Nobody of this site is left: the cascade link closes."
            );
            self.close_peer(id);
        }
    }
}
