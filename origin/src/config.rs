//! The origin's configuration file (TOML). Unknown keys are errors, so that a typo in a
//! generated config fails loudly instead of being ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use estuary_common::packaging::{SEGMENT_SECONDS, X264_PRESETS};
use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole origin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Who this node is (metrics labels, logs).
    #[serde(default)]
    pub node: NodeConfig,
    pub listen: ListenConfig,
    /// Where packaged assets are kept and served from.
    pub storage: StorageConfig,
    /// The origin's own state: the SQLite database, uploads in progress, packaging work.
    #[serde(default)]
    pub state: StateConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub uploads: UploadsConfig,
    #[serde(default)]
    pub packaging: PackagingConfig,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
    /// `[limits]`: how long a client may take and how many connections it may hold, on every
    /// listener (see `estuary_common::listener`).
    #[serde(default)]
    pub limits: estuary_common::listener::ListenerLimits,
    /// Registration and heartbeats; without it the origin runs standalone.
    #[serde(default)]
    pub control_plane: Option<estuary_common::cp::ClientConfig>,
    /// The key this origin signs every `asset.json` with when it publishes it. Edges and the
    /// control plane trust an asset only with a signature from a key in their
    /// `[manifest_keys]`, so without it nothing this origin publishes can be pre-positioned.
    #[serde(default)]
    pub signing: Option<SigningConfig>,
}

/// `[signing]` (`estuary manifest keygen` makes a key pair).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The key's id, written into each `asset.json.sig` (verifiers look the public key up by
    /// it): 1-32 of `A-Z a-z 0-9 - _ .`.
    pub key_id: String,
    /// The Ed25519 secret key, 64 hex digits. Keep it only on origins.
    pub key: String,
}

impl SigningConfig {
    /// The signer; `Err` names the bad key.
    pub fn signer(&self) -> Result<estuary_common::signing::ManifestSigner, ConfigError> {
        if !estuary_common::key_id::valid(&self.key_id) {
            return Err(ConfigError::new(
                "signing.key_id",
                estuary_common::key_id::RULE,
            ));
        }
        estuary_common::signing::ManifestSigner::from_hex(&self.key_id, &self.key)
            .map_err(|e| ConfigError::new("signing.key", e))
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default = "default_node_id")]
    pub id: String,
    #[serde(default = "default_site")]
    pub site: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: default_node_id(),
            site: default_site(),
        }
    }
}

/// `[listen]`: `http` serves assets under `/v/`, uploads under `/uploads/` and the API under
/// `/v1/`.
pub use estuary_common::listener::ListenConfig;

/// `[storage]`: exactly one of `root` (a local folder) or `url` (an S3-compatible bucket).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A local folder; assets live under `<root>/v/<asset>/`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `s3://bucket` or `s3://bucket/prefix`; assets live under `<prefix>/v/<asset>/`.
    #[serde(default)]
    pub url: Option<String>,
    /// Settings of the S3-compatible service (with `url`).
    #[serde(default)]
    pub s3: S3Config,
    /// The longest any one storage call may take (a read's answer, a write of one object
    /// plus a second per MiB of it, a delete, a listing page; a body being streamed to a
    /// client may pause this long between pieces). A store that does not answer in time
    /// counts as failing: a publish is retried, a request answers 503.
    #[serde(default = "default_storage_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long `/readyz` waits for the storage check (the bucket or folder is there and
    /// answers a listing) before it answers 503.
    #[serde(default = "default_readiness_timeout", with = "humantime_serde")]
    pub readiness_timeout: Duration,
    /// Objects under `v/<asset>/` without an `asset.json` and without a job of this origin
    /// in progress are removed by the sweep at start once the newest of them is this old
    /// (a half-published asset). The age protects an asset another origin sharing the
    /// bucket is publishing right now.
    #[serde(default = "default_orphan_min_age", with = "humantime_serde")]
    pub orphan_min_age: Duration,
}

/// `[storage.s3]`. Credentials may also come from the usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's URL, for S3-compatible servers (MinIO, Ceph, moto): `http://host:port`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (labs and tests).
    #[serde(default)]
    pub allow_http: bool,
}

