//! The control plane's configuration file (TOML). Unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole control-plane configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    pub listen: ListenConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub client: ClientConfig,
    /// `[tls]`: with it, the API (`listen.http`) speaks HTTPS only.
    #[serde(default)]
    pub tls: Option<estuary_common::tls::TlsFiles>,
    pub auth: AuthConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub purge: PurgeConfig,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
    /// `[limits]`: how long a client may take and how many connections it may hold, on every
    /// listener (see `estuary_common::listener`).
    #[serde(default)]
    pub limits: estuary_common::listener::ListenerLimits,
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Key id -> Ed25519 public key (64 hex digits) of the origins whose signed `asset.json`
    /// the control plane trusts: a push reads the asset's size from a manifest only after its
    /// `asset.json.sig` verifies with one of them. Without keys, pushes are refused.
    #[serde(default)]
    pub manifest_keys: BTreeMap<String, String>,
    /// `[meetings]`: `POST /v1/meetings` places meetings on SFUs and signs their room tokens.
    /// Without it, the meeting endpoints answer 404.
    #[serde(default)]
    pub meetings: Option<MeetingsConfig>,
}

/// `[meetings]`: how meetings are placed on SFUs and how their room tokens are signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingsConfig {
    /// The key id put in room tokens: one of the SFUs' `[auth.keys]`.
    pub key_id: String,
    /// That key's secret, in hex (the same as the SFUs' `[auth.keys] <key_id>`; at least 16
    /// bytes).
    pub key: String,
    /// How long a room token is good for from when it is handed out; at most the SFUs'
    /// `[auth] max_ttl` (1 minute to 1 day).
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// A new (or moved) meeting keeps its SFU this long even before the SFU lists its room in
    /// a heartbeat; after that, only while the SFU lists it (10 s to 1 day).
    #[serde(default = "default_meeting_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// Peers one SFU carries at full load: an SFU's load is the larger of its CPU share and
    /// its peers over this.
    #[serde(default = "default_peers_per_sfu")]
    pub peers_per_sfu: u64,
    /// SFUs at or above this load take no new meeting while another SFU is below it.
    #[serde(default = "default_meeting_load_threshold")]
    pub load_threshold: f64,
    /// The most meetings kept at once; beyond it (after ended ones are forgotten), 503.
    #[serde(default = "default_max_meetings")]
    pub max_meetings: usize,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_meeting_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_peers_per_sfu() -> u64 {
    500
}
fn default_meeting_load_threshold() -> f64 {
    0.9
}
fn default_max_meetings() -> usize {
    100_000
}

impl MeetingsConfig {
    /// The signing secret (checked by `validate`).
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        if !estuary_common::key_id::valid(&self.key_id) {
            return Err(ConfigError::new(
                "meetings.key_id",
                estuary_common::key_id::RULE,
            ));
        }
        estuary_common::token::decode_secret(&self.key)
            .map_err(|e| ConfigError::new("meetings.key", e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.secret()?;
        if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&self.token_ttl) {
            return Err(ConfigError::new(
                "meetings.token_ttl",
                "must be 1min to 1day",
            ));
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&self.grace) {
            return Err(ConfigError::new("meetings.grace", "must be 10s to 1day"));
        }
        if !(1..=10_000_000).contains(&self.peers_per_sfu) {
            return Err(ConfigError::new(
                "meetings.peers_per_sfu",
                "must be 1 to 10000000",
            ));
        }
        if !(self.load_threshold > 0.0 && self.load_threshold <= 1.0) {
            return Err(ConfigError::new(
                "meetings.load_threshold",
                "must be above 0 and at most 1",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_meetings) {
            return Err(ConfigError::new(
                "meetings.max_meetings",
                "must be 1 to 10000000",
            ));
        }
        Ok(())
    }
}

/// `[dashboard]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Time between two points of the last hour's plots (bandwidth and hit ratio per site);
    /// 1s to 5min.
    #[serde(default = "default_history_step", with = "humantime_serde")]
    pub history_step: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            history_step: default_history_step(),
        }
    }
}

fn default_history_step() -> Duration {
    Duration::from_secs(10)
}

/// `[purge]`: how purges reach the edges.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeConfig {
    /// Deprecated: a token every edge accepts (one of the edges' `[admin.tokens]`), presented
    /// only to edges registered with a site token of `[auth.node_tokens]`. An edge with its
    /// own credential in `[auth.nodes]` is sent purges with that credential, which it alone
    /// holds, so no node can capture a secret that purges another.
    #[serde(default)]
    pub edge_token: Option<String>,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The API (`/v1/`), the state feed, and `/metrics`, `/healthz`, `/readyz`.
    pub http: SocketAddr,
}

