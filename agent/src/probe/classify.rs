//! Turns an HTTP answer (status, headers, body start) into an outcome and a provider code.
//! Pure: no I/O, so every provider's answers can be tested as data.

use blockwatch_proto::Outcome;
use http::HeaderMap;
use serde_json::Value;

use super::catalogue::{Catalogue, GENERIC, Provider, ProviderConfig, Signature};

/// What an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// The provider's (or edge's) error code, empty when none.
    pub provider_code: String,
    /// Human-readable: status and body start for anything but a plain reachable answer.
    pub detail: String,
}

/// The answer as the matchers see it: its code and its body lowercased once.
struct Answer<'a> {
    status: u16,
    headers: &'a HeaderMap,
    code: Option<String>,
    lower: String,
}

impl Answer<'_> {
    /// Signature texts are lowercase already ([`Provider`] lowercases them once), so only
    /// the answer's side is lowered here.
    fn matches(&self, sig: &Signature) -> bool {
        (sig.status.is_empty() || sig.status.contains(&self.status))
            && sig.code.as_deref().is_none_or(|want| self.code.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(want)))
            && sig
                .headers
                .iter()
                .all(|(name, want)| header(self.headers, name).is_some_and(|v| v.to_ascii_lowercase().contains(want)))
            && sig.body_contains.iter().all(|t| self.lower.contains(t.as_str()))
            && (sig.body_any.is_empty() || sig.body_any.iter().any(|t| self.lower.contains(t.as_str())))
    }

    /// The first signature of one kind that matches, the target's own provider's first and
    /// then every other entry's (a known refusal is one whoever's URL it came from), with
    /// the provider owning it.
    fn find<'c>(
        &self,
        catalogue: &'c Catalogue,
        own: &'c Provider,
        kind: fn(&ProviderConfig) -> &Vec<Signature>,
    ) -> Option<(&'c str, &'c Signature)> {
        let others = catalogue.iter().filter(|p| p.id() != own.id()).map(|p| &**p);
        std::iter::once(own)
            .chain(others)
            .find_map(|p| kind(p.config()).iter().find(|s| self.matches(s)).map(|s| (p.id(), s)))
    }
}

/// Classifies an answer from `provider`'s endpoint. `keyed` says whether a credential was
/// sent. Order matters: a location refusal wins, then an edge's own refusal, then a keyed
/// 401, then an answer that proves the place accepted, then the provider's reachable
/// statuses, then rate limits and server errors; anything left is unexpected. Refusals and
/// acceptances are the signatures of every catalogue entry, the target's own first.
pub fn classify(
    catalogue: &Catalogue,
    provider: &Provider,
    keyed: bool,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Verdict {
    let cfg = provider.config();
    let text = String::from_utf8_lossy(body);
    let answer = Answer { status, headers, code: provider_code(headers, body), lower: text.to_ascii_lowercase() };
    let detail = format!("status {status}: {}", body_start(&text));
    let named = |owner: &str, what: &str| {
        if owner == provider.id() { detail.clone() } else { format!("{owner} {what}, {detail}") }
    };

    if let Some((owner, sig)) = answer.find(catalogue, provider, |c| &c.geo) {
        let detail = named(owner, "location refusal");
        return Verdict { outcome: Outcome::HttpGeoBlocked, provider_code: sig.provider_code.clone(), detail };
    }
    if let Some((owner, sig)) = answer.find(catalogue, provider, |c| &c.edge) {
        let detail = if owner == GENERIC { detail.clone() } else { named(owner, "edge refusal") };
        return Verdict { outcome: Outcome::HttpEdgeBlocked, provider_code: sig.provider_code.clone(), detail };
    }
    let code = answer.code.clone().unwrap_or_default();
    let verdict = |outcome, provider_code: String| Verdict { outcome, provider_code, detail: detail.clone() };
    if keyed && status == 401 {
        return verdict(Outcome::HttpAuthFailed, code);
    }
    if let Some((owner, sig)) = answer.find(catalogue, provider, |c| &c.accepted) {
        // Reachable, with the reason kept: the place is served, the account is not.
        let detail = named(owner, "answer that accepts the caller's place");
        return Verdict { outcome: Outcome::Ok, provider_code: sig.provider_code.clone(), detail };
    }
    let reachable = if keyed { &cfg.reachable_keyed } else { &cfg.reachable };
    if reachable.contains(&status) {
        return Verdict { outcome: Outcome::Ok, provider_code: code, detail: String::new() };
    }
    match status {
        429 => verdict(Outcome::HttpRateLimited, code),
        // 529 is Anthropic's "overloaded" (which also comes as 500 `api_error`); like every
        // 5xx it says nothing about a block.
        500..=599 => verdict(Outcome::HttpServerError, code),
        _ => verdict(Outcome::HttpUnexpected, code),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The provider's error code: from a JSON body `error.code`, `error.status` (Google),
/// `error.type` (Anthropic, OpenAI without code), `__type` or `code` (AWS), else from the
/// `x-amzn-errortype` header (AWS, `Name:namespace`).
pub fn provider_code(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let err = v.get("error");
        let s = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        s(err.and_then(|e| e.get("code")))
            .or_else(|| s(err.and_then(|e| e.get("status"))))
            .or_else(|| s(err.and_then(|e| e.get("type"))))
            .or_else(|| s(v.get("__type")))
            .or_else(|| s(v.get("code")))
    });
    from_json.or_else(|| {
        header(headers, "x-amzn-errortype")
            .and_then(|t| t.split(':').next())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    })
}

/// The first 200 characters of a body, whitespace collapsed, for details.
pub fn body_start(body: &str) -> String {
    let collapsed = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &collapsed[..i]),
        None => collapsed,
    }
}
