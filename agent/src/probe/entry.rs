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

/// One shape of answer, as a catalogue entry states it: every condition given must hold
/// (an empty one always holds). Matching is ASCII case-insensitive throughout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The answer's HTTP status, one (`403`) or any of several (`[400, 403]`); any status
    /// when absent.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// The provider's error code as found in the body (`error.code`, `error.status`,
    /// `error.type`, `__type` or `code`) or the `x-amzn-errortype` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Response headers that must be present, each with a value containing the given text
    /// (`""` asks only for the header: `{ "cf-mitigated" = "challenge" }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Texts that must all appear in the body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body_contains: Vec<String>,
    /// Texts of which at least one must appear in the body (the wordings of one refusal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body_any: Vec<String>,
    /// The code a result reports when this signature matches.
    pub provider_code: String,
}

/// The older name of [`Signature`], from when only location refusals were stated.
pub type GeoSignature = Signature;

/// A value or a list of them (`status = 403` or `status = [400, 403]`).
pub(crate) fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
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
    pub geo: Vec<Signature>,
    /// How an edge (CDN, WAF) in front of the provider refuses a client with its own page.
    #[serde(default)]
    pub edge: Vec<Signature>,
    /// Answers that are not the reachable status but prove the caller's location is accepted
    /// (an exhausted quota or credit: waiting does not clear it, and no refused caller gets
    /// that far).
    #[serde(default)]
    pub accepted: Vec<Signature>,
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
