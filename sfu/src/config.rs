//! The SFU's configuration file (TOML). Unknown keys are errors; `validate` runs before
//! anything starts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole SFU configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfuConfig {
    /// `[node]`: who this SFU is (its id and site in logs, metrics and heartbeats).
    pub node: NodeConfig,
    /// `[listen]`: signaling over HTTP, media over one UDP port.
    pub listen: ListenConfig,
    /// `[auth]`: the keys room tokens are signed with.
    pub auth: AuthConfig,
    /// `[media]`: shards, codecs, queues and timers of the media path.
    #[serde(default)]
    pub media: MediaConfig,
    /// `[rooms]`: how many rooms, participants and publishers.
    #[serde(default)]
    pub rooms: RoomsConfig,
    /// Registration and heartbeats (role `sfu`, with rooms and peers in the load); without it
    /// the SFU runs standalone.
    #[serde(default)]
    pub control_plane: Option<estuary_common::cp::ClientConfig>,
    /// `[limits]`: how long an HTTP client may take and how many connections it may hold (see
    /// `estuary_common::listener`).
    #[serde(default)]
    pub limits: estuary_common::listener::ListenerLimits,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
    /// `[recording]`: rooms recorded on request (`POST /recordings/<room>`) and uploaded to
    /// an origin, which packages them into assets. Without it, recording is refused.
    #[serde(default)]
    pub recording: Option<RecordingConfig>,
}

/// `[recording]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Where recordings are written (Matroska, the media as received) and kept until the
    /// origin has them; files left by a crash are uploaded at the next start.
    pub dir: std::path::PathBuf,
    /// The origin's base URL (`http://origin:8080`); recordings are TUS uploads to
    /// `<origin>/uploads/`.
    pub origin: String,
    /// A bearer token of the origin's `[auth.upload_tokens]`, best one scoped to
    /// `<asset_prefix>*`.
    pub upload_token: String,
    /// Recordings become assets `<asset_prefix><room>-<unix seconds>`.
    #[serde(default = "default_asset_prefix")]
    pub asset_prefix: String,
    /// The ffmpeg that writes the file (`-c copy`, no transcoding).
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: std::path::PathBuf,
    /// A recording longer than this is stopped and uploaded.
    #[serde(default = "default_max_recording", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Most recordings running at once; beyond, 503.
    #[serde(default = "default_max_active")]
    pub max_active: usize,
    /// A PEM bundle of CAs trusted for an `https` origin, besides the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_asset_prefix() -> String {
    "rec-".into()
}
fn default_ffmpeg() -> std::path::PathBuf {
    "ffmpeg".into()
}
fn default_max_recording() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_max_active() -> usize {
    4
}

impl RecordingConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.dir.is_absolute() {
            return Err(ConfigError::new(
                "recording.dir",
                "must be an absolute path",
            ));
        }
        let uri: Result<axum::http::Uri, _> = self.origin.parse();
        let ok = uri.is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.query().is_none()
        });
        if !ok {
            return Err(ConfigError::new(
                "recording.origin",
                "must be an http:// or https:// URL of the origin, without a query",
            ));
        }
        if self.upload_token.len() < 16 || self.upload_token.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(ConfigError::new(
                "recording.upload_token",
                "must be at least 16 printable characters without spaces",
            ));
        }
        let prefix_ok = !self.asset_prefix.is_empty()
            && self.asset_prefix.len() <= 20
            && self.asset_prefix.as_bytes()[0].is_ascii_alphanumeric()
            && self
                .asset_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return Err(ConfigError::new(
                "recording.asset_prefix",
                "1-20 of a-z A-Z 0-9 - _, starting with a letter or digit",
            ));
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&self.max_duration)
        {
            return Err(ConfigError::new(
                "recording.max_duration",
                "must be 10s to 24h",
            ));
        }
        if !(1..=64).contains(&self.max_active) {
            return Err(ConfigError::new(
                "recording.max_active",
                "must be between 1 and 64",
            ));
        }
        Ok(())
    }
}

