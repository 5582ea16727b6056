//! The chat relay's configuration file (TOML). Unknown keys are errors; `validate` runs before
//! anything starts. Relative paths are resolved against the config file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole chat relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRelayConfig {
    /// `[node]`: who this relay is (its id and site in logs, metrics and heartbeats).
    pub node: NodeConfig,
    pub listen: ListenConfig,
    /// `[auth]`: the keys user tokens are signed with.
    pub auth: AuthConfig,
    /// `[store]`: the embedded store (its `path` key marks a chat relay config).
    pub store: StoreConfig,
    /// `[cluster]`: several relays over NATS JetStream. Parsed and checked, but not
    /// implemented in this build: a relay refuses to start with it.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Registration and heartbeats (role `chat-relay`); without it the relay runs standalone.
    #[serde(default)]
    pub control_plane: Option<estuary_common::cp::ClientConfig>,
    /// Optional: the offline push hook.
    #[serde(default)]
    pub push: Option<PushConfig>,
    /// Optional: media through the CDN (`media.upload`); without it `media.upload` is
    /// answered with an error `unsupported`.
    #[serde(default)]
    pub media: Option<MediaConfig>,
    /// `[limits]`: how long a client may take and how many connections it may hold (see
    /// `estuary_common::listener`); an upgraded WebSocket keeps its connection's slot.
    #[serde(default)]
    pub limits: estuary_common::listener::ListenerLimits,
    /// `[chat]`: frame size, group size, send queue and rate limits.
    #[serde(default)]
    pub chat: ChatLimits,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
}

/// `[node]`: `id` and `site`, as in every node's config.
pub use estuary_common::config::NodeConfig;

/// `[listen]`: `http` serves the WebSocket endpoint `/ws`.
pub use estuary_common::listener::ListenConfig;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `[auth.keys]`: key id to hex secret (at least 32 hex digits). User tokens are the
    /// edge's signed tokens with the acl `/chat/user/<user-id>`.
    pub keys: BTreeMap<String, String>,
    /// The longest time from now to a token's `exp` that is accepted (default 30 days): a
    /// token valid for longer (`exp` = 2^64-1) is refused.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file holding inboxes, messages, groups, receipts and last-seen times
    /// (created if missing; WAL, synchronous=FULL).
    pub path: PathBuf,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server's URL (`nats://host:port`), with JetStream enabled.
    pub nats: String,
    /// The NATS auth token, if the server wants one.
    #[serde(default)]
    pub token: Option<String>,
    /// The JetStream stream that holds the relays' shared log (created if missing); its
    /// subjects are `chat.<stream>.log` and, for typing and presence, `chat.<stream>.signal`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Copies JetStream keeps of the log (1 on a single server; 3 on a NATS cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long a write waits for the log before the client gets an error `store`.
    #[serde(default = "default_log_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_stream() -> String {
    "CHAT".to_owned()
}
fn default_replicas() -> usize {
    1
}
fn default_log_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[push]`: where an event goes when a message is stored for a user with no device connected
/// to any relay (a push-notification service wakes the user's phone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `POST`ed the event as JSON (`http://` or `https://`); retried on connection errors and
    /// 5xx, three tries in all.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Sent as `Authorization: Bearer <token>` to the webhook.
    #[serde(default)]
    pub token: Option<String>,
    /// A PEM bundle of CAs trusted for an `https` webhook besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Published the event on this NATS subject (needs `[cluster]`, whose connection it uses).
    #[serde(default)]
    pub nats_subject: Option<String>,
    /// Events waiting to be sent; beyond, new ones are dropped and counted (default 10000).
    #[serde(default = "default_push_queue")]
    pub queue: usize,
}

fn default_push_queue() -> usize {
    10_000
}

