//! Turns an HTTP answer (status, headers, body start) into an outcome and a provider code.
//! Pure: no I/O, so every provider's answers can be tested as data.

use blockwatch_proto::Outcome;
use http::HeaderMap;
use serde_json::Value;

use super::catalogue::{GeoSignature, Provider};

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

/// Classifies an answer from `provider`'s endpoint. `keyed` says whether a credential was
/// sent. Order matters: a documented geo signature wins, then an edge's own refusal page,
/// then a keyed 401, then the provider's reachable statuses, then rate limits and server
/// errors; anything left is unexpected.
pub fn classify(provider: &Provider, keyed: bool, status: u16, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let cfg = provider.config();
    let code = provider_code(headers, body);
    let text = String::from_utf8_lossy(body);
    let detail = format!("status {status}: {}", body_start(&text));
    let verdict = |outcome, provider_code: String| Verdict { outcome, provider_code, detail: detail.clone() };

    if let Some(sig) = cfg.geo.iter().find(|g| matches_signature(g, status, code.as_deref(), &text)) {
        return verdict(Outcome::HttpGeoBlocked, sig.provider_code.clone());
    }
    if let Some(edge_code) = edge_refusal(status, headers, &text) {
        return verdict(Outcome::HttpEdgeBlocked, edge_code);
    }
    let code = code.unwrap_or_default();
    if keyed && status == 401 {
        return verdict(Outcome::HttpAuthFailed, code);
    }
    let reachable = if keyed { &cfg.reachable_keyed } else { &cfg.reachable };
    if reachable.contains(&status) {
        return Verdict { outcome: Outcome::Ok, provider_code: code, detail: String::new() };
    }
    match status {
        429 => verdict(Outcome::HttpRateLimited, code),
        // 529 is Anthropic's "overloaded"; like every 5xx it says nothing about a block.
        500..=599 => verdict(Outcome::HttpServerError, code),
        _ => verdict(Outcome::HttpUnexpected, code),
    }
}

fn matches_signature(sig: &GeoSignature, status: u16, code: Option<&str>, body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    sig.status == status
        && sig.code.as_deref().is_none_or(|want| code == Some(want))
        && sig.body_contains.iter().all(|s| lower.contains(&s.to_ascii_lowercase()))
}

/// An edge's own HTML refusal page (Cloudflare's 403 / error 1020 "Access denied"), told
/// apart from a provider's JSON refusal by being HTML and carrying an edge marker.
fn edge_refusal(status: u16, headers: &HeaderMap, body: &str) -> Option<String> {
    if status != 403 || !is_html(headers, body) {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let cloudflare = headers.contains_key("cf-ray")
        || header(headers, "server").is_some_and(|s| s.eq_ignore_ascii_case("cloudflare"))
        || lower.contains("cloudflare");
    if cloudflare {
        let code = if lower.contains("1020") { "cloudflare_1020" } else { "cloudflare_403" };
        Some(code.to_string())
    } else if lower.contains("access denied") {
        Some("edge_403".to_string())
    } else {
        None
    }
}

fn is_html(headers: &HeaderMap, body: &str) -> bool {
    header(headers, "content-type").is_some_and(|ct| ct.to_ascii_lowercase().contains("text/html"))
        || body.trim_start().starts_with('<')
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
