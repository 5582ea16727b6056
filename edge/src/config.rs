//! The edge's configuration file (TOML). Every field is documented here; unknown keys are
//! errors so that a typo in a generated config fails loudly instead of being ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Who this node is.
    pub node: NodeConfig,
    /// Where it listens.
    pub listen: ListenConfig,
    /// The certificate for the HTTPS and HTTP/3 listeners (required when `listen.https` is set).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The pre-positioned content.
    pub store: StoreConfig,
    /// Signed-URL checks.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `Cache-Control` sent to players, per kind of content.
    #[serde(default)]
    pub cache_control: CacheControlConfig,
    /// Cross-origin access for browser players.
    #[serde(default)]
    pub cors: CorsConfig,
    /// Protective limits against slow, hostile or simply too many clients.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
    /// The pull-through cache for what is not pre-positioned (needs `[upstream]`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Where misses are filled from. Without it, what is not in the store is a 404.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// Operator access to the admin listener (purge).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Registration and heartbeats; without it the edge runs standalone.
    #[serde(default)]
    pub control_plane: Option<estuary_common::cp::ClientConfig>,
    /// How assets assigned by the control plane are pulled into the store.
    #[serde(default)]
    pub prepositioning: PreposConfig,
    /// Key id -> Ed25519 public key (64 hex digits) of the origins whose signed `asset.json`
    /// this edge trusts. Pre-positioning checks each asset's `asset.json.sig` against them
    /// before it trusts any hash inside, whoever served it (a peer or an origin). Required
    /// with `[control_plane]`.
    #[serde(default)]
    pub manifest_keys: BTreeMap<String, String>,
}

/// `[prepositioning]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreposConfig {
    /// Bytes per second for pre-positioning fills ("100MiB"); unset: no cap.
    #[serde(default)]
    pub max_rate: Option<bytesize::ByteSize>,
    /// UTC hours `[start, end]` when new fills may start (may wrap midnight, e.g. [22, 6]);
    /// unset: any time.
    #[serde(default)]
    pub window: Option<[u32; 2]>,
}

/// `[cache]`: the RAM and NVMe tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// RAM tier size, with units ("2GiB").
    #[serde(default = "default_ram")]
    pub ram: bytesize::ByteSize,
    /// NVMe tier folder; it survives restarts. Without it the cache is RAM only.
    #[serde(default)]
    pub disk_dir: Option<PathBuf>,
    /// NVMe tier size.
    #[serde(default = "default_disk")]
    pub disk: bytesize::ByteSize,
    /// Largest object kept whole. Larger ones are kept in slices when upstream answers range
    /// requests, else relayed to the client but not cached.
    #[serde(default = "default_max_object")]
    pub max_object: bytesize::ByteSize,
    /// Objects larger than this are filled and kept in slices of this size, so that a range
    /// request fetches only the slices it touches. "0" turns slicing off.
    #[serde(default = "default_slice")]
    pub slice: bytesize::ByteSize,
    /// An object goes to the disk tier on its Nth fill (1: on every fill). The default, 2,
    /// keeps one-hit wonders in RAM and off the disk.
    #[serde(default = "default_disk_min_fills")]
    pub disk_min_fills: u32,
    /// The RAM tier's admission and eviction policy: "video" (the default) follows player
    /// sessions through the segments of each stream (CMCD `sid`, else the client address) and
    /// keeps what they will ask for soon; "s3fifo" is foyer's S3-FIFO. BENCHMARKS.md compares
    /// them.
    #[serde(default)]
    pub policy: CachePolicy,
    /// Lifetimes that override upstream's `Cache-Control`, per kind of content.
    #[serde(default)]
    pub ttl: TtlConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ram: default_ram(),
            disk_dir: None,
            disk: default_disk(),
            max_object: default_max_object(),
            slice: default_slice(),
            disk_min_fills: default_disk_min_fills(),
            policy: CachePolicy::default(),
            ttl: TtlConfig::default(),
        }
    }
}

