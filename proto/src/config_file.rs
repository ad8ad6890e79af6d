//! Reading TOML config files, shared by agent and collector so both report problems the same
//! way: the file, then each offending key with its line, all at once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Most problems collected from one file before giving up on finding more.
const MAX_PROBLEMS: usize = 64;

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {}", problems.join("; "))]
    Parse { path: PathBuf, problems: Vec<String> },
    #[error("config {path}: {}", problems.join("; "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// Parses TOML text into `T`, reporting every wrong key, not just the first: a key whose
/// value has the wrong type, or that `T` does not know, is noted (`line 3: interval: …`) and
/// set aside, and the rest is read again. A syntax error stops at once (nothing after it can
/// be trusted).
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, Vec<String>> {
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(vec![describe(text, &e)]);
    }
    let mut current = text.to_string();
    // (line, problem): reported in the file's order, whichever order serde found them in.
    let mut problems: Vec<(usize, String)> = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    loop {
        let e = match toml::from_str::<T>(&current) {
            Ok(v) if problems.is_empty() => return Ok(v),
            Ok(_) => return Err(in_file_order(problems)),
            Err(e) => e,
        };
        // A key set aside above is missing now: that is not a new problem.
        let missing_set_aside = set_aside.iter().any(|k| e.message() == format!("missing field `{k}`"));
        let line = e.span().map_or(usize::MAX, |s| {
            current.as_bytes()[..s.start.min(current.len())].iter().filter(|&&c| c == b'\n').count()
        });
        if !missing_set_aside {
            problems.push((line, describe(&current, &e)));
        }
        let Some(span) = e.span().filter(|_| !e.message().starts_with("missing field")) else {
            return Err(in_file_order(problems));
        };
        let (start, end) = lines_of(&current, span);
        if problems.len() >= MAX_PROBLEMS || current[start..end].trim().is_empty() {
            return Err(in_file_order(problems));
        }
        set_aside.push(key_of(&current[start..end]).to_string());
        // Blank the key's lines, keeping their newlines so later line numbers stay true.
        let blank: String = current[start..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        current.replace_range(start..end, &blank);
    }
}

fn in_file_order(mut problems: Vec<(usize, String)>) -> Vec<String> {
    problems.sort_by_key(|(line, _)| *line);
    problems.into_iter().map(|(_, p)| p).collect()
}

/// Checks that `dir` (config key `key`) is a directory this process can write, creating it
/// as a start would: a probe file is written and removed.
pub fn writable_dir(key: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{key} {}: cannot create: {e}", dir.display()))?;
    let probe = dir.join(format!(".blockwatch-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{key} {}: not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks that `ip` (config key `key`) is an address of this host: a socket can be bound to
/// it (on a free port, so a running process on the configured port does not count).
pub fn local_address(key: &str, ip: std::net::IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        return Ok(());
    }
    std::net::UdpSocket::bind((ip, 0)).map(drop).map_err(|e| format!("{key} {ip}: not an address of this host: {e}"))
}

/// Reads and parses a TOML file, with the keys `keys` lists overridden by their
/// `BLOCKWATCH_…` variables read through `env` (see [`crate::config_env`]). Problems of the
/// file itself keep their line numbers; a required key may come from a variable alone.
pub fn read_toml_env<T: DeserializeOwned>(
    path: &Path,
    keys: &[crate::config_env::Key],
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let parse_err = |problems| ConfigError::Parse { path: path.to_owned(), problems };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let mut table: toml::Table = parse_toml(&text).map_err(parse_err)?;
    let applied = crate::config_env::overlay(keys, &mut table, env).map_err(parse_err)?;
    if applied.is_empty() {
        return parse_toml(&text).map_err(parse_err);
    }
    // The file's own problems first, with their lines; a key missing from it may be one a
    // variable sets.
    if let Err(problems) = parse_toml::<T>(&text) {
        let own: Vec<String> = problems.into_iter().filter(|p| !p.starts_with("missing field")).collect();
        if !own.is_empty() {
            return Err(parse_err(own));
        }
    }
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        parse_err(vec![format!(
            "{} (in the file or in {}; line numbers are not known once variables are applied)",
            e.message().trim(),
            applied.join(", ")
        )])
    })
}

/// Reads and parses a TOML file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_toml(&text).map_err(|problems| ConfigError::Parse { path: path.to_owned(), problems })
}

/// `line N: key: message`, on one line.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) if span.start < text.len() && !message.starts_with("missing field") => {
            let line = text.as_bytes()[..span.start].iter().filter(|&&c| c == b'\n').count() + 1;
            let (start, end) = lines_of(text, span);
            match key_of(&text[start..end]) {
                "" => format!("line {line}: {message}"),
                key => format!("line {line}: {key}: {message}"),
            }
        }
        _ => message,
    }
}

/// The byte range of the whole lines that `span` touches (newlines are ASCII, so both ends
/// are character boundaries whatever the span).
fn lines_of(text: &str, span: std::ops::Range<usize>) -> (usize, usize) {
    let b = text.as_bytes();
    let first = span.start.min(b.len());
    let last = span.end.saturating_sub(1).max(first).min(b.len());
    let start = b[..first].iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    let end = b[last..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| last + i);
    (start, end)
}

/// The key a `key = value` line sets (empty when the line sets none).
fn key_of(line: &str) -> &str {
    let first = line.lines().next().unwrap_or("").trim();
    match first.split_once('=') {
        Some((key, _)) if !first.starts_with('[') => key.trim().trim_matches('"'),
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        name: String,
        count: u32,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        item: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn every_wrong_key_is_reported_with_its_line() {
        let text = "name = 1\ncount = \"many\"\nflagg = true\n[[item]]\nid = \"a\"\nsize = \"big\"\n";
        let p = parse_toml::<Cfg>(text).unwrap_err();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("line 1: name: invalid type: integer `1`, expected a string"), "{p:?}");
        assert!(p[1].starts_with("line 2: count: invalid type: string \"many\""), "{p:?}");
        assert!(p[2].starts_with("line 3: flagg: unknown field `flagg`"), "{p:?}");
        assert!(p[3].starts_with("line 6: size: invalid type: string \"big\""), "{p:?}");
    }

    #[test]
    fn missing_keys_and_syntax_errors() {
        assert_eq!(parse_toml::<Cfg>("name = \"x\"\n").unwrap_err(), ["missing field `count`"]);
        let p = parse_toml::<Cfg>("name = \"x\"\ncount = \n").unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("line 2: "), "{p:?}");
        assert!(parse_toml::<Cfg>("name = \"x\"\ncount = 3\n").is_ok());
    }
}
