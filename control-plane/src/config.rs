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
    pub auth: AuthConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub purge: PurgeConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub dashboard: DashboardConfig,
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
    /// The token the control plane presents to each edge's admin listener (one of the edges'
    /// `[admin.tokens]`). Without it purges are refused.
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
    /// Site -> bearer token its nodes present to register and send heartbeats.
    #[serde(default)]
    pub node_tokens: BTreeMap<String, String>,
}

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
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            poll_interval: default_poll(),
            poll_timeout: default_poll_timeout(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            heartbeat_timeout: default_heartbeat_timeout(),
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain(),
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
fn default_drain() -> Duration {
    Duration::from_secs(10)
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
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = estuary_common::config::read(path)?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(why) = self.database.database() {
            return Err(ConfigError::new("database.url", why));
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
        Ok(())
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
        bad(
            &text.replace("down_after = 3", "down_after = 0"),
            "health.down_after",
        );
    }
}