/// `[cache] policy`: which policy runs the RAM tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// The video-aware policy (`eviction/video.rs`).
    #[default]
    Video,
    /// foyer's S3-FIFO.
    S3fifo,
}

impl From<CachePolicy> for crate::cache::RamPolicy {
    fn from(p: CachePolicy) -> Self {
        match p {
            CachePolicy::Video => Self::Video,
            CachePolicy::S3fifo => Self::S3Fifo,
        }
    }
}

/// `[cache.ttl]`: lifetimes; unset kinds follow upstream's headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlConfig {
    #[serde(default, with = "humantime_serde")]
    pub manifest: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub segment: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub other: Option<Duration>,
    /// How long an upstream 404 is remembered.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative: Duration,
    /// How long past its lifetime an object is still served when every upstream fails, unless
    /// upstream's `stale-if-error` says otherwise.
    #[serde(default = "default_stale_if_error", with = "humantime_serde")]
    pub stale_if_error: Duration,
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            manifest: None,
            segment: None,
            other: None,
            negative: default_negative_ttl(),
            stale_if_error: default_stale_if_error(),
        }
    }
}

/// `[upstream]`: fill sources, tried in order: parents, then origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Origin base URLs (`http://host:port` or `https://host:port`); any HTTP/1.1 server
    /// works.
    pub origin: Vec<String>,
    /// A PEM bundle of CA certificates trusted besides the system's for `https://` origins
    /// and parents (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Parent-tier base URLs, tried before the origins.
    #[serde(default)]
    pub parents: Vec<String>,
    /// Same-site edges, this one included (base URLs of their plain listeners). Each object is
    /// owned by one peer (rendezvous hashing); the others fill it from the owner first.
    #[serde(default)]
    pub peers: Vec<String>,
    /// This node's own entry in `peers` (required when `peers` is set).
    #[serde(default)]
    pub self_url: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a response head, and between two pieces of a body.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Consecutive failures after which a source is skipped for `breaker_cool_down`.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    #[serde(default = "default_breaker_cool_down", with = "humantime_serde")]
    pub breaker_cool_down: Duration,
}

/// `[admin]`: operator tokens for the admin listener's purge endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Operator name to bearer token (at least 16 characters).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

/// `[node]`: the node's identity, used in logs and metrics.
pub use estuary_common::config::NodeConfig;

/// `[listen]`: addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain HTTP/1.1 (and HTTP/2 with prior knowledge). Serves content, and `/metrics`,
    /// `/healthz` and `/readyz` unless `admin` is set.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// HTTPS: TCP for HTTP/1.1 and HTTP/2 by ALPN, and UDP on the same port for HTTP/3.
    #[serde(default)]
    pub https: Option<SocketAddr>,
    /// A separate address for `/metrics`, `/healthz` and `/readyz` only. It keeps answering
    /// while the node drains, so that `readyz` can be watched turning 503.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Whether to serve HTTP/3 on the UDP port of `https` (default true).
    #[serde(default = "default_true")]
    pub http3: bool,
}

/// `[tls]`: PEM files; SIGHUP reads them again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, end entity first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[store]`: pre-positioned content, served as files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The folder whose files are served. No request can read outside it; symbolic links
    /// that lead out of it are refused. Files must be replaced by rename, never rewritten in
    /// place (they are memory-mapped).
    pub root: PathBuf,
    /// How many open files (memory maps) to keep at once.
    #[serde(default = "default_open_files")]
    pub open_files: u64,
    /// How long an open file is trusted before its metadata is checked again.
    #[serde(default = "default_revalidate", with = "humantime_serde")]
    pub revalidate: Duration,
}

