//! What every service's TOML config shares: the error that names the bad key and why, and a
//! strict deserializer that reports the key's dotted path with its line and column.

use serde::de::DeserializeOwned;

/// A config file's top-level tables, as [`ServiceConfig::claims`] sees them.
pub use toml::Table;

/// A configuration problem, naming the key at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The dotted path of the key, for example `listen.https`.
    pub key: String,
    /// Why the value is refused.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Deserializes a TOML text into `T` (whose structs should deny unknown fields); the error
/// names the key's path and where it sits in the text.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let reason = inner.message().to_owned();
        let key = if key == "." {
            "(top level)".into()
        } else {
            key
        };
        let at = inner
            .span()
            .map(|s| {
                let before = &text.as_bytes()[..s.start.min(text.len())];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                format!(" (line {line}, column {column})")
            })
            .unwrap_or_default();
        ConfigError::new(key, format!("{reason}{at}"))
    })
}

/// A service's config file. Every service's config type implements it: the service starts
/// from [`ServiceConfig::load`], and `estuary check-config` tells the services' files apart
/// with [`ServiceConfig::claims`] and checks them with [`ServiceConfig::check`].
pub trait ServiceConfig: Sized {
    /// The service's name, as in `estuary <name>`.
    const SERVICE: &'static str;

    /// Whether a config file's top-level tables say it is this service's.
    fn claims(table: &Table) -> bool;

    /// Parses and validates a config text; relative paths are resolved against `base_dir`
    /// (the file's folder).
    fn parse_text(text: &str, base_dir: &std::path::Path) -> Result<Self, ConfigError>;

    /// What `check-config` checks beyond the file itself (the files it names), so that a
    /// config that passes also starts.
    fn check_more(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Reads, parses and validates a config file.
    fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse_text(&text, path.parent().unwrap_or(std::path::Path::new(".")))
    }

    /// `estuary check-config`: everything a start would check of the config.
    fn check(path: &std::path::Path) -> Result<(), ConfigError> {
        Self::load(path)?.check_more()
    }
}

/// Reads a config file into text, with an error that names the file.
pub fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))
}

/// `[node]` of the nodes whose id and site are both required (edge, chat relay, SFU).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A name unique in the deployment, for example `edge-1` (1-64 of A-Z a-z 0-9 - _ .).
    pub id: String,
    /// The site (point of presence) the node belongs to, for example `lab`.
    pub site: String,
}

impl NodeConfig {
    /// Checks `id` and `site` (each 1-64 of `A-Z a-z 0-9 - _ .`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !name_ok(&self.id) {
            return Err(ConfigError::new("node.id", "1-64 of A-Z a-z 0-9 - _ ."));
        }
        if !name_ok(&self.site) {
            return Err(ConfigError::new("node.site", "1-64 of A-Z a-z 0-9 - _ ."));
        }
        Ok(())
    }
}

/// The table `name` of a config file's top-level tables, if it is one.
pub fn subtable<'a>(table: &'a Table, name: &str) -> Option<&'a Table> {
    table.get(name).and_then(|t| t.as_table())
}

/// Checks a node or site name: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
