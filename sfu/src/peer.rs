//! One WebRTC peer: its str0m `Rtc` (ICE-lite, RTP mode), what its media lines are for,
//! and the drain that follows every mutation.
//!
//! str0m's contract: after any mutation of an `Rtc` (input, write, keyframe request, SDP),
//! `poll_output` is called until it returns a timeout, before the next mutation. [`drain`]
//! does that, hands every datagram to the socket at once and keeps the events for the shard.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpOffer, SdpPendingOffer};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::{Codec as StrCodec, PayloadParams};
use str0m::media::Rid;
use str0m::media::{Direction, MediaKind as StrKind, Mid, Pt, Rids};
use str0m::net::{Protocol, TcpType};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, IceCreds, Output, Rtc, RtcConfig, RtcError};

use crate::config::Codec;
use crate::room::{MediaKind, PeerId};

/// WHIP publishes, WHEP watches, a meeting participant (WebSocket) does both, and so does a
/// cascade link to another SFU (`cascade.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Whip,
    Whep,
    Meeting,
    Cascade,
}

impl SessionError {
    /// What the client is told (no parser internals).
    pub fn client_text(&self) -> String {
        match self {
            SessionError::BadSdp(_) => "the offer is not valid SDP".into(),
            SessionError::Refused(_) => "the offer cannot be answered".into(),
            other => other.to_string(),
        }
    }
}

impl PeerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Whip => "whip",
            PeerKind::Whep => "whep",
            PeerKind::Meeting => "meeting",
            PeerKind::Cascade => "cascade",
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The parser's detail is logged, never sent back (it can hold memory addresses).
    #[error("the offer is not valid SDP: {0}")]
    BadSdp(String),
    /// str0m's detail is logged, never sent back.
    #[error("the offer cannot be answered: {0}")]
    Refused(String),
    /// Our own check of the offer's m-lines; the text is for the client.
    #[error("{0}")]
    WrongMedia(String),
    #[error("the room is full")]
    RoomFull,
    #[error("too many rooms are open")]
    TooManyRooms,
    #[error("the SFU is overloaded")]
    Overloaded,
    #[error("the WebRTC stack failed on this offer")]
    Internal,
}

/// What the shell knows of one published track.
#[derive(Debug, Clone, Copy)]
pub struct TrackInfo {
    pub idx: u32,
    pub kind: MediaKind,
    /// Whose track it is: the peer itself, or (on a cascade link) the other site's
    /// participant it was relayed for.
    pub owner: PeerId,
}

pub struct Peer {
    pub id: PeerId,
    pub kind: PeerKind,
    pub room: String,
    pub session: String,
    pub ufrag: String,
    pub rtc: Rtc,
    /// When str0m wants its next timeout.
    pub timeout: Instant,
    pub created: Instant,
    pub connected: bool,
    /// Since when ICE has been disconnected, if it is.
    pub disconnected_at: Option<Instant>,
    /// Publishers: the track behind each receiving mid.
    pub tracks: HashMap<Mid, TrackInfo>,
    /// Publishers: which mid and simulcast layer each incoming SSRC belongs to (str0m's
    /// lookup, cached).
    pub ssrc_mid: HashMap<Ssrc, (Mid, u8)>,
    /// Publishers: the simulcast rids of each receiving mid, lowest layer first (empty
    /// without simulcast).
    pub rids: HashMap<Mid, Vec<Rid>>,
    /// Watchers and meeting participants: the sending mid of each of the room's slots.
    pub out_mids: BTreeMap<(MediaKind, u8), Mid>,
    /// Watchers: the payload type to send for a publisher's payload type (`None`: this
    /// watcher did not negotiate that codec).
    pub out_pt: HashMap<(PeerId, Pt), Option<Pt>>,
    /// The last NACK counts str0m reported per mid (its stats are totals): received from
    /// this peer as a watcher, sent to it as a publisher.
    pub nacks: HashMap<Mid, u64>,
    /// Publishers: how many layers of each simulcast track (by index) are paused now.
    pub paused_layers: HashMap<u32, i64>,
    /// Meeting participants (and cascade links): their signaling state.
    pub meeting: Option<Box<Meeting>>,
    /// Cascade links: the other site's participants relayed over it.
    pub link: Option<Box<Link>>,
    /// Set when the peer is to be closed at the next look at timers (its WebSocket could not
    /// take an event).
    pub closing: bool,
    /// Publishers: `[rooms] max_publisher_kbps` enforced on what they send.
    pub policer: Option<Box<Policer>>,
}