/// `[auth]`: which paths need a token, and the keys tokens are checked with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Path prefixes that need a valid token, for example `["/v/"]`.
    #[serde(default)]
    pub protected: Vec<String>,
    /// Key id to hex-encoded secret (at least 16 bytes). Several keys may be valid at once.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// The longest lifetime a token may have left: one whose `exp` is further than this
    /// (plus five minutes for clock skew) after now is refused (`lifetime_too_long`), so that
    /// a leaked long-lived token cannot play for ever. Keep it at least the `ttl` every
    /// minting service uses (steering's `[tokens] ttl` is at most 7 days). Default: 7 days.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            protected: Vec::new(),
            keys: BTreeMap::new(),
            max_ttl: default_max_ttl(),
        }
    }
}

/// `[cache_control]`: the `Cache-Control` header per kind of content.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheControlConfig {
    /// Playlists and manifests (`.m3u8`, `.mpd`): short, they may change.
    #[serde(default = "default_cc_manifest")]
    pub manifest: String,
    /// Media segments and init segments: long and immutable.
    #[serde(default = "default_cc_segment")]
    pub segment: String,
    /// Everything else (subtitles, images, JSON).
    #[serde(default = "default_cc_other")]
    pub other: String,
}

impl Default for CacheControlConfig {
    fn default() -> Self {
        Self {
            manifest: default_cc_manifest(),
            segment: default_cc_segment(),
            other: default_cc_other(),
        }
    }
}

/// `[cors]`: cross-origin access for browser players.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins: `["*"]` for any, or exact origins like `https://player.example`.
    /// An empty list turns CORS headers off.
    #[serde(default = "default_cors_origins")]
    pub allow_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allow_origins: default_cors_origins(),
            max_age: default_cors_max_age(),
        }
    }
}