/// `[client]`: the control plane's own calls to nodes (health polls, purges, origin probes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// A PEM bundle of CA certificates trusted besides the system's, for nodes whose
    /// advertised addresses are `https://` (the fleet's private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:///var/lib/estuary/control-plane.db` (one file, one control plane; the
    /// default), or `postgres://user@host/db` (also `postgresql://`, and every libpq URL
    /// parameter tokio-postgres knows, e.g. `?host=/run/postgresql` for a Unix socket) for two
    /// or more control-plane replicas sharing one database. TLS to PostgreSQL is not built in
    /// (`sslmode=require` is refused): reach it over a local socket or a private network.
    pub url: String,
    /// Longest wait for one database call. A database that does not answer in time counts
    /// as unavailable: heartbeats still count (their writes are queued), the state feed
    /// answers from memory, and writes (push, purge, sites) answer 503.
    #[serde(default = "default_db_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Which database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseConfig {
    /// The database the URL names, or why it names none.
    pub fn database(&self) -> Result<Database, String> {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            crate::store::check_postgres_url(&self.url)?;
            return Ok(Database::Postgres(self.url.clone()));
        }
        self.sqlite_path()
            .map(Database::Sqlite)
            .ok_or_else(|| "must be sqlite:///path/to/file.db or postgres://user@host/db".into())
    }

    /// The SQLite file the URL names.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url
            .strip_prefix("sqlite://")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Name -> bearer token for operators (the name goes to the audit log).
    pub operator_tokens: BTreeMap<String, String>,
    /// Deprecated (kept for one release): site -> a token shared by that site's nodes. It is
    /// good only for heartbeats of role `edge` in its own site, for node ids that have no
    /// credential in `[auth.nodes]`; every use is logged with a deprecation warning.
    #[serde(default)]
    pub node_tokens: BTreeMap<String, String>,
    /// Node id -> that node's own credential, bound to its site and role. A heartbeat whose
    /// node id, site or role differs from its credential is refused (403) and audited.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeCredential>,
    /// Site -> the networks its nodes' advertised addresses must lie in (IP literals only).
    /// A site without an entry accepts any address. The health monitor and the purge
    /// deliverer only ever contact addresses that passed this check.
    #[serde(default)]
    pub site_networks: BTreeMap<String, Vec<ipnet::IpNet>>,
    /// A heartbeat from another process (a new `instance`) for a node whose current process
    /// sent a heartbeat less than this long ago is refused (409) and audited: two live
    /// processes never share one node id. A node that stops cleanly releases its id at once;
    /// one that crashed is taken over after this long.
    #[serde(default = "default_takeover_after", with = "humantime_serde")]
    pub takeover_after: Duration,
}

/// `[auth.nodes.<id>]`: one node's credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCredential {
    /// The site the node belongs to.
    pub site: String,
    /// What it does: `edge`, `origin`, `steering`, `chat-relay` or `sfu`.
    pub role: estuary_common::cp::Role,
    /// Its bearer token (its `[control_plane] token`), at least 32 characters. The control
    /// plane also presents it to that node alone (purges), so no node holds a secret that
    /// works on another.
    pub token: String,
}

/// The shortest node credential accepted.
pub const MIN_NODE_TOKEN_LEN: usize = 32;

/// `[health]`: how the monitor decides that a node is up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two polls of every node's `/readyz`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait for one poll.
    #[serde(default = "default_poll_timeout", with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Failed checks in a row before a node is marked down.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Good checks in a row before a node is marked up.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// A node whose last heartbeat is older than this fails its checks.
    #[serde(default = "default_heartbeat_timeout", with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// The panic threshold (as Envoy's and Traffic Router's): the largest share of a site's
    /// edges, or of the fleet's, that missing heartbeats alone may take out of rotation.
    /// Beyond it, the edges that were up stay in rotation (the state feed says why, in
    /// `held_up`) and the control plane alarms: so many nodes going silent at once is far
    /// more likely a fault between them and the control plane than their failure. Edges
    /// failing their own `/readyz` are always taken out. 1.0 turns it off.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            poll_interval: default_poll(),
            poll_timeout: default_poll_timeout(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            heartbeat_timeout: default_heartbeat_timeout(),
            panic_threshold: default_panic_threshold(),
        }
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_poll_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_panic_threshold() -> f64 {
    0.5
}
fn default_db_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_takeover_after() -> Duration {
    Duration::from_secs(15)
}