/// `[media]`: chat media uploaded to the origin over TUS and fetched from the edges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// The origin's base URL (`http://` or `https://`, no path): clients create their upload
    /// with `POST <origin>/uploads/`.
    pub origin: String,
    /// The CDN's base URL (an edge, or a name steering answers for): messages carry
    /// `<cdn>/v/<asset>/media.<ext>?token=...`.
    pub cdn: String,
    /// The key upload credentials are signed with: one of the origin's `[auth.upload_keys]`.
    /// Its secret also authenticates the asset ids this relay hands out, so every relay of a
    /// cluster needs the same one.
    pub upload_key: KeyConfig,
    /// The key CDN URLs are signed with: one of the edges' `[auth.keys]`.
    pub cdn_key: KeyConfig,
    /// The types clients may upload (default: every type the origin checks: image/jpeg,
    /// image/png, image/webp, image/gif, video/mp4, video/webm, audio/ogg, audio/mpeg,
    /// audio/mp4).
    #[serde(default = "default_mime_types")]
    pub mime_types: Vec<String>,
    /// The largest upload (default 16 MiB); the origin's `[uploads] max_size` must allow it.
    #[serde(default = "default_media_max_size")]
    pub max_size: bytesize::ByteSize,
    /// How long an upload credential is valid (default 15 minutes): every request of the
    /// upload carries it, so the upload must be finished (and its status read) within it.
    #[serde(default = "default_upload_ttl", with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// How long a CDN URL handed to a client is valid (default 1 hour); every delivery of a
    /// message (live, from the inbox, in `history`) signs a fresh one.
    #[serde(default = "default_url_ttl", with = "humantime_serde")]
    pub url_ttl: Duration,
}

/// A key id and its hex secret (at least 32 hex digits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: String,
    pub secret: String,
}

fn default_mime_types() -> Vec<String> {
    estuary_common::media::MEDIA_TYPES
        .iter()
        .map(|t| t.mime.to_owned())
        .collect()
}
fn default_media_max_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(16)
}
fn default_upload_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_url_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl KeyConfig {
    /// The decoded secret; the error names `<table>.secret` or `<table>.kid`.
    pub fn secret(&self, table: &str) -> Result<Vec<u8>, ConfigError> {
        if !estuary_common::key_id::valid(&self.kid) {
            return Err(ConfigError::new(
                format!("{table}.kid"),
                estuary_common::key_id::RULE,
            ));
        }
        estuary_common::token::decode_secret(&self.secret)
            .map_err(|e| ConfigError::new(format!("{table}.secret"), e.to_string()))
    }
}

impl MediaConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [("media.origin", &self.origin), ("media.cdn", &self.cdn)] {
            base_url_ok(url).map_err(|why| ConfigError::new(key, why))?;
        }
        self.upload_key.secret("media.upload_key")?;
        self.cdn_key.secret("media.cdn_key")?;
        if self.mime_types.is_empty() {
            return Err(ConfigError::new(
                "media.mime_types",
                "list at least one type",
            ));
        }
        if let Some(bad) = self
            .mime_types
            .iter()
            .find(|m| estuary_common::media::MediaType::from_mime(m).is_none())
        {
            return Err(ConfigError::new(
                "media.mime_types",
                format!(
                    "{bad:?} is not a type the origin checks; choose among {}",
                    default_mime_types().join(", ")
                ),
            ));
        }
        if !(1..=(64u64 << 30)).contains(&self.max_size.as_u64()) {
            return Err(ConfigError::new(
                "media.max_size",
                "must be between 1 B and 64 GiB",
            ));
        }
        if self.upload_ttl < Duration::from_secs(10)
            || self.upload_ttl.as_secs() > estuary_common::media::RAW_UPLOAD_MAX_TTL
        {
            return Err(ConfigError::new(
                "media.upload_ttl",
                "must be between 10s and 24h (the origin refuses longer credentials)",
            ));
        }
        if self.url_ttl < Duration::from_secs(10) || self.url_ttl > Duration::from_secs(7 * 86400) {
            return Err(ConfigError::new(
                "media.url_ttl",
                "must be between 10s and 7days (edges refuse tokens living longer than their [auth] max_ttl)",
            ));
        }
        Ok(())
    }
}

/// An `http://` or `https://` URL with a host and no path, query or fragment.
fn base_url_ok(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' ', '~', '!'])
        || !rest.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("must be scheme://host[:port] without a path, query or credentials");
    }
    Ok(())
}