/// `[node]`: `id` and `site`, as in every node's config.
pub use estuary_common::config::NodeConfig;

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Signaling: WHIP (`/whip/<room>`) and WHEP (`/whep/<room>`); also `/metrics`,
    /// `/healthz` and `/readyz` unless `admin` is set.
    pub http: SocketAddr,
    /// A separate address for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// The one UDP port every peer's media uses (ICE-lite).
    pub udp: SocketAddr,
    /// ICE-TCP passive fallback (RFC 6544): every peer also gets a passive TCP host candidate
    /// at `public_ip` and this port, for clients whose UDP is blocked. Absent: no TCP
    /// candidate and no listener.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// The address put in the ICE candidates (what peers send media to). Datagrams are
    /// handed to each peer as received on this address, so it must be where they arrive.
    pub public_ip: IpAddr,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `[auth.keys]`: key id to hex secret (at least 32 hex digits). Room tokens are the
    /// edge's signed tokens with the acl `/rooms/<room>`.
    pub keys: BTreeMap<String, String>,
    /// The longest time from now to a token's `exp` that is accepted (default 1 day).
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A codec the SFU negotiates and forwards (without decoding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    Vp8,
    H264,
    Vp9,
    Av1,
}

/// `[media]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Threads that own rooms and their peers (a room lives on one); default 1 until more
    /// are measured to help.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// The codecs offered in answers (default opus, vp8, h264; vp9 and av1 may be added).
    #[serde(default = "default_codecs")]
    pub codecs: Vec<Codec>,
    /// Datagrams waiting for one shard; beyond, new ones are dropped and counted.
    #[serde(default = "default_udp_queue")]
    pub udp_queue: usize,
    /// The UDP socket's kernel receive buffer, in bytes (default 8 MiB; the kernel caps it at
    /// `net.core.rmem_max`).
    #[serde(default = "default_socket_recv_buffer")]
    pub socket_recv_buffer: usize,
    /// The shortest time between two keyframe requests (PLI) sent to one published track.
    #[serde(default = "default_keyframe_interval_min", with = "humantime_serde")]
    pub keyframe_interval_min: Duration,
    /// A peer whose ICE connection is lost leaves its room after this long.
    #[serde(default = "default_ice_disconnect_grace", with = "humantime_serde")]
    pub ice_disconnect_grace: Duration,
    /// A session that has not connected this long after its answer was given is closed.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The bandwidth estimator's first estimate (bits/s) for every meeting participant
    /// (TWCC/GCC; simulcast layers are chosen from its estimates; WHEP watchers have none). 0 turns the estimator,
    /// and with it pacing and layer choice by bandwidth, off.
    #[serde(default = "default_bwe_initial_bps")]
    pub bwe_initial_bps: u64,
    /// ICE-TCP: most TCP connections open at once; beyond, new ones are closed at once and
    /// counted.
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// ICE-TCP: a connection whose first frame is not a STUN request naming one of our ICE
    /// ufrags within this long is closed.
    #[serde(default = "default_tcp_first_frame_timeout", with = "humantime_serde")]
    pub tcp_first_frame_timeout: Duration,
    /// ICE-TCP: datagrams waiting to be written to one connection; a connection whose reader
    /// is this far behind is closed (and counted): a slow reader never holds a shard back.
    #[serde(default = "default_tcp_write_queue")]
    pub tcp_write_queue: usize,
    /// Overload: a shard busy more than this share of a second sheds one more simulcast layer
    /// in every room it holds (at most two: the lowest layer always stays), before any call
    /// is refused or dropped. 1.0 never sheds.
    #[serde(default = "default_shed_layers_above")]
    pub shed_layers_above: f64,
    /// A shard busy less than this share of a second gives one shed layer back.
    #[serde(default = "default_restore_layers_below")]
    pub restore_layers_below: f64,
}