/// A publisher's bitrate limits: byte buckets refilled at the limit, [`BURST_SECONDS`] deep. Video
/// (every layer of every video track) gets `[rooms] max_publisher_kbps`; audio its own
/// [`AUDIO_KBPS`], so that video over the limit never takes the voice with it.
pub struct Policer {
    video: governor::DefaultDirectRateLimiter,
    audio: governor::DefaultDirectRateLimiter,
}

/// The most a publisher's audio may send (Opus at its highest stereo rate is 510 kbit/s;
/// speech takes 20 to 64).
pub const AUDIO_KBPS: u64 = 256;

/// How many seconds of its limit a publisher may send at once: a keyframe after a quiet spell
/// (a compliant sender's keyframe of a 720p layer at 300 kbit/s is itself most of a second's
/// worth, and a dropped packet of it costs the whole frame and brings a new keyframe request).
const BURST_SECONDS: u32 = 3;

fn bucket(kbps: u64) -> governor::DefaultDirectRateLimiter {
    let bytes = u32::try_from(kbps.saturating_mul(1000) / 8)
        .unwrap_or(u32::MAX)
        .max(2048);
    let rate = std::num::NonZeroU32::new(bytes).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = rate.saturating_mul(
        std::num::NonZeroU32::new(BURST_SECONDS).unwrap_or(std::num::NonZeroU32::MIN),
    );
    governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
}

impl Policer {
    /// Video at most `kbps` kbit/s over time, [`BURST_SECONDS`]' worth at once.
    pub fn new(kbps: u64) -> Self {
        Self {
            video: bucket(kbps),
            audio: bucket(AUDIO_KBPS),
        }
    }

    /// Whether a packet of `bytes` of `kind` fits now (it is counted if it does).
    pub fn allow(&self, kind: MediaKind, bytes: usize) -> bool {
        let bucket = match kind {
            MediaKind::Audio => &self.audio,
            MediaKind::Video => &self.video,
        };
        let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        match std::num::NonZeroU32::new(n) {
            Some(n) => matches!(bucket.check_n(n), Ok(Ok(()))),
            None => true,
        }
    }
}

/// Adds the publisher's bitrate limit to every video section of an SDP answer (`b=AS`, in
/// kbit/s, after the section's `c=` line as RFC 8866 orders them), for the sender to keep to.
/// One `b=` line only: str0m's parser (and so any str0m-based publisher, the benchmark's
/// among them) takes at most one per section, and `AS` is the type every stack reads.
pub fn cap_bandwidth(sdp: &str, kbps: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut in_media = false;
    let mut capped = false;
    let lines: Vec<&str> = sdp.split("\r\n").collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("m=") {
            in_media = line.starts_with("m=video");
            capped = false;
        }
        // A section's own bandwidth lines are replaced by ours.
        if in_media && line.starts_with("b=") {
            continue;
        }
        out.push_str(line);
        if i + 1 < lines.len() {
            out.push_str("\r\n");
        }
        if in_media && !capped && line.starts_with("c=") {
            out.push_str(&format!("b=AS:{kbps}\r\n"));
            capped = true;
        }
    }
    out
}

impl Peer {
    /// A peer with nothing negotiated on our side yet: no tracks, no slots, no signaling
    /// state, a new session id; its timeout is due at once.
    pub fn new(
        id: PeerId,
        kind: PeerKind,
        room: &str,
        ufrag: String,
        rtc: Rtc,
        now: Instant,
    ) -> Self {
        Self {
            id,
            kind,
            room: room.to_owned(),
            session: random_hex(32),
            ufrag,
            rtc,
            timeout: now,
            created: now,
            connected: false,
            disconnected_at: None,
            tracks: HashMap::new(),
            ssrc_mid: HashMap::new(),
            rids: HashMap::new(),
            out_mids: BTreeMap::new(),
            out_pt: HashMap::new(),
            nacks: HashMap::new(),
            paused_layers: HashMap::new(),
            meeting: None,
            link: None,
            closing: false,
            policer: None,
        }
    }
}

