//! The provider catalogue: which hosts belong to which AI API provider, which endpoint to
//! probe, what a reachable answer looks like and how the provider refuses a location.
//!
//! Built-in entries hold facts from the providers' public documentation; config files can
//! add or override entries with [`ProviderConfig`], with no code.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

pub use super::entry::{AuthStyle, GENERIC, GeoSignature, LocationVisibility, ProviderConfig, Signature};

/// A checked catalogue entry. Cheap to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    config: ProviderConfig,
}

impl Provider {
    /// Checks a config entry.
    pub fn new(config: ProviderConfig) -> Result<Provider, CatalogueError> {
        let bad = |why: String| CatalogueError::Invalid { id: config.id.clone(), why };
        if let Err(rule) = blockwatch_proto::id::check(&config.id) {
            return Err(bad(format!("id {rule}")));
        }
        if !config.endpoint.starts_with('/') {
            return Err(bad(format!("endpoint {:?} must start with /", config.endpoint)));
        }
        let signatures = [("geo", &config.geo), ("edge", &config.edge), ("accepted", &config.accepted)];
        let statuses = config
            .reachable
            .iter()
            .chain(&config.reachable_keyed)
            .chain(signatures.iter().flat_map(|(_, sigs)| sigs.iter().flat_map(|s| &s.status)));
        if let Some(s) = statuses.into_iter().find(|s| !(100..=599).contains(*s)) {
            return Err(bad(format!("status {s} is not an HTTP status")));
        }
        for (kind, sigs) in signatures {
            for (i, sig) in sigs.iter().enumerate() {
                check_signature(sig).map_err(|why| bad(format!("{kind}[{i}]: {why}")))?;
            }
        }
        for (k, v) in &config.headers {
            if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err() {
                return Err(bad(format!("header {k:?} is not a valid HTTP header")));
            }
        }
        Ok(Provider::for_matching(config))
    }

    /// An entry (checked by `new`, or built in) made ready to match: its signature texts
    /// (body texts, header values) lowercased once here, since matching is ASCII
    /// case-insensitive and runs for every answer.
    fn for_matching(mut config: ProviderConfig) -> Provider {
        for sig in config.geo.iter_mut().chain(&mut config.edge).chain(&mut config.accepted) {
            let texts = sig.body_contains.iter_mut().chain(&mut sig.body_any).chain(sig.headers.values_mut());
            for t in texts {
                t.make_ascii_lowercase();
            }
        }
        Provider { config }
    }

    /// The provider's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The entry as configured, its signature texts lowercased.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// True when `host` (no port) is one of the provider's hosts. In a pattern, a leading
    /// `*` label matches one or more labels (`*.openai.azure.com`) and any other `*` label
    /// matches exactly one (`bedrock.*.amazonaws.com`).
    pub fn owns_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        self.config.hosts.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            let pat: Vec<&str> = pattern.split('.').collect();
            let (pat, tail_len) = match pat.split_first() {
                Some((&"*", rest)) if labels.len() > rest.len() => (rest, rest.len()),
                Some((&"*", _)) => return false,
                _ if labels.len() == pat.len() => (&pat[..], pat.len()),
                _ => return false,
            };
            let tail = &labels[labels.len() - tail_len..];
            pat.iter().zip(tail).all(|(p, l)| *p == "*" || p == l)
        })
    }

    /// The probe URL for one of the provider's hosts.
    pub fn url_for(&self, host: &str) -> String {
        format!("https://{host}{}", self.config.endpoint)
    }
}

/// Longest provider code a signature may report (results carry it).
pub const MAX_PROVIDER_CODE: usize = 128;

fn check_signature(sig: &Signature) -> Result<(), String> {
    if sig.provider_code.is_empty() || sig.provider_code.len() > MAX_PROVIDER_CODE {
        return Err(format!("provider_code must be 1-{MAX_PROVIDER_CODE} bytes"));
    }
    if let Some(name) = sig.headers.keys().find(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).is_err())
    {
        return Err(format!("header {name:?} is not an HTTP header name"));
    }
    let texts = sig.body_contains.iter().chain(&sig.body_any);
    if texts.into_iter().any(String::is_empty) {
        return Err("an empty body text matches every answer".into());
    }
    let conditions = !sig.status.is_empty()
        || sig.code.is_some()
        || !sig.headers.is_empty()
        || !sig.body_contains.is_empty()
        || !sig.body_any.is_empty();
    if !conditions {
        return Err(
            "a signature without a condition (status, code, headers, body_contains, body_any) matches every answer"
                .into(),
        );
    }
    Ok(())
}

/// Problems with catalogue entries.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// An entry failed its checks.
    #[error("provider {id:?}: {why}")]
    Invalid {
        /// The entry's id.
        id: String,
        /// What is wrong.
        why: String,
    },
}

/// All known providers, by id.
#[derive(Debug, Clone)]
pub struct Catalogue {
    providers: BTreeMap<String, Arc<Provider>>,
}

impl Catalogue {
    /// The built-in catalogue (always holds [`GENERIC`]).
    pub fn builtin() -> Catalogue {
        // Built-in entries are constants that a unit test runs through `Provider::new`, so
        // they are taken as they are here.
        let providers = super::builtin::providers()
            .into_iter()
            .map(|config| (config.id.clone(), Arc::new(Provider::for_matching(config))))
            .collect();
        Catalogue { providers }
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Provider>> {
        self.providers.get(id).cloned()
    }

    /// Every provider id, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// The provider with this id, or an error naming it and the known ones (a misspelt id
    /// would otherwise fall back to the generic provider and see no block).
    pub fn named(&self, id: &str) -> Result<Arc<Provider>, String> {
        self.get(id)
            .ok_or_else(|| format!("unknown provider {id:?} (known: {})", self.ids().collect::<Vec<_>>().join(", ")))
    }

    /// The provider owning `host`, or the generic one.
    pub fn for_host(&self, host: &str) -> Arc<Provider> {
        self.providers
            .values()
            .find(|p| p.owns_host(host))
            .or_else(|| self.providers.get(GENERIC))
            .cloned()
            // Entries are only ever added or replaced, never removed, so the generic entry
            // from `builtin()` is always there; this keeps the lookup total all the same.
            .unwrap_or_else(|| Arc::new(Provider::for_matching(super::builtin::generic())))
    }

    /// Adds or replaces entries (an entry with a known id replaces it whole). Nothing is
    /// changed when any entry is invalid.
    pub fn extend(&mut self, configs: Vec<ProviderConfig>) -> Result<(), CatalogueError> {
        let checked = configs.into_iter().map(Provider::new).collect::<Result<Vec<_>, _>>()?;
        for p in checked {
            self.providers.insert(p.id().to_string(), Arc::new(p));
        }
        Ok(())
    }

    /// All providers, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }
}