fn default_shards() -> usize {
    1
}
fn default_codecs() -> Vec<Codec> {
    vec![Codec::Opus, Codec::Vp8, Codec::H264]
}
fn default_udp_queue() -> usize {
    4096
}
fn default_socket_recv_buffer() -> usize {
    8 * 1024 * 1024
}
fn default_keyframe_interval_min() -> Duration {
    Duration::from_millis(500)
}
fn default_ice_disconnect_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_bwe_initial_bps() -> u64 {
    600_000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_tcp_max_connections() -> usize {
    1000
}
fn default_tcp_first_frame_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_shed_layers_above() -> f64 {
    0.85
}
fn default_restore_layers_below() -> f64 {
    0.5
}
fn default_tcp_write_queue() -> usize {
    256
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            shards: default_shards(),
            codecs: default_codecs(),
            udp_queue: default_udp_queue(),
            socket_recv_buffer: default_socket_recv_buffer(),
            keyframe_interval_min: default_keyframe_interval_min(),
            ice_disconnect_grace: default_ice_disconnect_grace(),
            connect_timeout: default_connect_timeout(),
            bwe_initial_bps: default_bwe_initial_bps(),
            tcp_max_connections: default_tcp_max_connections(),
            tcp_first_frame_timeout: default_tcp_first_frame_timeout(),
            tcp_write_queue: default_tcp_write_queue(),
            shed_layers_above: default_shed_layers_above(),
            restore_layers_below: default_restore_layers_below(),
        }
    }
}

/// `[rooms]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsConfig {
    /// Most rooms open at once; a session for a new room beyond it is refused with 503.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Most sessions (publishers and watchers) in one room; beyond, 409.
    #[serde(default = "default_max_participants")]
    pub max_participants: usize,
    /// Most publishers (WHIP sessions) in one room; beyond, 409.
    #[serde(default = "default_max_publishers")]
    pub max_publishers: usize,
    /// Audio streams forwarded to each participant: the loudest this many, plus the active
    /// speaker; the others' audio is not sent (1 to 64).
    #[serde(default = "default_max_audio_forwarded")]
    pub max_audio_forwarded: usize,
    /// The most a publisher may send, in kbit/s (all its tracks and layers): offered to it in
    /// the SDP answer (`b=AS`) and enforced (packets over it are dropped).
    #[serde(default = "default_max_publisher_kbps")]
    pub max_publisher_kbps: u64,
}

fn default_max_rooms() -> usize {
    1000
}
fn default_max_participants() -> usize {
    100
}
fn default_max_publishers() -> usize {
    25
}
fn default_max_audio_forwarded() -> usize {
    3
}
fn default_max_publisher_kbps() -> u64 {
    8000
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_rooms: default_max_rooms(),
            max_participants: default_max_participants(),
            max_publishers: default_max_publishers(),
            max_audio_forwarded: default_max_audio_forwarded(),
            max_publisher_kbps: default_max_publisher_kbps(),
        }
    }
}