/// `[chat]`: what one client may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatLimits {
    /// The largest text frame a client may send, in bytes (default 64 KiB); a larger one
    /// closes the connection with 1009.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most members of a group, its creator included (default 100).
    #[serde(default = "default_group_member_limit")]
    pub group_member_limit: usize,
    /// Frames waiting to be written to one connection; a connection whose queue is full is
    /// too slow for what it is sent and is closed with 4002 (its messages stay in its inbox;
    /// room messages are ephemeral and are lost to it).
    #[serde(default = "default_send_queue")]
    pub send_queue: usize,
    /// Frames per second one user may send, all devices together (bursts of twice as many);
    /// over it a frame is answered with an `error` frame, and a second's worth of refused
    /// frames in a row closes the connection with 1008.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
    /// Most messages one `history` request returns.
    #[serde(default = "default_history_max")]
    pub history_max: u32,
    /// Most connections in one live room (default 50,000).
    #[serde(default = "default_room_member_limit")]
    pub room_member_limit: usize,
    /// Most rooms one connection is in at once (default 16).
    #[serde(default = "default_rooms_per_connection")]
    pub rooms_per_connection: usize,
    /// Slow mode of live rooms: a user may post once per this span in a room (default 0s:
    /// off); an earlier post is refused with a `slow_mode` error frame.
    #[serde(default, with = "humantime_serde")]
    pub room_slow_mode: Duration,
    /// The kernel send buffer of each connection, in bytes (default 64 KiB; 0: the kernel's
    /// autotuning, up to `net.ipv4.tcp_wmem`, several MiB). Together with `send_queue` it
    /// bounds how far a reader may fall behind before it is closed with 4002, and what a
    /// slow reader holds in the kernel.
    #[serde(default = "default_socket_send_buffer")]
    pub socket_send_buffer: usize,
}

fn default_socket_send_buffer() -> usize {
    64 * 1024
}

fn default_room_member_limit() -> usize {
    50_000
}
fn default_rooms_per_connection() -> usize {
    16
}

fn default_max_frame_bytes() -> usize {
    64 * 1024
}
fn default_group_member_limit() -> usize {
    100
}
fn default_send_queue() -> usize {
    1024
}
fn default_messages_per_second() -> u32 {
    20
}
fn default_history_max() -> u32 {
    100
}

impl Default for ChatLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: default_max_frame_bytes(),
            group_member_limit: default_group_member_limit(),
            send_queue: default_send_queue(),
            messages_per_second: default_messages_per_second(),
            history_max: default_history_max(),
            room_member_limit: default_room_member_limit(),
            rooms_per_connection: default_rooms_per_connection(),
            room_slow_mode: Duration::ZERO,
            socket_send_buffer: default_socket_send_buffer(),
        }
    }
}

