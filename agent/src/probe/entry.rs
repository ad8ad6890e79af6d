//! A catalogue entry as a config file writes it (and as the built-in entries are defined):
//! plain data, checked when it becomes a [`Provider`](super::catalogue::Provider).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Id of the fallback provider used for hosts no entry claims.
pub const GENERIC: &str = "generic";

/// Whether a location refusal can be seen by a probe, and with or without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LocationVisibility {
    /// A keyless probe already sees the refusal.
    Keyless,
    /// Only a keyed probe sees it (the keyless answer is an auth error everywhere).
    Keyed,
    /// Not known from public documentation.
    #[default]
    Unknown,
}

/// How a credential is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY`.
    #[default]
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: KEY` (Gemini).
    XGoogApiKey,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
}

impl AuthStyle {
    /// The header name and value carrying `key`.
    pub fn header(self, key: &str) -> (&'static str, String) {
        match self {
            AuthStyle::Bearer => ("authorization", format!("Bearer {key}")),
            AuthStyle::XApiKey => ("x-api-key", key.to_string()),
            AuthStyle::XGoogApiKey => ("x-goog-api-key", key.to_string()),
            AuthStyle::ApiKey => ("api-key", key.to_string()),
        }
    }
}

/// One way a provider says "not from your location".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSignature {
    /// HTTP status of the refusal.
    pub status: u16,
    /// The provider's error code as found in the JSON body (`error.code`, `error.status`,
    /// `error.type`, `__type` or `x-amzn-errortype`); matches when absent.
    #[serde(default)]
    pub code: Option<String>,
    /// Substrings that must all appear in the body (ASCII case-insensitive).
    #[serde(default)]
    pub body_contains: Vec<String>,
    /// The provider code to report when this signature matches.
    pub provider_code: String,
}

/// A provider as written in a config file (and as the built-in entries are defined).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Stable id (`openai`), as results report it.
    pub id: String,
    /// Host names this provider answers on; `*.example.com` matches any subdomain.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path (and query) to probe, starting with `/`.
    pub endpoint: String,
    /// Statuses that mean "reachable" for a keyless probe.
    pub reachable: Vec<u16>,
    /// Statuses that mean "reachable" for a keyed probe.
    #[serde(default = "default_reachable_keyed")]
    pub reachable_keyed: Vec<u16>,
    /// How the provider refuses a location.
    #[serde(default)]
    pub geo: Vec<GeoSignature>,
    /// Whether such a refusal shows without a key.
    #[serde(default)]
    pub location_visibility: LocationVisibility,
    /// How a credential is sent.
    #[serde(default)]
    pub auth: AuthStyle,
    /// Extra request headers (`anthropic-version`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_reachable_keyed() -> Vec<u16> {
    vec![200]
}
