//! Reading TOML config files, shared by agent and collector so both report problems the same
//! way: the file, then the offending key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {}", problems.join("; "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// Parses TOML text; the message names the offending key and line, on one line.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

/// Reads and parses a TOML file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
}