/// `[state]`. Without `dir` (empty here), `OriginConfig::parse` sets the storage's own folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Holds `origin.db` (SQLite: uploads and the job queue), `uploads/` (bytes received) and
    /// `work/` (packaging output before it is published). Must be a local filesystem. The
    /// state belongs to one `[storage]`: the database records which, and the origin refuses
    /// to start with another. Default: `/var/lib/estuary/origin/<storage>`, a folder of its
    /// own for each storage, so two origins with different storage never share one.
    #[serde(default)]
    pub dir: PathBuf,
}

/// The folder the default state folders are made in.
const STATE_BASE: &str = "/var/lib/estuary/origin";

impl StorageConfig {
    /// What tells this storage from another: `file://<root>`, or the bucket URL (with its
    /// prefix) and the service's endpoint when one is set. The state database records it.
    pub fn identity(&self) -> String {
        match (&self.root, &self.url) {
            (Some(root), _) => format!("file://{}", root.display()),
            (None, Some(url)) => {
                let url = url.trim_end_matches('/');
                match &self.s3.endpoint {
                    Some(endpoint) => format!("{url} at {}", endpoint.trim_end_matches('/')),
                    None => url.to_owned(),
                }
            }
            (None, None) => String::new(),
        }
    }

    /// The default `[state] dir` of this storage: one folder per storage identity, named by
    /// the identity's hash (a path or URL does not make a file name).
    pub fn default_state_dir(&self) -> PathBuf {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(self.identity().as_bytes());
        let name: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        Path::new(STATE_BASE).join(format!("storage-{name}"))
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens allowed to upload and manage assets, by name (the name is logged, never
    /// the token). At least 16 characters each. Either `name = "<token>"` (every asset) or a
    /// table `[auth.upload_tokens.<name>] token = "...", assets = "<prefix>*"`: that token
    /// uploads, reads the status of and deletes only the assets whose id matches.
    pub upload_tokens: BTreeMap<String, UploadToken>,
    /// `[auth.upload_keys]`: key id to hex secret (at least 32 hex digits), shared with chat
    /// relays (their `[media] upload_key`). A bearer token in the edge token format signed
    /// with one of them, whose acl is `/uploads/raw/<asset>/<size>/<type>/<subtype>`, creates
    /// exactly one upload: of that asset (ids starting with `chat-`), of exactly that size,
    /// published as is (never packaged) once its bytes are checked to be of that type.
    #[serde(default)]
    pub upload_keys: BTreeMap<String, String>,
}

impl AuthConfig {
    /// The keys of raw-upload credentials.
    pub fn upload_key_set(&self) -> Result<estuary_common::token::KeySet, ConfigError> {
        estuary_common::token::KeySet::from_config(&self.upload_keys, "auth.upload_keys")
    }
}

/// One upload token.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UploadToken {
    /// A token for every asset.
    Any(String),
    /// A token scoped to some assets.
    Scoped(ScopedUploadToken),
}

/// `[auth.upload_tokens.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedUploadToken {
    pub token: String,
    /// The asset ids it manages: `"*"` (all), `"<prefix>*"` or one id.
    pub assets: String,
}

/// Which assets a token manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetScope {
    All,
    Prefix(String),
    One(String),
}

impl AssetScope {
    /// Parses `"*"`, `"<prefix>*"` or an asset id.
    pub fn parse(pattern: &str) -> Option<Self> {
        let id_chars = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match pattern.strip_suffix('*') {
            Some("") => Some(Self::All),
            Some(p) if p.len() <= 40 && id_chars(p) && !p.starts_with(['-', '_']) => {
                Some(Self::Prefix(p.to_owned()))
            }
            Some(_) => None,
            None => estuary_common::asset::valid_asset_id(pattern)
                .then(|| Self::One(pattern.to_owned())),
        }
    }

    /// Whether the scope covers asset `id`.
    pub fn covers(&self, id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(p) => id.starts_with(p.as_str()),
            Self::One(one) => one == id,
        }
    }
}

impl UploadToken {
    pub fn token(&self) -> &str {
        match self {
            Self::Any(t) => t,
            Self::Scoped(s) => &s.token,
        }
    }

    /// The assets it manages (`All` for a pattern that does not parse; `validate` refuses
    /// those before start).
    pub fn scope(&self) -> AssetScope {
        match self {
            Self::Any(_) => AssetScope::All,
            Self::Scoped(s) => {
                AssetScope::parse(&s.assets).unwrap_or(AssetScope::One(String::new()))
            }
        }
    }
}