impl Meeting {
    /// A participant's signaling before its first offer.
    pub fn new(name: String, events: tokio::sync::mpsc::Sender<crate::signal::ServerMsg>) -> Self {
        Self {
            name,
            events,
            offered: false,
            pending: None,
            queued: Vec::new(),
            max_height: HashMap::new(),
            muted: std::collections::HashSet::new(),
        }
    }
}

/// A meeting participant's signaling: the WebSocket's queue and the SDP negotiation. The
/// SFU offers only once the client's own first offer is answered, and keeps one offer of its
/// own pending at a time; the slots opened meanwhile wait in `queued`.
pub struct Meeting {
    pub name: String,
    pub events: tokio::sync::mpsc::Sender<crate::signal::ServerMsg>,
    /// The client's first offer was answered.
    pub offered: bool,
    /// Our offer awaiting its answer, and the slots it opens (with their new mids).
    pub pending: Option<(SdpPendingOffer, Vec<SlotChange>)>,
    pub queued: Vec<SlotChange>,
    /// Requested largest heights per track id (kept for layer selection).
    pub max_height: HashMap<String, u32>,
    /// This participant's muted tracks (indexes).
    pub muted: std::collections::HashSet<u32>,
}

/// A cascade link's own state (`cascade.rs`).
#[derive(Default)]
pub struct Link {
    /// The other side's participant ids, and the local participant each stands for here.
    pub ghosts: HashMap<String, PeerId>,
    /// Set on the SFU that connected (the relaying one): its own socket, full ICE, and the
    /// reader thread's stop flag. The other side is an ICE-lite peer like any participant.
    pub client: Option<LinkClient>,
    /// Other-site participants this link named that the room could not take (full): only the
    /// first is logged, so that a hostile other side cannot flood the log.
    pub refused: u64,
}

/// The connecting side of a cascade link: a full-ICE `Rtc` on a socket of its own.
pub struct LinkClient {
    pub socket: Arc<std::net::UdpSocket>,
    pub local: SocketAddr,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// One change to a participant's sending m-lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotChange {
    /// A new m-line for a slot; `mid` is set once added to an offer.
    Open {
        slot: (MediaKind, u8),
        stream: String,
        track: String,
        mid: Option<Mid>,
    },
    /// The slot's m-line goes inactive.
    Close { slot: (MediaKind, u8) },
}

/// Every peer's common WebRTC settings.
#[derive(Clone)]
pub struct RtcFactory {
    pub crypto: Arc<CryptoProvider>,
    pub cert: DtlsCert,
    pub codecs: Vec<Codec>,
    pub public_udp: SocketAddr,
    /// The bandwidth estimator's first estimate for peers the SFU sends to (`None`: no
    /// estimator, no pacing).
    pub bwe_initial: Option<u64>,
    /// The passive ICE-TCP candidate's address, when `[listen] tcp` is set.
    pub public_tcp: Option<SocketAddr>,
    /// `[rooms] max_publisher_kbps`: offered to publishers in answers, enforced per peer.
    pub publisher_kbps: u64,
}

pub fn kind_of(k: StrKind) -> MediaKind {
    match k {
        StrKind::Audio => MediaKind::Audio,
        StrKind::Video => MediaKind::Video,
    }
}