impl ChatRelayConfig {
    /// Parses and validates a config text.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut c: Self = estuary_common::config::from_toml(text)?;
        if c.store.path.is_relative() {
            c.store.path = base_dir.join(&c.store.path);
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every value before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use estuary_common::config::name_ok;
        self.node.validate()?;
        if self.auth.keys.is_empty() {
            return Err(ConfigError::new("auth.keys", "at least one key is needed"));
        }
        self.key_set()?;
        if self.auth.max_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new("auth.max_ttl", "must be at least 1min"));
        }
        if let Some(cluster) = &self.cluster
            && !(cluster.nats.starts_with("nats://") || cluster.nats.starts_with("tls://"))
        {
            return Err(ConfigError::new(
                "cluster.nats",
                "must be a nats:// or tls:// URL",
            ));
        }
        if let Some(cluster) = &self.cluster {
            if !name_ok(&cluster.stream) || cluster.stream.contains('.') {
                return Err(ConfigError::new(
                    "cluster.stream",
                    "1-64 of A-Z a-z 0-9 - _",
                ));
            }
            if !(1..=5).contains(&cluster.replicas) {
                return Err(ConfigError::new("cluster.replicas", "must be 1 to 5"));
            }
            if cluster.timeout < Duration::from_millis(100)
                || cluster.timeout > Duration::from_secs(60)
            {
                return Err(ConfigError::new("cluster.timeout", "must be 100ms to 60s"));
            }
        }
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if let Some(push) = &self.push {
            if push.webhook.is_none() && push.nats_subject.is_none() {
                return Err(ConfigError::new(
                    "push",
                    "give a webhook, a nats_subject or both",
                ));
            }
            if let Some(url) = &push.webhook
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(ConfigError::new(
                    "push.webhook",
                    "must be an http:// or https:// URL",
                ));
            }
            if let Some(subject) = &push.nats_subject {
                if self.cluster.is_none() {
                    return Err(ConfigError::new(
                        "push.nats_subject",
                        "needs [cluster], whose NATS connection it uses",
                    ));
                }
                if subject.is_empty()
                    || subject.contains(char::is_whitespace)
                    || subject.contains(['*', '>'])
                {
                    return Err(ConfigError::new(
                        "push.nats_subject",
                        "a NATS subject without spaces or wildcards",
                    ));
                }
            }
            if !(1..=10_000_000).contains(&push.queue) {
                return Err(ConfigError::new(
                    "push.queue",
                    "must be between 1 and 10000000",
                ));
            }
        }
        if let Some(media) = &self.media {
            media.validate()?;
        }
        self.limits.validate()?;
        let c = &self.chat;
        if !(1024..=16 * 1024 * 1024).contains(&c.max_frame_bytes) {
            return Err(ConfigError::new(
                "chat.max_frame_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(2..=100_000).contains(&c.group_member_limit) {
            return Err(ConfigError::new(
                "chat.group_member_limit",
                "must be between 2 and 100000",
            ));
        }
        if !(16..=1_000_000).contains(&c.send_queue) {
            return Err(ConfigError::new(
                "chat.send_queue",
                "must be between 16 and 1000000",
            ));
        }
        if !(1..=100_000).contains(&c.messages_per_second) {
            return Err(ConfigError::new(
                "chat.messages_per_second",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=10_000).contains(&c.history_max) {
            return Err(ConfigError::new(
                "chat.history_max",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=10_000_000).contains(&c.room_member_limit) {
            return Err(ConfigError::new(
                "chat.room_member_limit",
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=1000).contains(&c.rooms_per_connection) {
            return Err(ConfigError::new(
                "chat.rooms_per_connection",
                "must be between 1 and 1000",
            ));
        }
        if c.socket_send_buffer != 0 && !(4096..=64 * 1024 * 1024).contains(&c.socket_send_buffer) {
            return Err(ConfigError::new(
                "chat.socket_send_buffer",
                "must be 0 (the kernel's autotuning) or between 4096 and 67108864",
            ));
        }
        if c.room_slow_mode > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "chat.room_slow_mode",
                "must be at most 24h",
            ));
        }
        Ok(())
    }

    /// The user token keys.
    pub fn key_set(&self) -> Result<estuary_common::token::KeySet, ConfigError> {
        estuary_common::token::KeySet::from_config(&self.auth.keys, "auth.keys")
    }
}

impl estuary_common::config::ServiceConfig for ChatRelayConfig {
    const SERVICE: &'static str = "chat-relay";

    /// A chat relay config has `[store] path` (an edge's has `[store] root`).
    fn claims(table: &estuary_common::config::Table) -> bool {
        estuary_common::config::subtable(table, "store")
            .is_some_and(|s| s.contains_key("path") && !s.contains_key("root"))
    }

    fn parse_text(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir)
    }

    /// The store's folder must exist: the file is created at start.
    fn check_more(&self) -> Result<(), ConfigError> {
        let dir = self
            .store
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(ConfigError::new(
                "store.path",
                format!("the folder {} does not exist", dir.display()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::config::ServiceConfig;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn minimal() -> String {
        format!(
            "[node]\nid = \"relay-1\"\nsite = \"lab\"\n[listen]\nhttp = \"127.0.0.1:7200\"\n[auth.keys]\nk1 = \"{KEY}\"\n[store]\npath = \"chat.db\"\n"
        )
    }

    #[test]
    fn the_example_config_parses_and_is_claimed() {
        let text = include_str!("../../docs/chat-relay.example.toml");
        let c = ChatRelayConfig::parse(text, Path::new("/etc/estuary")).expect("example");
        assert_eq!(c.chat, ChatLimits::default());
        assert!(c.cluster.is_none());
        let table: estuary_common::config::Table = text.parse().expect("toml");
        assert!(ChatRelayConfig::claims(&table));
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = ChatRelayConfig::parse(&minimal(), Path::new("/srv")).expect("minimal");
        assert_eq!(c.store.path, PathBuf::from("/srv/chat.db"));
        assert_eq!(c.chat.max_frame_bytes, 65536);
        assert_eq!(c.chat.group_member_limit, 100);
    }

    #[test]
    fn typos_and_bad_values_name_their_key() {
        let e = ChatRelayConfig::parse(
            &format!("{}[chat]\nmax_frame_byte = 1\n", minimal()),
            Path::new("/"),
        )
        .expect_err("typo");
        assert!(e.key.contains("max_frame_byte"), "{e}");
        assert!(e.reason.contains("line 11"), "{e}");
        let e = ChatRelayConfig::parse(
            &format!("{}[chat]\ngroup_member_limit = 1\n", minimal()),
            Path::new("/"),
        )
        .expect_err("small group");
        assert_eq!(e.key, "chat.group_member_limit");
        let e = ChatRelayConfig::parse(&minimal().replace(KEY, "00ff"), Path::new("/"))
            .expect_err("short key");
        assert_eq!(e.key, "auth.keys.k1");
        let e = ChatRelayConfig::parse(
            &format!("{}[cluster]\nnats = \"http://x\"\n", minimal()),
            Path::new("/"),
        )
        .expect_err("bad nats url");
        assert_eq!(e.key, "cluster.nats");
        let e = ChatRelayConfig::parse(
            &format!("{}[push]\nnats_subject = \"push.chat\"\n", minimal()),
            Path::new("/"),
        )
        .expect_err("push over NATS without a cluster");
        assert_eq!(e.key, "push.nats_subject");
        let e = ChatRelayConfig::parse(&format!("{}[push]\n", minimal()), Path::new("/"))
            .expect_err("push to nowhere");
        assert_eq!(e.key, "push");
    }

    #[test]
    fn media_keys_are_checked_and_named() {
        const GOOD: &str = "[media]\norigin = \"http://127.0.0.1:8080\"\ncdn = \"https://cdn.example\"\nupload_key = { kid = \"relay\", secret = \"00112233445566778899aabbccddeeff\" }\ncdn_key = { kid = \"k1\", secret = \"ffeeddccbbaa99887766554433221100\" }\n";
        let parse =
            |media: &str| ChatRelayConfig::parse(&format!("{}{media}", minimal()), Path::new("/"));
        let c = parse(GOOD).expect("media");
        let m = c.media.expect("media");
        assert_eq!(m.max_size.as_u64(), 16 << 20);
        assert_eq!(m.upload_ttl, Duration::from_secs(900));
        assert!(m.mime_types.iter().any(|t| t == "image/jpeg"));
        for (bad, key) in [
            (
                GOOD.replace("http://127.0.0.1:8080", "ftp://x"),
                "media.origin",
            ),
            (
                GOOD.replace("https://cdn.example", "https://cdn.example/v/"),
                "media.cdn",
            ),
            (
                GOOD.replace("00112233445566778899aabbccddeeff", "00ff"),
                "media.upload_key.secret",
            ),
            (
                GOOD.replace("kid = \"k1\"", "kid = \"k 1\""),
                "media.cdn_key.kid",
            ),
            (
                format!("{GOOD}mime_types = [\"text/html\"]\n"),
                "media.mime_types",
            ),
            (format!("{GOOD}mime_types = []\n"), "media.mime_types"),
            (format!("{GOOD}max_size = 0\n"), "media.max_size"),
            (
                format!("{GOOD}upload_ttl = \"2days\"\n"),
                "media.upload_ttl",
            ),
            (format!("{GOOD}url_ttl = \"1s\"\n"), "media.url_ttl"),
        ] {
            let e = parse(&bad).expect_err(&bad);
            assert_eq!(e.key, key, "{e}");
        }
        let e = parse(&format!("{GOOD}max_bytes = 1\n")).expect_err("typo");
        assert!(e.key.contains("max_bytes"), "{e}");
    }

    #[test]
    fn an_edge_config_is_not_claimed() {
        let table: estuary_common::config::Table =
            "[store]\nroot = \"/srv\"\n".parse().expect("toml");
        assert!(!ChatRelayConfig::claims(&table));
    }
}