impl SfuConfig {
    /// Parses and validates a config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: Self = estuary_common::config::from_toml(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        let l = &self.listen;
        if l.public_ip.is_unspecified() || l.public_ip.is_multicast() {
            return Err(ConfigError::new(
                "listen.public_ip",
                "must be the unicast address peers send media to",
            ));
        }
        if l.udp.port() == 0 {
            return Err(ConfigError::new(
                "listen.udp",
                "needs a fixed port: it goes into the candidates",
            ));
        }
        if l.tcp.is_some_and(|t| t.port() == 0) {
            return Err(ConfigError::new(
                "listen.tcp",
                "needs a fixed port: it goes into the candidates",
            ));
        }
        if l.tcp.is_some_and(|t| t == l.http || Some(t) == l.admin) {
            return Err(ConfigError::new(
                "listen.tcp",
                "must differ from listen.http and listen.admin",
            ));
        }
        if self.auth.keys.is_empty() {
            return Err(ConfigError::new("auth.keys", "at least one key is needed"));
        }
        self.key_set()?;
        if self.auth.max_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new("auth.max_ttl", "must be at least 1min"));
        }
        let m = &self.media;
        if !(1..=256).contains(&m.shards) {
            return Err(ConfigError::new("media.shards", "must be 1 to 256"));
        }
        if m.codecs.is_empty() {
            return Err(ConfigError::new("media.codecs", "at least one codec"));
        }
        if !(16..=1_000_000).contains(&m.udp_queue) {
            return Err(ConfigError::new(
                "media.udp_queue",
                "must be between 16 and 1000000",
            ));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&m.socket_recv_buffer) {
            return Err(ConfigError::new(
                "media.socket_recv_buffer",
                "must be between 65536 and 1073741824",
            ));
        }
        if m.keyframe_interval_min > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "media.keyframe_interval_min",
                "must be at most 60s",
            ));
        }
        if m.ice_disconnect_grace > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "media.ice_disconnect_grace",
                "must be at most 5min",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&m.connect_timeout) {
            return Err(ConfigError::new(
                "media.connect_timeout",
                "must be 1s to 5min",
            ));
        }
        if m.bwe_initial_bps != 0 && !(30_000..=100_000_000).contains(&m.bwe_initial_bps) {
            return Err(ConfigError::new(
                "media.bwe_initial_bps",
                "must be 0 (off) or 30000 to 100000000",
            ));
        }
        if !(1..=1_000_000).contains(&m.tcp_max_connections) {
            return Err(ConfigError::new(
                "media.tcp_max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&m.tcp_first_frame_timeout)
        {
            return Err(ConfigError::new(
                "media.tcp_first_frame_timeout",
                "must be 100ms to 60s",
            ));
        }
        if !(16..=65_536).contains(&m.tcp_write_queue) {
            return Err(ConfigError::new(
                "media.tcp_write_queue",
                "must be between 16 and 65536",
            ));
        }
        if !(m.shed_layers_above > 0.0 && m.shed_layers_above <= 1.0) {
            return Err(ConfigError::new(
                "media.shed_layers_above",
                "must be a share of time above 0 and at most 1",
            ));
        }
        if !(m.restore_layers_below > 0.0 && m.restore_layers_below < m.shed_layers_above) {
            return Err(ConfigError::new(
                "media.restore_layers_below",
                "must be above 0 and below media.shed_layers_above",
            ));
        }
        let r = &self.rooms;
        if !(1..=1_000_000).contains(&r.max_rooms) {
            return Err(ConfigError::new(
                "rooms.max_rooms",
                "must be between 1 and 1000000",
            ));
        }
        if !(2..=10_000).contains(&r.max_participants) {
            return Err(ConfigError::new(
                "rooms.max_participants",
                "must be between 2 and 10000",
            ));
        }
        if !(1..=r.max_participants).contains(&r.max_publishers) {
            return Err(ConfigError::new(
                "rooms.max_publishers",
                "must be between 1 and rooms.max_participants",
            ));
        }
        if !(1..=64).contains(&r.max_audio_forwarded) {
            return Err(ConfigError::new(
                "rooms.max_audio_forwarded",
                "must be between 1 and 64",
            ));
        }
        if !(32..=1_000_000).contains(&r.max_publisher_kbps) {
            return Err(ConfigError::new(
                "rooms.max_publisher_kbps",
                "must be between 32 and 1000000 (kbit/s)",
            ));
        }
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if let Some(rec) = &self.recording {
            rec.validate()?;
        }
        self.limits.validate()?;
        Ok(())
    }

    /// The room token keys.
    pub fn key_set(&self) -> Result<estuary_common::token::KeySet, ConfigError> {
        estuary_common::token::KeySet::from_config(&self.auth.keys, "auth.keys")
    }

    /// Where candidates say UDP media goes: `public_ip` and the UDP port.
    pub fn public_udp(&self) -> SocketAddr {
        SocketAddr::new(self.listen.public_ip, self.listen.udp.port())
    }

    /// Where the passive ICE-TCP candidate says to connect: `public_ip` and the TCP port.
    pub fn public_tcp(&self) -> Option<SocketAddr> {
        self.listen
            .tcp
            .map(|t| SocketAddr::new(self.listen.public_ip, t.port()))
    }
}

impl estuary_common::config::ServiceConfig for SfuConfig {
    const SERVICE: &'static str = "sfu";

    /// An SFU config has `[listen] udp` (no other service listens on UDP this way).
    fn claims(table: &estuary_common::config::Table) -> bool {
        estuary_common::config::subtable(table, "listen").is_some_and(|l| l.contains_key("udp"))
    }

    fn parse_text(text: &str, _base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::config::ServiceConfig;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn minimal() -> String {
        format!(
            "[node]\nid = \"sfu-1\"\nsite = \"lab\"\n[listen]\nhttp = \"127.0.0.1:7300\"\nudp = \"127.0.0.1:7301\"\npublic_ip = \"127.0.0.1\"\n[auth.keys]\nk1 = \"{KEY}\"\n"
        )
    }

    #[test]
    fn the_example_config_parses_and_is_claimed() {
        let text = include_str!("../../docs/sfu.example.toml");
        let c = SfuConfig::parse(text).expect("example");
        assert_eq!(c.media, MediaConfig::default());
        assert_eq!(c.rooms, RoomsConfig::default());
        assert_eq!(c.public_udp(), "127.0.0.1:7301".parse().expect("addr"));
        assert_eq!(
            c.public_tcp(),
            Some("127.0.0.1:7301".parse().expect("addr"))
        );
        let table: estuary_common::config::Table = text.parse().expect("toml");
        assert!(SfuConfig::claims(&table));
    }

    #[test]
    fn defaults() {
        let c = SfuConfig::parse(&minimal()).expect("minimal");
        assert_eq!(c.media.shards, 1);
        assert_eq!(c.media.codecs, vec![Codec::Opus, Codec::Vp8, Codec::H264]);
        assert_eq!(c.rooms.max_participants, 100);
        assert_eq!(c.rooms.max_audio_forwarded, 3);
        assert!(c.listen.tcp.is_none());
        assert_eq!(c.public_tcp(), None);
    }

    #[test]
    fn typos_and_bad_values_name_their_key() {
        let e = SfuConfig::parse(&format!("{}[media]\nshard = 2\n", minimal())).expect_err("typo");
        assert!(e.key.contains("shard"), "{e}");
        assert!(e.reason.contains("line 11"), "{e}");
        let e = SfuConfig::parse(&format!("{}[media]\nshards = 0\n", minimal()))
            .expect_err("no shards");
        assert_eq!(e.key, "media.shards");
        let e = SfuConfig::parse(&format!("{}[media]\ncodecs = [\"mp3\"]\n", minimal()))
            .expect_err("unknown codec");
        assert!(e.key.contains("codecs"), "{e}");
        let e = SfuConfig::parse(
            &minimal().replace("public_ip = \"127.0.0.1\"", "public_ip = \"0.0.0.0\""),
        )
        .expect_err("unspecified public ip");
        assert_eq!(e.key, "listen.public_ip");
        let e = SfuConfig::parse(&minimal().replace("127.0.0.1:7301", "127.0.0.1:0"))
            .expect_err("udp port 0");
        assert_eq!(e.key, "listen.udp");
        let e = SfuConfig::parse(&minimal().replace(KEY, "00ff")).expect_err("short key");
        assert_eq!(e.key, "auth.keys.k1");
        let e = SfuConfig::parse(&format!(
            "{}[rooms]\nmax_participants = 4\nmax_publishers = 5\n",
            minimal()
        ))
        .expect_err("more publishers than participants");
        assert_eq!(e.key, "rooms.max_publishers");
        let e = SfuConfig::parse(&format!("{}[media]\nbwe_initial_bps = 5\n", minimal()))
            .expect_err("a tiny estimate");
        assert_eq!(e.key, "media.bwe_initial_bps");
        let off = SfuConfig::parse(&format!("{}[media]\nbwe_initial_bps = 0\n", minimal()))
            .expect("0 turns the estimator off");
        assert_eq!(off.media.bwe_initial_bps, 0);
    }

    #[test]
    fn recording_values_name_their_key() {
        let good = "[recording]\ndir = \"/var/lib/estuary/recordings\"\norigin = \"http://127.0.0.1:8080\"\nupload_token = \"0123456789abcdef\"\n";
        let c = SfuConfig::parse(&format!("{}{good}", minimal())).expect("recording");
        let rec = c.recording.expect("recording table");
        assert_eq!(rec.asset_prefix, "rec-");
        assert_eq!(rec.max_active, 4);
        for (bad, key) in [
            (good.replace("/var/lib", "var/lib"), "recording.dir"),
            (good.replace("http://", "ftp://"), "recording.origin"),
            (
                good.replace("http://127.0.0.1:8080", "not a url"),
                "recording.origin",
            ),
            (
                good.replace("0123456789abcdef", "short"),
                "recording.upload_token",
            ),
            (
                format!("{good}asset_prefix = \"rec.\"\n"),
                "recording.asset_prefix",
            ),
            (
                format!("{good}max_duration = \"1s\"\n"),
                "recording.max_duration",
            ),
            (format!("{good}max_active = 0\n"), "recording.max_active"),
        ] {
            let e = SfuConfig::parse(&format!("{}{bad}", minimal())).expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
        let e = SfuConfig::parse(&format!("{}{good}maxactive = 2\n", minimal())).expect_err("typo");
        assert!(e.key.contains("maxactive"), "{e}");
        for bad in ["0", "65", "-1"] {
            let e = SfuConfig::parse(&format!(
                "{}[rooms]\nmax_audio_forwarded = {bad}\n",
                minimal()
            ))
            .expect_err("max_audio_forwarded out of range");
            assert!(e.key.contains("rooms.max_audio_forwarded"), "{bad}: {e}");
        }
        let e = SfuConfig::parse(&format!(
            "{}[media]\nshed_layers_above = 0.4\nrestore_layers_below = 0.5\n",
            minimal()
        ))
        .expect_err("restore above shed");
        assert_eq!(e.key, "media.restore_layers_below");
        let e = SfuConfig::parse(&format!("{}[media]\nshed_layers_above = 0\n", minimal()))
            .expect_err("never busy enough");
        assert_eq!(e.key, "media.shed_layers_above");
        let e = SfuConfig::parse(&format!("{}[media]\ntcp_write_queue = 1\n", minimal()))
            .expect_err("tiny write queue");
        assert_eq!(e.key, "media.tcp_write_queue");
        let e = SfuConfig::parse(&format!(
            "{}[media]\ntcp_first_frame_timeout = \"1h\"\n",
            minimal()
        ))
        .expect_err("long first-frame timeout");
        assert_eq!(e.key, "media.tcp_first_frame_timeout");
        let e = SfuConfig::parse(&format!("{}[media]\ntcp_max_connections = 0\n", minimal()))
            .expect_err("no TCP connections");
        assert_eq!(e.key, "media.tcp_max_connections");
        let e = SfuConfig::parse(&minimal().replace(
            "udp = \"127.0.0.1:7301\"",
            "udp = \"127.0.0.1:7301\"\ntcp = \"127.0.0.1:0\"",
        ))
        .expect_err("tcp port 0");
        assert_eq!(e.key, "listen.tcp");
    }

    #[test]
    fn other_services_configs_are_not_claimed() {
        for text in [
            "[store]\nroot = \"/srv\"\n",
            "[listen]\nhttp = \"127.0.0.1:7200\"\n[store]\npath = \"chat.db\"\n",
        ] {
            let table: estuary_common::config::Table = text.parse().expect("toml");
            assert!(!SfuConfig::claims(&table), "{text}");
        }
    }
}