impl RtcFactory {
    /// One crypto provider and one DTLS certificate for the whole process (the certificate's
    /// fingerprint goes into every answer; ECDSA, generated at start).
    pub fn new(
        codecs: Vec<Codec>,
        public_udp: SocketAddr,
        bwe_initial_bps: u64,
        public_tcp: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| anyhow::anyhow!("the DTLS certificate could not be generated"))?;
        Ok(Self {
            crypto,
            cert,
            codecs,
            public_udp,
            bwe_initial: (bwe_initial_bps > 0).then_some(bwe_initial_bps),
            public_tcp,
            publisher_kbps: 8000,
        })
    }

    /// A new `Rtc` that answers `offer` as `kind`; returns it with its answer, its audio and
    /// video m-lines in offer order, and when it wants its first timeout.
    pub fn answer(
        &self,
        now: Instant,
        kind: PeerKind,
        ufrag: &str,
        pass: &str,
        offer: &str,
    ) -> Result<Answered, SessionError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| SessionError::BadSdp(e.to_string()))?;
        // Only meeting participants get a bandwidth estimator (and with it str0m's pacer,
        // which sends at most 1.1x the estimate): a WHEP watcher's stream has no layer to
        // choose unless its publisher simulcasts, and pacing it to an estimate that starts at
        // 600 kbit/s queued a 2.6 Mbit/s watcher for over a second (estuary-bench sfu-vs-janus).
        let mut rtc = self.build(now, ufrag, pass, kind == PeerKind::Meeting)?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SessionError::Refused(e.to_string()))?;
        // Nothing to send yet: no remote address is known before the first STUN request.
        let timeout = drain(&mut rtc, &mut Sends::default(), &mut Vec::new())
            .map_err(|e| SessionError::Refused(e.to_string()))?;
        // WHIP sends only, WHEP receives only: our side of every m-line says so. (str0m's
        // MediaAdded events come only once DTLS is up, so the answer is read instead.)
        let (want, offer_dir, protocol) = match kind {
            PeerKind::Whip => (Direction::RecvOnly, "sendonly", "WHIP"),
            PeerKind::Whep | PeerKind::Meeting | PeerKind::Cascade => {
                (Direction::SendOnly, "recvonly", "WHEP")
            }
        };
        let mut media = Vec::new();
        for line in answer.media_lines.iter().filter(|l| !l.disabled) {
            let mid = line.mid();
            let Some(m) = rtc.media(mid) else { continue };
            if m.direction() != want {
                return Err(SessionError::WrongMedia(format!(
                    "every audio and video m-line must be {offer_dir} for {protocol}"
                )));
            }
            media.push((mid, kind_of(m.kind()), rids_of(m.rids_rx())));
        }
        if media.is_empty() {
            return Err(SessionError::WrongMedia("no audio or video m-line".into()));
        }
        // A publisher is told its bitrate limit.
        let answer = match kind {
            PeerKind::Whip => cap_bandwidth(&answer.to_sdp_string(), self.publisher_kbps),
            _ => answer.to_sdp_string(),
        };
        Ok(Answered {
            rtc,
            answer,
            media,
            timeout,
        })
    }

    /// A new `Rtc` with our settings, its ICE credentials and our candidates: UDP, and the
    /// passive TCP one when ICE-TCP is on.
    pub fn build(
        &self,
        now: Instant,
        ufrag: &str,
        pass: &str,
        sends: bool,
    ) -> Result<Rtc, SessionError> {
        let mut cfg = Rtc::builder()
            .set_crypto_provider(Arc::clone(&self.crypto))
            .set_dtls_cert(self.cert.clone())
            .set_ice_lite(true)
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.to_owned(),
                pass: pass.to_owned(),
            })
            .set_rtp_mode(true)
            // Per-stream counters (NACKs) once a second.
            .set_stats_interval(Some(std::time::Duration::from_secs(1)));
        // Peers we send to get a bandwidth estimator (TWCC), which the layer choice reads.
        if sends && let Some(b) = self.bwe_initial {
            cfg = cfg.enable_bwe(Some(str0m::bwe::Bitrate::bps(b)));
        }
        cfg = self.codecs_of(cfg);
        let mut rtc = cfg.build(now);
        let candidate = Candidate::host(self.public_udp, "udp")
            .map_err(|e| SessionError::Refused(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        if let Some(tcp) = self.public_tcp {
            let candidate = Candidate::builder()
                .tcp()
                .host(tcp)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| SessionError::Refused(format!("local TCP candidate: {e}")))?;
            rtc.add_local_candidate(candidate);
        }
        Ok(rtc)
    }
}

impl RtcFactory {
    /// The configured codecs, and only those.
    fn codecs_of(&self, cfg: RtcConfig) -> RtcConfig {
        let mut cfg = cfg.clear_codecs();
        for c in &self.codecs {
            cfg = match c {
                Codec::Opus => cfg.enable_opus(true, false),
                Codec::Vp8 => cfg.enable_vp8(true),
                Codec::H264 => cfg.enable_h264(true),
                Codec::Vp9 => cfg.enable_vp9(true),
                Codec::Av1 => cfg.enable_av1(true),
            };
        }
        cfg
    }

