//! The SFU's metrics, pre-registered with bounded labels: `estuary_sfu_<name>_<unit>`.
//!
//! The media threads do not touch these shared handles per packet: each keeps
//! [`LocalCounters`] (plain numbers) and flushes them here about once a second.

use estuary_common::metrics::{must, register_all};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::room::MediaKind;

/// Why a datagram or packet was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN, DTLS or RTP/RTCP, or a STUN message that does not parse.
    Garbage,
    /// DTLS or RTP from an address no peer's STUN came from.
    UnknownSource,
    /// STUN for an ICE ufrag that is none of ours.
    UnknownUfrag,
    /// The owning shard's queue was full.
    ShardQueueFull,
    /// The peer it was routed to refused it (failed STUN integrity, unexpected address).
    PeerRefused,
    /// A media packet no outgoing stream took (no watcher, waiting for a keyframe, unknown
    /// SSRC or codec).
    NotForwarded,
    /// The kernel refused to send it (sendmmsg failed for its destination).
    SendFailed,
    /// For an ICE-TCP connection whose write queue was full (the connection is closed).
    TcpQueueFull,
    /// For an ICE-TCP address with no open connection (it closed meanwhile).
    TcpNoConnection,
    /// An audio packet not sent to one participant: its publisher is neither among the
    /// loudest `[rooms] max_audio_forwarded` nor the active speaker (one per receiver).
    AudioNotLoudest,
    /// A packet of a muted track (once per packet, whoever would have received it).
    Muted,
    /// A publisher's packet over `[rooms] max_publisher_kbps`.
    OverBitrate,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Garbage,
        DropReason::UnknownSource,
        DropReason::UnknownUfrag,
        DropReason::ShardQueueFull,
        DropReason::PeerRefused,
        DropReason::NotForwarded,
        DropReason::SendFailed,
        DropReason::TcpQueueFull,
        DropReason::TcpNoConnection,
        DropReason::AudioNotLoudest,
        DropReason::Muted,
        DropReason::OverBitrate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Garbage => "garbage",
            DropReason::UnknownSource => "unknown_source",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::ShardQueueFull => "shard_queue_full",
            DropReason::PeerRefused => "peer_refused",
            DropReason::NotForwarded => "not_forwarded",
            DropReason::SendFailed => "send_failed",
            DropReason::TcpQueueFull => "tcp_queue_full",
            DropReason::TcpNoConnection => "tcp_no_connection",
            DropReason::AudioNotLoudest => "audio_not_loudest",
            DropReason::Muted => "muted",
            DropReason::OverBitrate => "over_bitrate",
        }
    }
}

impl From<crate::demux::Drop> for DropReason {
    fn from(d: crate::demux::Drop) -> Self {
        match d {
            crate::demux::Drop::Garbage => DropReason::Garbage,
            crate::demux::Drop::UnknownSource => DropReason::UnknownSource,
            crate::demux::Drop::UnknownUfrag => DropReason::UnknownUfrag,
        }
    }
}

/// Why a WHIP/WHEP request was refused (the `reason` label).
pub const REFUSALS: [&str; 10] = [
    "bad_sdp",
    "bad_room",
    "no_token",
    "bad_token",
    "wrong_type",
    "too_big",
    "room_full",
    "too_many_rooms",
    "overloaded",
    "draining",
];

/// WHIP (publishers) and WHEP (watchers): the `kind` label of peers.
/// Meeting participants and cascade links to other SFUs, too.
pub const PEER_KINDS: [&str; 4] = ["whip", "whep", "meeting", "cascade"];

pub struct Metrics {
    pub registry: prometheus::Registry,
    pub rooms: IntGauge,
    /// The names of the rooms open now, for the heartbeat (the control plane keeps a meeting
    /// on this SFU while it is listed). Touched only when a room opens or closes.
    open_rooms: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub peers: IntGaugeVec,
    pub peers_total: IntCounterVec,
    pub tracks: IntGaugeVec,
    received_packets: IntCounterVec,
    forwarded_packets: IntCounterVec,
    forwarded_bytes: IntCounterVec,
    dropped: IntCounterVec,
    keyframe_requests: IntCounterVec,
    nacks: IntCounterVec,
    pub forward_latency: Histogram,
    pub peer_panics: IntCounter,
    pub refused: IntCounterVec,
    pub tokens_refused: IntCounterVec,
    layer_switches: IntCounterVec,
    layer_received: IntCounterVec,
    subscriber_bandwidth: Histogram,
    /// Simulcast layers paused at their publisher now (nobody receives them).
    pub layers_paused: IntGauge,
    /// Cascade links open now (either end).
    pub cascade_links: IntGauge,
    /// Other sites' participants relayed here now.
    pub cascade_participants: IntGauge,
    /// Top simulcast layers shed for overload, per shard.
    pub shed_layers: IntGaugeVec,
    pub tcp_connections: IntGauge,
    pub tcp_connections_total: IntCounterVec,
    pub tcp_frames: IntCounterVec,
    pub tcp_closed: IntCounterVec,
}

