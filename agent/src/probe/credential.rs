//! API credentials: read from an environment variable or a file, never printed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;

use super::catalogue::AuthStyle;

/// An API key. Its `Debug` output is redacted, and the engine sends it only to one of the
/// provider's own hosts, over verified TLS.
#[derive(Clone)]
pub struct Credential {
    key: Arc<str>,
}

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The variable is not set (or not Unicode).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("reading credential file {path}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is empty or not usable in an HTTP header.
    #[error("credential is empty or contains characters not allowed in a header")]
    Invalid,
}

impl Credential {
    /// A credential from its value (surrounding whitespace is dropped).
    pub fn new(key: &str) -> Result<Credential, CredentialError> {
        let key = key.trim();
        if key.is_empty() || HeaderValue::from_str(key).is_err() {
            return Err(CredentialError::Invalid);
        }
        Ok(Credential { key: Arc::from(key) })
    }

    /// Reads the credential from environment variable `var`.
    pub fn from_env(var: &str) -> Result<Credential, CredentialError> {
        let v = std::env::var(var).map_err(|_| CredentialError::MissingEnv(var.to_string()))?;
        Credential::new(&v)
    }

    /// Reads the credential from a file (its whole content, trimmed).
    pub fn from_file(path: &Path) -> Result<Credential, CredentialError> {
        let v = std::fs::read_to_string(path)
            .map_err(|source| CredentialError::File { path: path.display().to_string(), source })?;
        Credential::new(&v)
    }

    /// The header carrying the key in `style`, marked sensitive so it is never logged.
    pub(crate) fn header(&self, style: AuthStyle) -> (&'static str, HeaderValue) {
        let (name, value) = style.header(&self.key);
        // `new` checked the key is a valid header value, and the prefixes are plain ASCII.
        let mut value = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        (name, value)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_bad_keys_refused() {
        let c = Credential::new(" sk-secret-123\n").unwrap();
        assert_eq!(format!("{c:?}"), "Credential(<redacted>)");
        assert!(!format!("{:?}", Some(c.clone())).contains("secret"));
        let (name, value) = c.header(AuthStyle::Bearer);
        assert_eq!((name, value.to_str().unwrap()), ("authorization", "Bearer sk-secret-123"));
        assert!(value.is_sensitive());
        assert!(Credential::new("  ").is_err());
        assert!(Credential::new("a\r\nb").is_err());
    }
}