/// `[uploads]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// The largest upload accepted (`Tus-Max-Size`).
    #[serde(default = "default_max_size")]
    pub max_size: bytesize::ByteSize,
    /// Uploads not completed within this time are removed.
    #[serde(default = "default_upload_expiry", with = "humantime_serde")]
    pub expire_after: Duration,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            max_size: default_max_size(),
            expire_after: default_upload_expiry(),
        }
    }
}

/// `[packaging]`: how completed uploads become assets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagingConfig {
    /// The rungs of the ladder, by name (`720p`; 2160p, 1440p, 1080p, 720p, 480p, 360p, 240p
    /// and 144p have a default bitrate) or with a bitrate in kb/s (`900p@4000k`): the rules of
    /// `estuary package --ladder`, checked at start.
    #[serde(default = "default_ladder")]
    pub ladder: Vec<String>,
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: u32,
    /// The x264 preset.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Jobs packaged at once (each already uses every core).
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// A job that runs longer is stopped and fails.
    #[serde(default = "default_job_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Times a job is started before it counts as failed. A job runs again after a failure
    /// that is not its input's fault (storage unavailable while publishing, the packager
    /// killed by a signal or out of memory, an interrupted origin); a file that is not media
    /// or is not supported fails at once.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The wait before the second attempt; each further attempt waits twice as long as the
    /// one before, up to `retry_backoff_max`.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(default = "default_retry_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// The `estuary` program that packages (default: this program).
    #[serde(default)]
    pub program: Option<PathBuf>,
}

impl Default for PackagingConfig {
    fn default() -> Self {
        Self {
            ladder: default_ladder(),
            segment_seconds: default_segment_seconds(),
            preset: default_preset(),
            workers: default_workers(),
            timeout: default_job_timeout(),
            max_attempts: default_attempts(),
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
            program: None,
        }
    }
}