/// The `layer` label of received simulcast packets: the layer index from the lowest (0).
pub const LAYER_LABELS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];

impl Metrics {
    pub fn new(node: &str, site: &str) -> Self {
        let registry = estuary_common::metrics::registry(&[("node", node), ("site", site)]);
        let m = Self {
            open_rooms: Default::default(),
            rooms: must(IntGauge::new(
                "estuary_sfu_rooms",
                "Rooms with at least one session.",
            )),
            peers: must(IntGaugeVec::new(
                Opts::new(
                    "estuary_sfu_peers",
                    "WebRTC sessions open now, connected or connecting, by kind: whip (publishers), whep (watchers), meeting (participants of the meeting WebSocket).",
                ),
                &["kind"],
            )),
            peers_total: must(IntCounterVec::new(
                Opts::new("estuary_sfu_peers_total", "WebRTC sessions opened, by kind."),
                &["kind"],
            )),
            tracks: must(IntGaugeVec::new(
                Opts::new("estuary_sfu_tracks", "Published tracks now, by kind."),
                &["kind"],
            )),
            received_packets: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_received_packets_total",
                    "RTP packets received from publishers (after SRTP, de-duplicated), by kind.",
                ),
                &["kind"],
            )),
            forwarded_packets: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_forwarded_packets_total",
                    "RTP packets written to watchers, by kind (one per watcher).",
                ),
                &["kind"],
            )),
            forwarded_bytes: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_forwarded_bytes_total",
                    "RTP payload bytes written to watchers, by kind.",
                ),
                &["kind"],
            )),
            dropped: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_dropped_packets_total",
                    "Datagrams and packets dropped, by reason.",
                ),
                &["reason"],
            )),
            keyframe_requests: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_keyframe_requests_total",
                    "Keyframe requests (PLI) for publishers, by result: sent, or throttled (one went out less than keyframe_interval_min ago).",
                ),
                &["result"],
            )),
            nacks: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_nacks_total",
                    "NACKs (packets reported lost), by direction: received from watchers (answered with retransmissions from the send buffer), sent to publishers.",
                ),
                &["direction"],
            )),
            forward_latency: must(Histogram::with_opts(
                HistogramOpts::new(
                    "estuary_sfu_forward_latency_seconds",
                    "Time from a media packet leaving the UDP socket's receive queue to its copy for one watcher being handed to the kernel.",
                )
                .buckets(vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015,
                    0.002, 0.0025, 0.005, 0.01, 0.05,
                ]),
            )),
            peer_panics: must(IntCounter::new(
                "estuary_sfu_peer_panics_total",
                "Peers closed because their WebRTC stack panicked (a bug; the shard went on).",
            )),
            refused: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_signaling_refused_total",
                    "WHIP/WHEP requests refused, by reason.",
                ),
                &["reason"],
            )),
            tokens_refused: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_tokens_refused_total",
                    "Room tokens refused, by reason.",
                ),
                &["reason"],
            )),
            layer_switches: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_layer_switches_total",
                    "Simulcast layer switches of subscribers' streams, by direction (up or down); counted when decided, carried out at the layer's next keyframe.",
                ),
                &["direction"],
            )),
            layer_received: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_layer_received_packets_total",
                    "Video RTP packets received from publishers, by simulcast layer (0 is the lowest; a track without simulcast counts as 0).",
                ),
                &["layer"],
            )),
            subscriber_bandwidth: must(Histogram::with_opts(
                HistogramOpts::new(
                    "estuary_sfu_subscriber_bandwidth_bps",
                    "Bandwidth estimates of subscribers (bits/s, TWCC or REMB), one observation per estimate str0m reports.",
                )
                .buckets(vec![
                    100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6,
                ]),
            )),
            layers_paused: must(IntGauge::new(
                "estuary_sfu_layers_paused",
                "Simulcast layers nobody receives, paused at their publisher (dynacast).",
            )),
            cascade_links: must(IntGauge::new(
                "estuary_sfu_cascade_links",
                "Cascade links to other SFUs open now (relaying or upstream end); what each link carries is in the peers, packets and bytes of kind cascade.",
            )),
            cascade_participants: must(IntGauge::new(
                "estuary_sfu_cascade_participants",
                "Participants of other sites whose tracks arrive here over a cascade link.",
            )),
            shed_layers: must(IntGaugeVec::new(
                Opts::new(
                    "estuary_sfu_shed_layers",
                    "Top simulcast layers not sent because the shard is overloaded, by shard.",
                ),
                &["shard"],
            )),
            tcp_connections: must(IntGauge::new(
                "estuary_sfu_tcp_connections",
                "ICE-TCP connections open now.",
            )),
            tcp_connections_total: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_tcp_connections_total",
                    "ICE-TCP connections, by result: accepted, or refused (media.tcp_max_connections were open).",
                ),
                &["result"],
            )),
            tcp_frames: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_tcp_frames_total",
                    "RFC 4571 frames (STUN, DTLS, SRTP) on ICE-TCP connections, by direction: in (read and handed to a shard), out (written).",
                ),
                &["direction"],
            )),
            tcp_closed: must(IntCounterVec::new(
                Opts::new(
                    "estuary_sfu_tcp_closed_total",
                    "ICE-TCP connections closed, by reason.",
                ),
                &["reason"],
            )),
            registry,
        };
        for k in PEER_KINDS {
            m.peers.with_label_values(&[k]);
            m.peers_total.with_label_values(&[k]);
        }
        for k in [MediaKind::Audio, MediaKind::Video] {
            for v in [
                &m.tracks as &dyn LabelInit,
                &m.received_packets,
                &m.forwarded_packets,
                &m.forwarded_bytes,
            ] {
                v.init(k.as_str());
            }
        }
        for r in DropReason::ALL {
            m.dropped.with_label_values(&[r.as_str()]);
        }
        for r in ["sent", "throttled"] {
            m.keyframe_requests.with_label_values(&[r]);
        }
        for d in ["received", "sent"] {
            m.nacks.with_label_values(&[d]);
        }
        for d in ["up", "down"] {
            m.layer_switches.with_label_values(&[d]);
        }
        for l in LAYER_LABELS {
            m.layer_received.with_label_values(&[l]);
        }
        for r in REFUSALS {
            m.refused.with_label_values(&[r]);
        }
        for r in ["accepted", "refused"] {
            m.tcp_connections_total.with_label_values(&[r]);
        }
        for d in ["in", "out"] {
            m.tcp_frames.with_label_values(&[d]);
        }
        for r in crate::tcp::TcpClose::ALL {
            m.tcp_closed.with_label_values(&[r.as_str()]);
        }
        for r in estuary_common::token::Rejection::ALL {
            m.tokens_refused.with_label_values(&[r.as_str()]);
        }
        register_all(
            &m.registry,
            [
                Box::new(m.rooms.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(m.peers.clone()),
                Box::new(m.peers_total.clone()),
                Box::new(m.tracks.clone()),
                Box::new(m.received_packets.clone()),
                Box::new(m.forwarded_packets.clone()),
                Box::new(m.forwarded_bytes.clone()),
                Box::new(m.dropped.clone()),
                Box::new(m.keyframe_requests.clone()),
                Box::new(m.nacks.clone()),
                Box::new(m.forward_latency.clone()),
                Box::new(m.peer_panics.clone()),
                Box::new(m.refused.clone()),
                Box::new(m.tokens_refused.clone()),
                Box::new(m.layer_switches.clone()),
                Box::new(m.layer_received.clone()),
                Box::new(m.subscriber_bandwidth.clone()),
                Box::new(m.layers_paused.clone()),
                Box::new(m.cascade_links.clone()),
                Box::new(m.cascade_participants.clone()),
                Box::new(m.shed_layers.clone()),
                Box::new(m.tcp_connections.clone()),
                Box::new(m.tcp_connections_total.clone()),
                Box::new(m.tcp_frames.clone()),
                Box::new(m.tcp_closed.clone()),
            ],
        );
        m
    }

    /// Counts a dropped datagram now (for the ICE-TCP tasks, which keep no local counters).
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// A room opened: counted and listed.
    pub fn room_opened(&self, room: &str) {
        self.rooms.inc();
        if let Ok(mut open) = self.open_rooms.lock() {
            open.insert(room.to_owned());
        }
    }

    /// A room closed: counted and no longer listed.
    pub fn room_closed(&self, room: &str) {
        self.rooms.dec();
        if let Ok(mut open) = self.open_rooms.lock() {
            open.remove(room);
        }
    }

    /// The names of the rooms open now, at most `limit` of them.
    pub fn open_room_names(&self, limit: usize) -> Vec<String> {
        self.open_rooms
            .lock()
            .map(|open| open.iter().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Peers open now, all kinds.
    pub fn open_peers(&self) -> u64 {
        PEER_KINDS
            .iter()
            .map(|k| u64::try_from(self.peers.with_label_values(&[k]).get()).unwrap_or(0))
            .sum()
    }

    /// Per-thread counters over these handles.
    pub fn local(&self) -> LocalCounters {
        let kinds = |v: &IntCounterVec| {
            [MediaKind::Audio, MediaKind::Video].map(|k| v.with_label_values(&[k.as_str()]).local())
        };
        LocalCounters {
            received: kinds(&self.received_packets),
            forwarded: kinds(&self.forwarded_packets),
            forwarded_bytes: kinds(&self.forwarded_bytes),
            dropped: DropReason::ALL.map(|r| self.dropped.with_label_values(&[r.as_str()]).local()),
            keyframes_sent: self.keyframe_requests.with_label_values(&["sent"]).local(),
            keyframes_throttled: self
                .keyframe_requests
                .with_label_values(&["throttled"])
                .local(),
            nacks_received: self.nacks.with_label_values(&["received"]).local(),
            nacks_sent: self.nacks.with_label_values(&["sent"]).local(),
            latency: self.forward_latency.local(),
            switches_up: self.layer_switches.with_label_values(&["up"]).local(),
            switches_down: self.layer_switches.with_label_values(&["down"]).local(),
            layer_received: LAYER_LABELS
                .map(|l| self.layer_received.with_label_values(&[l]).local()),
            bandwidth: self.subscriber_bandwidth.local(),
        }
    }
}

trait LabelInit {
    fn init(&self, label: &str);
}

impl LabelInit for IntCounterVec {
    fn init(&self, label: &str) {
        self.with_label_values(&[label]);
    }
}

impl LabelInit for IntGaugeVec {
    fn init(&self, label: &str) {
        self.with_label_values(&[label]);
    }
}

fn kind_idx(k: MediaKind) -> usize {
    match k {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

/// One media thread's counters, flushed into [`Metrics`] by [`LocalCounters::flush`].
pub struct LocalCounters {
    received: [LocalIntCounter; 2],
    forwarded: [LocalIntCounter; 2],
    forwarded_bytes: [LocalIntCounter; 2],
    dropped: [LocalIntCounter; DropReason::ALL.len()],
    pub keyframes_sent: LocalIntCounter,
    pub keyframes_throttled: LocalIntCounter,
    pub nacks_received: LocalIntCounter,
    pub nacks_sent: LocalIntCounter,
    pub latency: LocalHistogram,
    switches_up: LocalIntCounter,
    switches_down: LocalIntCounter,
    layer_received: [LocalIntCounter; 8],
    pub bandwidth: LocalHistogram,
}

impl LocalCounters {
    pub fn received(&self, kind: MediaKind) {
        self.received[kind_idx(kind)].inc();
    }

    pub fn forwarded(&self, kind: MediaKind, bytes: usize) {
        self.forwarded[kind_idx(kind)].inc();
        self.forwarded_bytes[kind_idx(kind)].inc_by(bytes as u64);
    }

    pub fn layer_switch(&self, up: bool) {
        if up {
            self.switches_up.inc();
        } else {
            self.switches_down.inc();
        }
    }

    pub fn layer_received(&self, layer: u8) {
        if let Some(c) = self.layer_received.get(usize::from(layer)) {
            c.inc();
        }
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    pub fn dropped_n(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].inc_by(n);
    }

    pub fn flush(&self) {
        for c in self
            .received
            .iter()
            .chain(&self.forwarded)
            .chain(&self.forwarded_bytes)
            .chain(&self.dropped)
            .chain(&self.layer_received)
            .chain([&self.switches_up, &self.switches_down])
        {
            c.flush();
        }
        self.keyframes_sent.flush();
        self.keyframes_throttled.flush();
        self.nacks_received.flush();
        self.nacks_sent.flush();
        self.latency.flush();
        self.bandwidth.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series of `name` whose labels include `label`.
    fn value(text: &str, name: &str, label: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_series_is_there_before_any_event_and_locals_flush() {
        let m = Metrics::new("sfu-1", "lab");
        let local = m.local();
        local.dropped(DropReason::Garbage);
        local.forwarded(MediaKind::Video, 1000);
        let before = estuary_common::metrics::encode(&m.registry);
        let dropped = "estuary_sfu_dropped_packets_total";
        assert_eq!(
            value(&before, dropped, "reason=\"garbage\""),
            Some(0.0),
            "{before}"
        );
        local.flush();
        let text = estuary_common::metrics::encode(&m.registry);
        assert_eq!(
            value(&text, dropped, "reason=\"garbage\""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "estuary_sfu_forwarded_bytes_total", "kind=\"video\""),
            Some(1000.0)
        );
        assert_eq!(
            value(&text, "estuary_sfu_peers", "kind=\"whep\""),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "estuary_sfu_signaling_refused_total",
                "reason=\"bad_sdp\""
            ),
            Some(0.0)
        );
        for r in DropReason::ALL {
            assert!(value(&text, dropped, &format!("reason=\"{}\"", r.as_str())).is_some());
        }
    }
}