    /// An `Rtc` of the SFU's own that connects like a client (full ICE, it offers; RTP
    /// mode): the recorder, and the relaying end of a cascade link.
    pub fn client(&self, now: Instant) -> Rtc {
        let cfg = Rtc::builder()
            .set_crypto_provider(Arc::clone(&self.crypto))
            .set_dtls_cert(self.cert.clone())
            .set_rtp_mode(true)
            .set_stats_interval(Some(std::time::Duration::from_secs(1)));
        self.codecs_of(cfg).build(now)
    }
}

/// A new peer's `Rtc` and what it answered.
pub struct Answered {
    pub rtc: Rtc,
    pub answer: String,
    /// Audio and video m-lines (mid, kind, simulcast rids), in offer order.
    pub media: Vec<(Mid, MediaKind, Vec<Rid>)>,
    pub timeout: Instant,
}

/// Datagrams to send, by transport: UDP ones go out in sendmmsg batches, TCP ones to the
/// connection whose remote address they name.
#[derive(Debug, Default)]
pub struct Sends {
    pub udp: Vec<(SocketAddr, Vec<u8>)>,
    pub tcp: Vec<(SocketAddr, Vec<u8>)>,
    /// The local addresses of cascade links' own sockets: a transmit from one of them goes
    /// out on that socket (`link`), not on the shared one.
    pub link_src: Vec<SocketAddr>,
    /// (source, destination, datagram) of cascade links' transmits.
    pub link: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Sends {
    pub fn is_empty(&self) -> bool {
        self.udp.is_empty() && self.tcp.is_empty() && self.link.is_empty()
    }
}

/// Polls `rtc` until it asks for a timeout: datagrams are queued in `outbox` (without a
/// copy), events kept in `events`. Returns when str0m wants the next timeout.
pub fn drain(
    rtc: &mut Rtc,
    outbox: &mut Sends,
    events: &mut Vec<Event>,
) -> Result<Instant, RtcError> {
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => match t.proto {
                Protocol::Udp if outbox.link_src.contains(&t.source) => {
                    outbox
                        .link
                        .push((t.source, t.destination, t.contents.into()));
                }
                Protocol::Udp => outbox.udp.push((t.destination, t.contents.into())),
                // Our only TCP candidate is the passive one: TCP transmits go back on a
                // connection the client opened. (SSL-TCP and TLS are never negotiated.)
                _ => outbox.tcp.push((t.destination, t.contents.into())),
            },
            Output::Event(e) => events.push(e),
        }
    }
}

/// The NAL unit type of an H.264 sequence parameter set.
const H264_SPS: u8 = 7;

/// The codec's clock rate and whether `payload` starts a keyframe (always true for audio,
/// which needs none).
pub fn keyframe_start(params: &PayloadParams, payload: &[u8]) -> bool {
    match params.spec().codec {
        StrCodec::Vp8 => str0m::format::detect_vp8_keyframe(payload),
        // The sequence parameter set that browsers send in a packet of its own (with the
        // PPS) just before an IDR picture starts the keyframe: a switch to this layer that
        // waited for the IDR itself would leave the decoder with the old layer's SPS (a
        // 360-line picture decoded as 720 lines). Janus counts an SPS as a keyframe too.
        StrCodec::H264 => {
            str0m::format::detect_h264_keyframe(payload)
                || str0m::format::detect_h264_nalu(payload, H264_SPS)
        }
        StrCodec::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        StrCodec::Av1 => str0m::format::detect_av1_keyframe(payload),
        _ => true,
    }
}

/// The VP8 picture id and TL0PICIDX of a payload, with the id's width.
pub fn vp8_ids(payload: &[u8]) -> Option<crate::forward::Vp8Ids> {
    let d = str0m::rtp::Vp8Descriptor::parse(payload).ok()?;
    let pid = d.picture_id()?;
    // X bit, then I bit; the picture id's first byte says 15 bits with its top bit.
    let pid_15_bit = payload.get(2).is_some_and(|b| b & 0x80 != 0);
    Some(crate::forward::Vp8Ids {
        pid,
        pid_15_bit,
        tl0: d.tl0_pic_idx(),
    })
}