impl ControlPlaneConfig {
    /// Parses a config text; relative SQLite paths are resolved against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = estuary_common::config::from_toml(text)?;
        if let Some(p) = config.database.sqlite_path()
            && p.is_relative()
        {
            config.database.url = format!("sqlite://{}", base_dir.join(p).display());
        }
        if let Some(p) = config.client.ca_file.as_mut()
            && p.is_relative()
        {
            *p = base_dir.join(&*p);
        }
        if let Some(tls) = config.tls.as_mut() {
            tls.resolve(base_dir);
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if let Some(m) = &self.meetings {
            m.validate()?;
        }
        if let Err((id, why)) = estuary_common::signing::ManifestKeys::from_hex(&self.manifest_keys)
        {
            return Err(ConfigError::new(format!("manifest_keys.{id}"), why));
        }
        if let Err(why) = self.database.database() {
            return Err(ConfigError::new("database.url", why));
        }
        if let Some(tls) = &self.tls {
            tls.check("tls")?;
        }
        if let Some(ca) = &self.client.ca_file {
            estuary_common::http::root_store(Some(ca))
                .map_err(|e| ConfigError::new("client.ca_file", e.to_string()))?;
        }
        if self.auth.operator_tokens.is_empty() {
            return Err(ConfigError::new(
                "auth.operator_tokens",
                "needs at least one token",
            ));
        }
        for (table, tokens) in [
            ("operator_tokens", &self.auth.operator_tokens),
            ("node_tokens", &self.auth.node_tokens),
        ] {
            for (name, token) in tokens {
                if token.len() < 16 {
                    return Err(ConfigError::new(
                        format!("auth.{table}.{name}"),
                        "must be at least 16 characters",
                    ));
                }
            }
        }
        for site in self.auth.node_tokens.keys() {
            if !estuary_common::config::name_ok(site) {
                return Err(ConfigError::new(
                    format!("auth.node_tokens.{site}"),
                    "a site name is 1-64 of A-Z a-z 0-9 - _ .",
                ));
            }
        }
        for (id, c) in &self.auth.nodes {
            let key = |k: &str| format!("auth.nodes.{id}.{k}");
            if !estuary_common::config::name_ok(id) {
                return Err(ConfigError::new(
                    format!("auth.nodes.{id}"),
                    "a node id is 1-64 of A-Z a-z 0-9 - _ .",
                ));
            }
            if !estuary_common::config::name_ok(&c.site) {
                return Err(ConfigError::new(
                    key("site"),
                    "a site name is 1-64 of A-Z a-z 0-9 - _ .",
                ));
            }
            if c.token.len() < MIN_NODE_TOKEN_LEN {
                return Err(ConfigError::new(
                    key("token"),
                    format!("must be at least {MIN_NODE_TOKEN_LEN} characters"),
                ));
            }
        }
        for site in self.auth.site_networks.keys() {
            if !estuary_common::config::name_ok(site) {
                return Err(ConfigError::new(
                    format!("auth.site_networks.{site}"),
                    "a site name is 1-64 of A-Z a-z 0-9 - _ .",
                ));
            }
        }
        if self.auth.takeover_after < Duration::from_secs(1)
            || self.auth.takeover_after > Duration::from_secs(3600)
        {
            return Err(ConfigError::new(
                "auth.takeover_after",
                "must be between 1s and 1h",
            ));
        }
        // One token, one identity: a token listed twice would make its holder ambiguous.
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        let all = self
            .auth
            .operator_tokens
            .iter()
            .map(|(n, t)| (format!("auth.operator_tokens.{n}"), t.as_str()))
            .chain(
                self.auth
                    .node_tokens
                    .iter()
                    .map(|(n, t)| (format!("auth.node_tokens.{n}"), t.as_str())),
            )
            .chain(
                self.auth
                    .nodes
                    .iter()
                    .map(|(n, c)| (format!("auth.nodes.{n}.token"), c.token.as_str())),
            );
        for (key, token) in all {
            if let Some(first) = seen.insert(token, key.clone()) {
                return Err(ConfigError::new(
                    key,
                    format!("the same token as {first}: every credential must be its own"),
                ));
            }
        }
        if let Some(t) = &self.purge.edge_token
            && t.len() < 16
        {
            return Err(ConfigError::new(
                "purge.edge_token",
                "must be at least 16 characters",
            ));
        }
        let h = &self.health;
        if h.poll_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "health.poll_interval",
                "must be at least 100ms",
            ));
        }
        if h.poll_timeout.is_zero() || h.poll_timeout > h.poll_interval * 10 {
            return Err(ConfigError::new(
                "health.poll_timeout",
                "must be above zero and at most ten poll intervals",
            ));
        }
        if !(1..=100).contains(&h.down_after) {
            return Err(ConfigError::new("health.down_after", "must be 1 to 100"));
        }
        if !(1..=100).contains(&h.up_after) {
            return Err(ConfigError::new("health.up_after", "must be 1 to 100"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300))
            .contains(&self.dashboard.history_step)
        {
            return Err(ConfigError::new(
                "dashboard.history_step",
                "must be 1s to 5min",
            ));
        }
        if h.heartbeat_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "health.heartbeat_timeout",
                "must be at least 1s",
            ));
        }
        if !(h.panic_threshold > 0.0 && h.panic_threshold <= 1.0) {
            return Err(ConfigError::new(
                "health.panic_threshold",
                "must be a share above 0 and at most 1 (1 turns it off)",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.database.timeout)
        {
            return Err(ConfigError::new("database.timeout", "must be 100ms to 60s"));
        }
        Ok(())
    }
}