fn default_node_id() -> String {
    "origin-1".into()
}
fn default_site() -> String {
    "origin".into()
}
fn default_max_size() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(50)
}
fn default_upload_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_ladder() -> Vec<String> {
    estuary_common::packaging::DEFAULT_LADDER
        .split(',')
        .map(String::from)
        .collect()
}
fn default_segment_seconds() -> u32 {
    4
}
fn default_preset() -> String {
    "veryfast".into()
}
fn default_workers() -> u32 {
    1
}
fn default_job_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_attempts() -> u32 {
    5
}
fn default_retry_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_storage_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_readiness_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_orphan_min_age() -> Duration {
    Duration::from_secs(3600)
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl OriginConfig {
    /// Parses a config text; errors name the key at fault. Relative paths are resolved against
    /// `base_dir` (the config file's folder).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = estuary_common::config::from_toml(text)?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        if let Some(root) = &mut config.storage.root {
            resolve(root);
        }
        if !config.state.dir.as_os_str().is_empty() {
            resolve(&mut config.state.dir);
        }
        if let Some(p) = &mut config.packaging.program {
            resolve(p);
        }
        if let Some(ca) = config
            .control_plane
            .as_mut()
            .and_then(|c| c.ca_file.as_mut())
        {
            resolve(ca);
        }
        config.validate()?;
        if config.state.dir.as_os_str().is_empty() {
            config.state.dir = config.storage.default_state_dir();
        }
        Ok(config)
    }

    /// Checks what can be checked before start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use estuary_common::config::name_ok;
        self.limits.validate()?;
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if let Some(signing) = &self.signing {
            signing.signer()?;
        }
        if !name_ok(&self.node.id) {
            return Err(ConfigError::new(
                "node.id",
                "must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if !name_ok(&self.node.site) {
            return Err(ConfigError::new(
                "node.site",
                "must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        match (&self.storage.root, &self.storage.url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "storage",
                    "set either root (a local folder) or url (s3://bucket), not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "storage",
                    "set root (a local folder) or url (s3://bucket)",
                ));
            }
            (None, Some(u)) => {
                let parsed = url::Url::parse(u)
                    .map_err(|e| ConfigError::new("storage.url", format!("not a URL: {e}")))?;
                if parsed.scheme() != "s3" || parsed.host_str().unwrap_or("").is_empty() {
                    return Err(ConfigError::new(
                        "storage.url",
                        "must be s3://bucket or s3://bucket/prefix",
                    ));
                }
                if let Some(e) = &self.storage.s3.endpoint {
                    let ep = url::Url::parse(e).map_err(|e| {
                        ConfigError::new("storage.s3.endpoint", format!("not a URL: {e}"))
                    })?;
                    if ep.scheme() == "http" && !self.storage.s3.allow_http {
                        return Err(ConfigError::new(
                            "storage.s3.endpoint",
                            "is plain http: set storage.s3.allow_http = true to allow it",
                        ));
                    }
                }
            }
            (Some(_), None) => {}
        }
        if self.auth.upload_tokens.is_empty() {
            return Err(ConfigError::new(
                "auth.upload_tokens",
                "needs at least one token",
            ));
        }
        for (name, token) in &self.auth.upload_tokens {
            if token.token().len() < 16 {
                return Err(ConfigError::new(
                    format!("auth.upload_tokens.{name}"),
                    "must be at least 16 characters",
                ));
            }
            if let UploadToken::Scoped(s) = token
                && AssetScope::parse(&s.assets).is_none()
            {
                return Err(ConfigError::new(
                    format!("auth.upload_tokens.{name}.assets"),
                    "\"*\", \"<prefix>*\" (a-z A-Z 0-9 - _, at most 40) or one asset id",
                ));
            }
        }
        self.auth.upload_key_set()?;
        if self.uploads.max_size.as_u64() == 0 {
            return Err(ConfigError::new("uploads.max_size", "must be above 0"));
        }
        let p = &self.packaging;
        if p.ladder.is_empty() {
            return Err(ConfigError::new("packaging.ladder", "needs a rendition"));
        }
        // The packager's own rules: a ladder accepted here is one `estuary package` takes.
        if let Err(e) = estuary_common::packaging::parse_ladder(p.ladder.iter().map(String::as_str))
        {
            return Err(ConfigError::new("packaging.ladder", e.to_string()));
        }
        if !SEGMENT_SECONDS.contains(&p.segment_seconds) {
            return Err(ConfigError::new(
                "packaging.segment_seconds",
                format!(
                    "must be between {} and {}",
                    SEGMENT_SECONDS.start(),
                    SEGMENT_SECONDS.end()
                ),
            ));
        }
        if !X264_PRESETS.contains(&p.preset.as_str()) {
            return Err(ConfigError::new(
                "packaging.preset",
                format!("not an x264 preset (one of {})", X264_PRESETS.join(", ")),
            ));
        }
        if !(1..=16).contains(&p.workers) {
            return Err(ConfigError::new(
                "packaging.workers",
                "must be between 1 and 16",
            ));
        }
        if !(1..=100).contains(&p.max_attempts) {
            return Err(ConfigError::new(
                "packaging.max_attempts",
                "must be between 1 and 100",
            ));
        }
        if p.retry_backoff < Duration::from_millis(100) || p.retry_backoff > DAY {
            return Err(ConfigError::new(
                "packaging.retry_backoff",
                "must be between 100ms and 1 day",
            ));
        }
        if p.retry_backoff_max < p.retry_backoff || p.retry_backoff_max > DAY {
            return Err(ConfigError::new(
                "packaging.retry_backoff_max",
                "must be at least retry_backoff and at most 1 day",
            ));
        }
        let st = &self.storage;
        for (key, value) in [
            ("storage.timeout", st.timeout),
            ("storage.readiness_timeout", st.readiness_timeout),
        ] {
            if value < Duration::from_millis(100) || value > Duration::from_secs(600) {
                return Err(ConfigError::new(
                    key,
                    "must be between 100ms and 10 minutes",
                ));
            }
        }
        if st.orphan_min_age > Duration::from_secs(30 * 24 * 3600) {
            return Err(ConfigError::new(
                "storage.orphan_min_age",
                "must be at most 30 days",
            ));
        }
        if p.timeout.is_zero() {
            return Err(ConfigError::new("packaging.timeout", "must be above zero"));
        }
        Ok(())
    }
}

impl estuary_common::config::ServiceConfig for OriginConfig {
    const SERVICE: &'static str = "origin";

    fn claims(table: &estuary_common::config::Table) -> bool {
        table.contains_key("storage")
    }

