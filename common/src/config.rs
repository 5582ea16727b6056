//! What every service's TOML config shares: the error that names the bad key and why, and a
//! strict deserializer that reports the key's dotted path with its line and column.

use serde::de::DeserializeOwned;

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

/// Reads a config file into text, with an error that names the file.
pub fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))
}

/// Checks a node or site name: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