/// The simulcast rids a receiving m-line was negotiated with, in the order the offer listed
/// them (browsers list `sendEncodings` in order; the meeting page goes from the lowest up).
pub fn rids_of(r: &Rids) -> Vec<Rid> {
    match r {
        Rids::Specific(v) if v.len() > 1 => v.clone(),
        _ => Vec::new(),
    }
}

/// The frame height in a VP8 keyframe's first packet: the payload descriptor (RFC 7741 4.2),
/// then the frame tag (3 bytes), the start code 9d 01 2a, width and height (14 bits each).
pub fn vp8_keyframe_height(payload: &[u8]) -> Option<u32> {
    let b0 = *payload.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        i = 2;
        if x & 0x80 != 0 {
            let m = *payload.get(i)?;
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    let frame = payload.get(i..i + 10)?;
    // A keyframe has bit 0 of the tag clear, and the start code.
    if frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff)).filter(|h| *h > 0)
}

/// The tallest frame a height read from a publisher's bitstream is believed for (16K video):
/// a cropped-away or absurd size is no size at all.
pub const MAX_FRAME_HEIGHT: u32 = 16_384;

/// The frame height (after cropping) in an H.264 keyframe's sequence parameter set, when the
/// packet carries one: as a single NAL unit or inside a STAP-A aggregate (RFC 6184 5.7.1),
/// as browsers send SPS and PPS before an IDR picture. An SPS split across FU-A fragments is
/// not read (encoders keep it whole). h264-reader parses the SPS.
pub fn h264_keyframe_height(payload: &[u8]) -> Option<u32> {
    const SPS: u8 = H264_SPS;
    const STAP_A: u8 = 24;
    let sps_height = |nal: &[u8]| -> Option<u32> {
        let rbsp = h264_reader::rbsp::decode_nal(nal).ok()?;
        let sps = h264_reader::nal::sps::SeqParameterSet::from_bits(
            h264_reader::rbsp::BitReader::new(&*rbsp),
        )
        .ok()?;
        sps.pixel_dimensions()
            .ok()
            .map(|(_, h)| h)
            .filter(|h| (1..=MAX_FRAME_HEIGHT).contains(h))
    };
    let nal_type = payload.first()? & 0x1f;
    match nal_type {
        SPS => sps_height(payload),
        STAP_A => {
            let mut rest = payload.get(1..)?;
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + len)?;
                if nal.first().is_some_and(|b| b & 0x1f == SPS) {
                    return sps_height(nal);
                }
                rest = &rest[2 + len..];
            }
            None
        }
        _ => None,
    }
}