    fn parse_text(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[listen]
http = "127.0.0.1:9000"
[storage]
root = "/srv/estuary/origin"
[auth.upload_tokens]
ops = "0123456789abcdef0123"
"#;

    #[test]
    fn upload_keys_are_checked_and_named() {
        let with = |keys: &str| {
            OriginConfig::parse(
                &format!("{GOOD}[auth.upload_keys]\n{keys}\n"),
                Path::new("/etc"),
            )
        };
        let c = with("relay = \"00112233445566778899aabbccddeeff\"").expect("good key");
        assert!(!c.auth.upload_key_set().expect("keys").is_empty());
        let e = with("relay = \"00ff\"").expect_err("short");
        assert_eq!(e.key, "auth.upload_keys.relay");
        let e = with("relay = \"xyz\"").expect_err("not hex");
        assert_eq!(e.key, "auth.upload_keys.relay");
    }

    #[test]
    fn the_default_state_dir_is_the_storages_own() {
        let state = |text: &str| {
            OriginConfig::parse(text, Path::new("/etc"))
                .expect(text)
                .state
                .dir
        };
        let a = state(GOOD);
        assert!(a.starts_with(STATE_BASE), "{}", a.display());
        assert_eq!(a, state(GOOD), "one storage, one folder");
        let other = |storage: &str| GOOD.replace("root = \"/srv/estuary/origin\"", storage);
        let b = state(&other("root = \"/srv/estuary/other\""));
        let bucket = state(&other("url = \"s3://media/live\""));
        let prefix = state(&other("url = \"s3://media/vod\""));
        let endpoint = state(&other(
            "url = \"s3://media/vod\"\n[storage.s3]\nendpoint = \"https://minio.lab:9000\"",
        ));
        let all = [&a, &b, &bucket, &prefix, &endpoint];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y, "two storages share a state folder");
            }
        }
        // A folder that is set is kept (relative to the config's folder).
        assert_eq!(
            state(&format!("{GOOD}[state]\ndir = \"state\"\n")),
            Path::new("/etc/state")
        );
    }

    #[test]
    fn the_minimal_config_parses_and_mistakes_name_their_key() {
        let c = OriginConfig::parse(GOOD, Path::new("/etc")).expect("good");
        assert_eq!(c.packaging.ladder.len(), 5);
        // Every rung the packager takes, the origin takes (it knew five of the eight names).
        let ladder = "[packaging]\nladder = [\"2160p\", \"1440p\", \"144p\", \"900p@4000k\"]\n";
        let c = OriginConfig::parse(&format!("{GOOD}{ladder}"), Path::new("/etc")).expect("ladder");
        assert_eq!(c.packaging.ladder.len(), 4);
        let bad = |text: &str, key: &str| {
            let e = OriginConfig::parse(text, Path::new("/etc")).expect_err(text);
            assert!(e.key.starts_with(key), "{e} (wanted {key})");
        };
        bad(&GOOD.replace("[storage]", "[storag]"), "storag");
        bad(
            &GOOD.replace("0123456789abcdef0123", "short"),
            "auth.upload_tokens.ops",
        );
        bad(
            &format!("{GOOD}[packaging]\nladder = [\"4k\"]\n"),
            "packaging.ladder",
        );
        bad(
            &format!("{GOOD}[packaging]\nladder = [\"720p\", \"720p@900k\"]\n"),
            "packaging.ladder",
        );
        bad(
            &format!("{GOOD}[packaging]\nladder = [\"900p\"]\n"),
            "packaging.ladder",
        );
        bad(
            &GOOD.replace("root = \"/srv/estuary/origin\"", "url = \"http://x\""),
            "storage.url",
        );
        bad(
            &GOOD.replace(
                "root = \"/srv/estuary/origin\"",
                "url = \"s3://b\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:1\"",
            ),
            "storage.s3.endpoint",
        );
        bad(
            &format!("{GOOD}[uploads]\nmax_size = \"lots\"\n"),
            "uploads.max_size",
        );
        bad(
            &format!("{GOOD}[packaging]\nmax_attempts = 0\n"),
            "packaging.max_attempts",
        );
        bad(
            &format!("{GOOD}[packaging]\nretry_backoff = \"1ms\"\n"),
            "packaging.retry_backoff",
        );
        bad(
            &format!("{GOOD}[packaging]\nretry_backoff = \"1m\"\nretry_backoff_max = \"30s\"\n"),
            "packaging.retry_backoff_max",
        );
        bad(
            &GOOD.replace("[auth", "timeout = \"0s\"\n[auth"),
            "storage.timeout",
        );
        bad(
            &GOOD.replace("[auth", "readiness_timeout = \"1h\"\n[auth"),
            "storage.readiness_timeout",
        );
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../docs/origin.example.toml");
        OriginConfig::parse(text, Path::new("/etc")).expect("docs/origin.example.toml");
    }
}