impl estuary_common::config::ServiceConfig for ControlPlaneConfig {
    const SERVICE: &'static str = "control-plane";

    fn claims(table: &estuary_common::config::Table) -> bool {
        table.contains_key("database")
    }

    fn parse_text(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_mistakes_name_their_key() {
        let text = include_str!("../../docs/control-plane.example.toml");
        let c = ControlPlaneConfig::parse(text, Path::new("/etc")).expect("example");
        assert!(c.database.sqlite_path().is_some());
        let bad = |t: &str, key: &str| {
            let e = ControlPlaneConfig::parse(t, Path::new("/etc")).expect_err(t);
            assert!(e.key.starts_with(key), "{e} (wanted {key})");
        };
        bad(&text.replace("[health]", "[helth]"), "helth");
        bad(
            &text.replace("max_meetings = 100000", "max_meeting = 100000"),
            "meetings",
        );
        // The example turns meetings on; without the table they are off.
        assert!(c.meetings.is_some());
        let off = text.split("\n[meetings]").next().unwrap_or_default();
        let c = ControlPlaneConfig::parse(off, Path::new("/etc")).expect("without [meetings]");
        assert!(c.meetings.is_none());
        let db = |url: &str| text.replace("sqlite:///var/lib/estuary/control-plane.db", url);
        let c = ControlPlaneConfig::parse(&db("postgres://estuary@db.example/cp"), Path::new("/"))
            .expect("postgres url");
        assert_eq!(
            c.database.database(),
            Ok(Database::Postgres(
                "postgres://estuary@db.example/cp".into()
            ))
        );
        bad(&db("postgres://x/y?sslmode=require"), "database.url");
        bad(&db("postgres://x/y?bogus=1"), "database.url");
        bad(&db("postgres://x"), "database.url");
        bad(&db("mysql://x/y"), "database.url");
        // Each mistake in the example, and the key its error names.
        for (from, to, key) in [
            ("down_after = 3", "down_after = 0", "health.down_after"),
            (
                "panic_threshold = 0.5",
                "panic_threshold = 1.5",
                "health.panic_threshold",
            ),
            ("timeout = \"3s\"", "timeout = \"0s\"", "database.timeout"),
            (
                "role = \"edge\"",
                "role = \"router\"",
                "auth.nodes.edge-lab-1",
            ),
            (
                "change-me-to-a-random-secret-of-32-or-more-characters",
                "too-short-for-a-node",
                "auth.nodes.edge-lab-1.token",
            ),
            (
                "change-me-to-another-secret-of-32-or-more-characters",
                "change-me-to-a-random-secret-of-32-or-more-characters",
                "auth.nodes.origin-1.token",
            ),
            ("\"10.1.0.0/16\"", "\"10.1.0.0/99\"", "auth.site_networks"),
            (
                "peers_per_sfu = 500",
                "peers_per_sfu = 0",
                "meetings.peers_per_sfu",
            ),
            ("key_id = \"k1\"", "key_id = \"k 1\"", "meetings.key_id"),
            (
                "token_ttl = \"4h\"",
                "token_ttl = \"2days\"",
                "meetings.token_ttl",
            ),
            ("grace = \"5m\"", "grace = \"1s\"", "meetings.grace"),
            (
                "origin-1 = \"d75a",
                "origin-1 = \"x75a",
                "manifest_keys.origin-1",
            ),
        ] {
            bad(&text.replace(from, to), key);
        }
    }
}