/// A random token of `n` lowercase hex digits (ICE credentials, session ids).
pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Fresh ICE credentials for a peer: a ufrag of 16 hex digits (the demultiplexer's key) and
/// a password of 32.
pub fn ice_credentials() -> (String, String) {
    (random_hex(16), random_hex(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_heights_are_read_and_garbage_is_not() {
        // Descriptor X|S, I with a 15-bit picture id, then a 1280x720 keyframe header.
        let mut p = vec![0x90, 0x80, 0x81, 0x23];
        p.extend_from_slice(&[0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
        assert_eq!(vp8_keyframe_height(&p), Some(720));
        // An interframe (tag bit 0 set) has no size.
        p[4] |= 1;
        assert_eq!(vp8_keyframe_height(&p), None);
        for n in 0..p.len() {
            let _ = vp8_keyframe_height(&p[..n]);
        }
        assert_eq!(vp8_keyframe_height(&[]), None);
    }

    #[test]
    fn answers_carry_the_publishers_limit_in_each_media_section_only() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\nb=AS:30\r\na=mid:0\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n";
        let capped = cap_bandwidth(sdp, 500);
        assert_eq!(capped.matches("b=AS:500\r\n").count(), 1, "{capped}");
        assert_eq!(
            capped.matches("b=").count(),
            2,
            "one line per section: {capped}"
        );
        let video = &capped[capped.find("m=video").expect("video")..];
        assert!(
            video.starts_with("m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:500\r\n")
        );
        assert!(capped.contains("b=AS:30"), "audio keeps its own");
        let data = &capped[capped.find("m=application").expect("data")..];
        assert!(!data.contains("b="), "no limit on data channels");
        let session = &capped[..capped.find("m=").expect("m")];
        assert!(!session.contains("b="), "none at session level");
        assert!(capped.ends_with("a=mid:2\r\n"));
        // Every line of the input is kept, in order.
        let kept: Vec<&str> = capped.lines().filter(|l| *l != "b=AS:500").collect();
        let before: Vec<&str> = sdp.lines().collect();
        assert_eq!(kept, before);
    }

    #[test]
    fn a_str0m_publisher_reads_a_whip_answer_with_the_limit() {
        // The benchmark's str0m peers refused answers with two b= lines in a section.
        let udp = "127.0.0.1:9".parse().expect("addr");
        let codecs = crate::config::MediaConfig::default().codecs;
        let f = RtcFactory::new(codecs, udp, 0, None).expect("factory");
        let now = Instant::now();
        let mut client = f.client(now);
        let mut api = client.sdp_api();
        api.add_media(StrKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(StrKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let answered = f
            .answer(
                now,
                PeerKind::Whip,
                "ufragufrag",
                "passwordpasswordpassword",
                &offer.to_sdp_string(),
            )
            .expect("answered");
        assert!(answered.answer.contains("b=AS:8000"), "{}", answered.answer);
        let answer = str0m::change::SdpAnswer::from_sdp_string(&answered.answer)
            .expect("str0m reads the answer");
        client
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("and accepts it");
    }

    /// SPSs from FFmpeg's libx264 (with emulation-prevention bytes): 1280x720 High, and
    /// 640x360 Baseline (368 lines coded, 8 cropped).
    #[test]
    fn h264_keyframe_heights_are_read_from_the_sps_alone_or_aggregated() {
        let hex = |s: &str| hex::decode(s).expect("hex");
        let high_720 = hex("6764001facd9405005bb0110000003001000000301e0f1831960");
        let base_360 = hex("6742c016d900a02ff970110000030001000003001e0f162e48");
        let pps = hex("68cb83cb20");
        assert_eq!(h264_keyframe_height(&high_720), Some(720));
        assert_eq!(h264_keyframe_height(&base_360), Some(360));
        // STAP-A: header 0x78 (F=0, NRI=3, type 24), then [length][NAL] each.
        let mut stap = vec![0x78];
        for nal in [&pps, &base_360] {
            stap.extend_from_slice(&u16::try_from(nal.len()).expect("short").to_be_bytes());
            stap.extend_from_slice(nal);
        }
        assert_eq!(h264_keyframe_height(&stap), Some(360));
        // A crafted SPS whose cropping leaves no lines (found by fuzzing): no height.
        let no_lines = hex("e73a080e3a4eff262626264eff080e3a4eff2626262626");
        assert_eq!(h264_keyframe_height(&no_lines), None);
        // Not an SPS, or not whole: nothing, and never a panic.
        assert_eq!(h264_keyframe_height(&pps), None);
        assert_eq!(h264_keyframe_height(&[]), None);
        assert_eq!(h264_keyframe_height(&[0x78, 0x00]), None);
        for n in 0..stap.len() {
            let _ = h264_keyframe_height(&stap[..n]);
        }
        for n in 0..high_720.len() {
            let _ = h264_keyframe_height(&high_720[..n]);
        }
    }

    #[test]
    fn a_publisher_over_its_limit_is_cut_to_it() {
        // 80 kbit/s: 10,000 bytes a second, three seconds' worth as a burst at once; then
        // nothing until refilled.
        let p = Policer::new(80);
        let sent = (0..60).filter(|_| p.allow(MediaKind::Video, 1000)).count();
        assert_eq!(sent, 30);
        assert!(!p.allow(MediaKind::Video, 1000));
        // Audio has its own bucket: video over the limit does not silence the voice.
        assert!(p.allow(MediaKind::Audio, 100));
        let audio = (0..200).filter(|_| p.allow(MediaKind::Audio, 1000)).count();
        assert_eq!(
            audio, 95,
            "256 kbit/s: 96,000 bytes at once, 100 of them taken"
        );
    }
}