/// `[limits]`: protective limits. The defaults suit a node with tens of thousands of players.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// How long a new TCP connection (after its TLS handshake, if any) may stay without
    /// sending a byte; protocol detection and the HTTP/2 preface are inside this bound.
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// How long a client may take to send a request head once it has started (against
    /// slowloris); on a new connection, counted from its first byte.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a TLS or QUIC handshake may take.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most open client connections (TCP and QUIC together); further clients wait in the
    /// listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client address (TCP and QUIC together); further ones
    /// are closed (TCP) or refused (QUIC) at once.
    #[serde(default = "estuary_common::listener::default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most concurrent streams per HTTP/2 or HTTP/3 connection.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 Rapid Reset (CVE-2023-44487) defence: most streams a client may open and reset
    /// before the server has answered them; past it the connection gets GOAWAY.
    #[serde(default = "default_max_pending_resets")]
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 (MadeYouReset, CVE-2025-8671) defence: most streams the server resets because
    /// of client errors before it closes the connection.
    #[serde(default = "default_max_local_error_resets")]
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/3 Rapid Reset defence: most request streams a client may cancel (RESET_STREAM or
    /// STOP_SENDING) within 10 s on one connection; past it the connection is closed with
    /// H3_EXCESSIVE_LOAD. A player cancels a request when it switches renditions, a few a
    /// minute; a flood cancels thousands a second.
    #[serde(default = "default_max_pending_resets")]
    pub h3_max_reset_streams: usize,
    /// How long a connection (HTTP/1.1 keep-alive, HTTP/2 even while it answers pings,
    /// HTTP/3) is kept without a request in flight.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl LimitsConfig {
    /// What the TCP connection watch enforces.
    pub fn timeouts(&self) -> estuary_common::listener::Timeouts {
        estuary_common::listener::Timeouts {
            first_byte: self.first_byte_timeout,
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            first_byte_timeout: default_first_byte_timeout(),
            header_read_timeout: default_header_read_timeout(),
            handshake_timeout: default_handshake_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: estuary_common::listener::default_max_connections_per_ip(),
            max_concurrent_streams: default_max_streams(),
            h2_max_pending_reset_streams: default_max_pending_resets(),
            h2_max_local_error_reset_streams: default_max_local_error_resets(),
            h3_max_reset_streams: default_max_pending_resets(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// `[log]`: the access log (operational logs are JSON on standard error).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Where the JSON access log goes: `"stdout"`, `"off"`, or a file path (appended to).
    #[serde(default = "default_access_log")]
    pub access: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            access: default_access_log(),
        }
    }
}

fn default_ram() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(256)
}
fn default_disk() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(1)
}
fn default_max_object() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}
fn default_slice() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(4)
}
fn default_disk_min_fills() -> u32 {
    2
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_stale_if_error() -> Duration {
    Duration::from_secs(86_400)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_breaker_threshold() -> u32 {
    3
}
fn default_breaker_cool_down() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}
fn default_open_files() -> u64 {
    10_000
}
fn default_revalidate() -> Duration {
    Duration::from_secs(10)
}
fn default_cc_manifest() -> String {
    "public, max-age=2".into()
}
fn default_cc_segment() -> String {
    "public, max-age=31536000, immutable".into()
}
fn default_cc_other() -> String {
    "public, max-age=300".into()
}
fn default_cors_origins() -> Vec<String> {
    vec!["*".into()]
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    64
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    50_000
}
fn default_max_streams() -> u32 {
    100
}
fn default_max_pending_resets() -> usize {
    20
}
fn default_max_local_error_resets() -> usize {
    1024
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_access_log() -> String {
    "stdout".into()
}

impl EdgeConfig {
    /// Parses a config text; errors name the key at fault. Relative file paths are resolved
    /// against `base_dir` (the config file's folder).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::deserialize_text(text)?;
        config.resolve_paths(base_dir);
        config.validate()?;
        Ok(config)
    }

    /// Deserializes a config text without resolving paths or validating values.
    pub fn deserialize_text(text: &str) -> Result<Self, ConfigError> {
        estuary_common::config::from_toml(text)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.store.root);
        if let Some(dir) = &mut self.cache.disk_dir {
            resolve(dir);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        if let Some(ca) = self.control_plane.as_mut().and_then(|c| c.ca_file.as_mut()) {
            resolve(ca);
        }
        if let Some(ca) = self.upstream.as_mut().and_then(|u| u.ca_file.as_mut()) {
            resolve(ca);
        }
        if !matches!(self.log.access.as_str(), "stdout" | "off") {
            let mut p = PathBuf::from(&self.log.access);
            resolve(&mut p);
            self.log.access = p.to_string_lossy().into_owned();
        }
    }

    /// Checks everything that can be checked before start: addresses, files, keys, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let keys = estuary_common::signing::ManifestKeys::from_hex(&self.manifest_keys)
            .map_err(|(id, why)| ConfigError::new(format!("manifest_keys.{id}"), why))?;
        if self.control_plane.is_some() && keys.is_empty() {
            return Err(ConfigError::new(
                "manifest_keys",
                "required with [control_plane]: pre-positioning trusts an asset.json only with a signature from one of these keys (estuary manifest keygen prints a pair)",
            ));
        }
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if let Some([a, b]) = self.prepositioning.window
            && (a > 23 || b > 23 || a == b)
        {
            return Err(ConfigError::new(
                "prepositioning.window",
                "two different UTC hours 0-23, [start, end]",
            ));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !name_ok(&self.node.id) {
            return Err(ConfigError::new(
                "node.id",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !name_ok(&self.node.site) {
            return Err(ConfigError::new(
                "node.site",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        let l = &self.listen;
        if l.http.is_none() && l.https.is_none() {
            return Err(ConfigError::new(
                "listen",
                "set at least one of `http` or `https`",
            ));
        }
        let addrs = [
            ("listen.http", l.http),
            ("listen.https", l.https),
            ("listen.admin", l.admin),
        ];
        for (i, (name_a, a)) in addrs.iter().enumerate() {
            for (name_b, b) in &addrs[i + 1..] {
                if a.is_some() && a == b {
                    return Err(ConfigError::new(
                        *name_b,
                        format!("the same address as {name_a}"),
                    ));
                }
            }
        }
        if l.https.is_some() {
            let Some(tls) = &self.tls else {
                return Err(ConfigError::new(
                    "tls",
                    "listen.https is set, so [tls] with `cert` and `key` is required",
                ));
            };
            estuary_common::tls::load_certified_key(&tls.cert, &tls.key).map_err(|e| {
                let key = match e {
                    estuary_common::tls::TlsError::Key { .. } => "tls.key",
                    _ => "tls.cert",
                };
                ConfigError::new(key, e.to_string())
            })?;
        }
        match std::fs::metadata(&self.store.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ConfigError::new("store.root", "is not a folder")),
            Err(e) => {
                return Err(ConfigError::new(
                    "store.root",
                    format!("cannot open {}: {e}", self.store.root.display()),
                ));
            }
        }
        if self.store.open_files == 0 {
            return Err(ConfigError::new("store.open_files", "must be at least 1"));
        }
        for (i, prefix) in self.auth.protected.iter().enumerate() {
            if !prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("auth.protected[{i}]"),
                    "a path prefix must start with '/'",
                ));
            }
        }
        if self.auth.max_ttl.is_zero() {
            return Err(ConfigError::new("auth.max_ttl", "must be longer than zero"));
        }
        if !self.auth.protected.is_empty() && self.auth.keys.is_empty() {
            return Err(ConfigError::new(
                "auth.keys",
                "auth.protected lists paths, so at least one key is needed to check tokens",
            ));
        }
        self.key_set()?;
        for (name, value) in [
            ("cache_control.manifest", &self.cache_control.manifest),
            ("cache_control.segment", &self.cache_control.segment),
            ("cache_control.other", &self.cache_control.other),
        ] {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(name, "is not a valid header value"));
            }
        }
        for (i, origin) in self.cors.allow_origins.iter().enumerate() {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                return Err(ConfigError::new(
                    format!("cors.allow_origins[{i}]"),
                    "must be \"*\" or an origin like \"https://player.example\" (no path)",
                ));
            }
        }
        if let Some(up) = &self.upstream {
            if up.origin.is_empty() {
                return Err(ConfigError::new(
                    "upstream.origin",
                    "list at least one origin",
                ));
            }
            if let Some(ca) = &up.ca_file {
                estuary_common::http::root_store(Some(ca))
                    .map_err(|e| ConfigError::new("upstream.ca_file", e.to_string()))?;
            }
            for (name, list) in [
                ("upstream.origin", &up.origin),
                ("upstream.parents", &up.parents),
            ] {
                for (i, url) in list.iter().enumerate() {
                    let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https"))
                            && u.host().is_some()
                            && u.path() == "/"
                            && !url.ends_with('/')
                    });
                    if !ok {
                        return Err(ConfigError::new(
                            format!("{name}[{i}]"),
                            "must be a base URL like \"http://10.0.0.1:9000\" (http or https, no path)",
                        ));
                    }
                }
            }
            for (name, d) in [
                ("upstream.connect_timeout", up.connect_timeout),
                ("upstream.read_timeout", up.read_timeout),
            ] {
                if d.is_zero() {
                    return Err(ConfigError::new(name, "must be longer than zero"));
                }
            }
        }
        if self.cache.ram.as_u64() < 1024 * 1024 {
            return Err(ConfigError::new("cache.ram", "must be at least 1MiB"));
        }
        if self.cache.max_object.as_u64() < 64 * 1024 || self.cache.max_object.as_u64() > 1 << 30 {
            return Err(ConfigError::new(
                "cache.max_object",
                "must be between 64KiB and 1GiB",
            ));
        }
        let slice = self.cache.slice.as_u64();
        if slice != 0 && (slice < 64 * 1024 || slice > self.cache.max_object.as_u64()) {
            return Err(ConfigError::new(
                "cache.slice",
                "must be 0 (no slicing) or between 64KiB and cache.max_object",
            ));
        }
        if !(1..=100).contains(&self.cache.disk_min_fills) {
            return Err(ConfigError::new(
                "cache.disk_min_fills",
                "must be between 1 and 100",
            ));
        }
        if self.cache.disk_dir.is_some()
            && self.cache.disk.as_u64() < 4 * self.cache.max_object.as_u64()
        {
            return Err(ConfigError::new(
                "cache.disk",
                "must hold at least four objects of cache.max_object",
            ));
        }
        if let Some(dir) = &self.cache.disk_dir {
            crate::disk_space::check(dir, self.cache.disk.as_u64())
                .map_err(|why| ConfigError::new("cache.disk", why))?;
        }
        for (name, token) in &self.admin.tokens {
            if token.len() < 16 {
                return Err(ConfigError::new(
                    format!("admin.tokens.{name}"),
                    "must be at least 16 characters",
                ));
            }
        }
        let lim = &self.limits;
        if lim.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "limits.max_header_bytes",
                "must be at least 8192",
            ));
        }
        if lim.max_headers == 0 {
            return Err(ConfigError::new("limits.max_headers", "must be at least 1"));
        }
        if lim.max_connections == 0 {
            return Err(ConfigError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if lim.max_connections_per_ip == 0 {
            return Err(ConfigError::new(
                "limits.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        if lim.max_concurrent_streams == 0 {
            return Err(ConfigError::new(
                "limits.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        for (name, d) in [
            ("limits.first_byte_timeout", lim.first_byte_timeout),
            ("limits.header_read_timeout", lim.header_read_timeout),
            ("limits.handshake_timeout", lim.handshake_timeout),
            ("limits.idle_timeout", lim.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(name, "must be longer than zero"));
            }
        }
        Ok(())
    }

    /// The token keys, decoded.
    pub fn key_set(&self) -> Result<estuary_common::token::KeySet, ConfigError> {
        estuary_common::token::KeySet::from_config(&self.auth.keys, "auth.keys")
    }
}

impl estuary_common::config::ServiceConfig for EdgeConfig {
    const SERVICE: &'static str = "edge";

    /// An edge config has `[store]` (with a `root`; a chat relay's `[store]` has a `path`).
    fn claims(table: &estuary_common::config::Table) -> bool {
        estuary_common::config::subtable(table, "store")
            .is_some_and(|s| s.contains_key("root") || !s.contains_key("path"))
    }

    fn parse_text(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        std::env::temp_dir()
    }

    const MINIMAL: &str = r#"
[node]
id = "edge-1"
site = "lab"
[listen]
http = "127.0.0.1:8080"
[store]
root = "."
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = EdgeConfig::parse(MINIMAL, &base()).expect("parses");
        assert_eq!(c.limits.max_concurrent_streams, 100);
        assert_eq!(c.cors.allow_origins, vec!["*".to_string()]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = MINIMAL.replace("http =", "htps =");
        let e = EdgeConfig::parse(&text, &base()).expect_err("must fail");
        assert_eq!(e.key, "listen.htps");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let text = format!("{MINIMAL}[limits]\nheader_read_timeout = \"soon\"\n");
        let e = EdgeConfig::parse(&text, &base()).expect_err("must fail");
        assert_eq!(e.key, "limits.header_read_timeout");

        let text = format!("{MINIMAL}[auth]\nprotected = [\"/v/\"]\n[auth.keys]\nk1 = \"zz\"\n");
        let e = EdgeConfig::parse(&text, &base()).expect_err("must fail");
        assert_eq!(e.key, "auth.keys.k1");

        let text = MINIMAL.replace("root = \".\"", "root = \"/no/such/folder\"");
        let e = EdgeConfig::parse(&text, &base()).expect_err("must fail");
        assert_eq!(e.key, "store.root");

        let text = MINIMAL.replace("http = ", "https = ");
        let e = EdgeConfig::parse(&text, &base()).expect_err("must fail");
        assert_eq!(e.key, "tls");
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../docs/edge.example.toml");
        let c = EdgeConfig::deserialize_text(text).expect("example parses");
        assert_eq!(c.auth.protected, vec!["/v/".to_string()]);
        assert!(c.listen.https.is_some());
    }
}
