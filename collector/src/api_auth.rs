//! Bearer tokens for the HTTP API. A token is `bw_` and 64 hex digits of system randomness,
//! shown once when created; the tokens file keeps only its SHA-256 (a random 256-bit secret
//! needs no slow hash), its name and its role. The API re-reads the file when it changes, so
//! creating or revoking a token needs no restart.
//!
//! Roles: `read` may use every `GET` route (queries, exports, the dashboard); `admin` may
//! also use the routes that act (`POST`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, exports, the dashboard.
    Read,
    /// Everything `read` may, and the routes that act.
    Admin,
}

/// One entry of the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
}

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a tokens file: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io { path: path.to_owned(), source }
}

/// Reads a tokens file; a missing file has no tokens.
pub fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_str(&text).map_err(|e| TokenError::Parse { path: path.to_owned(), why: e.to_string() })
}

fn write(path: &Path, tokens: &[TokenEntry]) -> Result<(), TokenError> {
    let text = serde_json::to_string_pretty(tokens).map_err(|e| TokenError::Invalid(e.to_string()))? + "\n";
    crate::fleet_ca::write_atomic(path, &text, true).map_err(|(path, source)| TokenError::Io { path, source })
}

/// Creates a token named `name` with `role` in the tokens file; returns the token, which is
/// not kept anywhere.
pub fn create(path: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    blockwatch_proto::id::check(name).map_err(|rule| TokenError::Invalid(format!("--name {name:?}: {rule}")))?;
    let mut tokens = read(path)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Invalid(format!("a token named {name:?} exists already; revoke it first")));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| TokenError::Invalid("the system random generator failed".into()))?;
    let token = format!("bw_{}", crate::fleet_ca::hex(&secret));
    tokens.push(TokenEntry {
        name: name.to_string(),
        role,
        sha256: digest(&token),
        created: blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now()),
    });
    write(path, &tokens)?;
    Ok(token)
}

/// Removes the token named `name`.
pub fn revoke(path: &Path, name: &str) -> Result<(), TokenError> {
    let mut tokens = read(path)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Err(TokenError::Invalid(format!("no token named {name:?} in {}", path.display())));
    }
    write(path, &tokens)
}

fn digest(token: &str) -> String {
    crate::fleet_ca::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The tokens the API accepts, re-read when the file changes.
pub struct Tokens {
    path: PathBuf,
    state: Mutex<Loaded>,
}

/// The tokens file as last read: its stamp, and (name, role) by token hash.
type Loaded = (Option<(SystemTime, u64)>, HashMap<String, (String, Role)>);

/// How a request fared.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The token's name.
    Allowed(String),
    /// No token, or one not in the file: 401.
    Unauthenticated(&'static str),
    /// A valid token whose role is not enough: 403.
    Forbidden { name: String, role: Role },
}

impl Tokens {
    /// Loads `path` (which must parse; a missing file has no tokens yet).
    pub fn open(path: &Path) -> Result<Tokens, TokenError> {
        let tokens = Tokens { path: path.to_owned(), state: Mutex::new((None, HashMap::new())) };
        tokens.refresh()?;
        Ok(tokens)
    }

    fn refresh(&self) -> Result<(), TokenError> {
        let stamp = std::fs::metadata(&self.path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let Ok(mut state) = self.state.lock() else { return Ok(()) };
        if state.0.is_some() && state.0 == stamp {
            return Ok(());
        }
        let entries = read(&self.path)?;
        state.1 = entries.into_iter().map(|t| (t.sha256, (t.name, t.role))).collect();
        state.0 = stamp;
        Ok(())
    }

    /// Judges an `Authorization` header value against the role a route needs.
    pub fn check(&self, authorization: Option<&str>, needs: Role) -> Verdict {
        if let Err(e) = self.refresh() {
            // A broken edit keeps the tokens that were loaded.
            tracing::error!(error = %e, "tokens file changed but does not load; keeping the loaded tokens");
        }
        let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            return Verdict::Unauthenticated("this API needs a bearer token: Authorization: Bearer TOKEN");
        };
        let Ok(state) = self.state.lock() else { return Verdict::Unauthenticated("token table unavailable") };
        match state.1.get(&digest(token)) {
            None => Verdict::Unauthenticated("unknown token"),
            Some((name, role)) if *role < needs => Verdict::Forbidden { name: name.clone(), role: *role },
            Some((name, _)) => Verdict::Allowed(name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let reader = create(&path, "grafana", Role::Read).unwrap();
        let admin = create(&path, "ops", Role::Admin).unwrap();
        assert!(create(&path, "ops", Role::Read).is_err(), "names are unique");
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&reader), "the token itself is not stored");
        let tokens = Tokens::open(&path).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(tokens.check(Some(&bearer(&reader)), Role::Read), Verdict::Allowed("grafana".into()));
        assert_eq!(
            tokens.check(Some(&bearer(&reader)), Role::Admin),
            Verdict::Forbidden { name: "grafana".into(), role: Role::Read }
        );
        assert_eq!(tokens.check(Some(&bearer(&admin)), Role::Admin), Verdict::Allowed("ops".into()));
        assert!(matches!(tokens.check(None, Role::Read), Verdict::Unauthenticated(_)));
        assert!(matches!(tokens.check(Some("Bearer bw_00"), Role::Read), Verdict::Unauthenticated(_)));
        assert!(matches!(tokens.check(Some(&reader), Role::Read), Verdict::Unauthenticated(_)), "scheme required");
        revoke(&path, "grafana").unwrap();
        // The file changed (its length, at least): the revoked token stops working.
        assert!(matches!(tokens.check(Some(&bearer(&reader)), Role::Read), Verdict::Unauthenticated(_)));
        assert!(revoke(&path, "grafana").is_err());
    }
}
