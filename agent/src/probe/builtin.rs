//! The built-in provider entries. Facts come from the providers' public API documentation
//! and from answers users have reported publicly (SDK and relay issue threads); each
//! signature says which. Where a refusal is not on record, no signature is invented and the
//! visibility stays `unknown`.

use std::collections::BTreeMap;

use super::entry::{AuthStyle, GENERIC, LocationVisibility, ProviderConfig, Signature};

fn entry(id: &str, hosts: &[&str], endpoint: &str, reachable: &[u16], auth: AuthStyle) -> ProviderConfig {
    ProviderConfig {
        id: id.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        endpoint: endpoint.into(),
        reachable: reachable.to_vec(),
        reachable_keyed: vec![200],
        geo: Vec::new(),
        edge: Vec::new(),
        accepted: Vec::new(),
        location_visibility: LocationVisibility::Unknown,
        auth,
        headers: BTreeMap::new(),
    }
}

/// A signature reporting `provider_code`, to which conditions are added.
fn sig(provider_code: &str) -> Signature {
    Signature { provider_code: provider_code.into(), ..Signature::default() }
}

impl Signature {
    fn status(mut self, s: &[u16]) -> Signature {
        self.status = s.to_vec();
        self
    }
    fn code(mut self, c: &str) -> Signature {
        self.code = Some(c.into());
        self
    }
    fn header(mut self, name: &str, contains: &str) -> Signature {
        self.headers.insert(name.into(), contains.into());
        self
    }
    fn body(mut self, all: &[&str]) -> Signature {
        self.body_contains = all.iter().map(|s| s.to_string()).collect();
        self
    }
    fn body_any(mut self, any: &[&str]) -> Signature {
        self.body_any = any.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Cloudflare's error codes that refuse the client itself (documented in Cloudflare's
/// "Troubleshooting Cloudflare 1XXX errors"): 1000 and 1034 (the address the client reached
/// is refused at the edge), 1006-1008 (the client's IP banned), 1009 (its country or region
/// banned), 1010 (its browser signature), 1012 (access denied), 1020 (a firewall rule).
/// To non-browser clients the edge answers these as the plain text `error code: 1020`.
const CLOUDFLARE_REFUSALS: &[u16] = &[1000, 1006, 1007, 1008, 1009, 1010, 1012, 1020, 1034];

/// Refusals by Cloudflare's edge, which fronts several providers' APIs; they sit on the
/// generic entry because every signature applies to every target.
fn cloudflare() -> Vec<Signature> {
    let mut sigs = vec![
        // A managed challenge is marked by a header (documented: `cf-mitigated: challenge`)
        // and, in older pages, by its interstitial ("Just a moment...", seen in reports).
        sig("cloudflare_challenge").header("cf-mitigated", "challenge"),
        sig("cloudflare_challenge").status(&[403, 503]).header("server", "cloudflare").body_any(&[
            "just a moment...",
            "just a moment\u{2026}",
            "/cdn-cgi/challenge-platform/",
        ]),
        // The WAF's block page (seen in reports).
        sig("cloudflare_blocked").status(&[403]).body(&["sorry, you have been blocked", "cloudflare"]),
    ];
    for code in CLOUDFLARE_REFUSALS {
        sigs.push(
            sig(&format!("cloudflare_{code}"))
                .header("server", "cloudflare")
                .body_any(&[&format!("error code: {code}"), &format!("error {code}")]),
        );
    }
    // Any other HTML 403 of Cloudflare's own, and an HTML "Access denied" of another edge.
    sigs.push(sig("cloudflare_403").status(&[403]).header("server", "cloudflare").header("content-type", "text/html"));
    sigs.push(sig("edge_403").status(&[403]).header("content-type", "text/html").body(&["access denied"]));
    sigs
}

/// The fallback for hosts no entry claims.
///
/// Without a signature nothing can be called a geo block, so any answer from the origin other
/// than a rate limit or a server error counts as reachable: 2xx, 3xx, 401, 403 (JSON), 404
/// and 405. Every provider's refusals are still recognised, since the classifier checks all
/// signatures before the reachable list. The edge refusals of Cloudflare live here.
pub(crate) fn generic() -> ProviderConfig {
    let mut reachable: Vec<u16> = (200..400).collect();
    reachable.extend([401, 403, 404, 405]);
    ProviderConfig {
        reachable_keyed: reachable.clone(),
        edge: cloudflare(),
        ..entry(GENERIC, &[], "/", &reachable, AuthStyle::Bearer)
    }
}

/// Every built-in entry, `generic` included.
pub(crate) fn providers() -> Vec<ProviderConfig> {
    // Documented (OpenAI's error codes guide: "403 Country, region, or territory not
    // supported"; "429 You exceeded your current quota") and seen in reports; the quota
    // answer shares 429 with rate limits (`rate_limit_exceeded`) but does not clear by waiting.
    let mut openai = entry("openai", &["api.openai.com"], "/v1/models", &[401], AuthStyle::Bearer);
    openai.geo =
        vec![sig("unsupported_country_region_territory").status(&[403]).code("unsupported_country_region_territory")];
    openai.accepted = vec![sig("insufficient_quota").status(&[429]).code("insufficient_quota")];

    // Seen in reports: 403 `forbidden` "Request not allowed" from unsupported places; 400
    // "credit balance is too low" from an account without credit (so the place is served).
    let mut anthropic = entry("anthropic", &["api.anthropic.com"], "/v1/models", &[401], AuthStyle::XApiKey);
    anthropic.geo = vec![sig("forbidden").status(&[403]).code("forbidden").body(&["request not allowed"])];
    anthropic.accepted = vec![sig("credit_balance_too_low").status(&[400]).body(&["credit balance is too low"])];
    anthropic.headers.insert("anthropic-version".into(), "2023-06-01".into());

    // Without a key Gemini answers 403 PERMISSION_DENIED everywhere; the location check only
    // happens for a keyed request, which then gets 400 FAILED_PRECONDITION in one of several
    // wordings (seen in reports): "User location is not supported for the API use.", "Gemini
    // API free tier is not available in your country...", "... is not available in your
    // country" for a feature. An invalid key is also 400 (INVALID_ARGUMENT), so the status
    // alone says nothing.
    let mut gemini =
        entry("gemini", &["generativelanguage.googleapis.com"], "/v1beta/models", &[403], AuthStyle::XGoogApiKey);
    gemini.geo = vec![
        sig("FAILED_PRECONDITION")
            .status(&[400])
            .code("FAILED_PRECONDITION")
            .body_any(&["user location is not supported", "not available in your country"]),
    ];
    gemini.location_visibility = LocationVisibility::Keyed;

    let azure = entry(
        "azure-openai",
        &["*.openai.azure.com", "*.cognitiveservices.azure.com"],
        "/openai/models?api-version=2024-10-21",
        &[401],
        AuthStyle::ApiKey,
    );

    // Bedrock refuses Anthropic models from unsupported places with a flat JSON body
    // (`{"message": "Access to Anthropic models is not allowed from unsupported countries,
    // regions, or territories. ..."}`), the error name only in `x-amzn-ErrorType`
    // (ValidationException); seen in reports with 400, and 403 is on record too. An
    // unsigned request is refused 403 (MissingAuthenticationToken) everywhere: reachable.
    let mut bedrock = entry(
        "bedrock",
        &["bedrock.*.amazonaws.com", "bedrock-runtime.*.amazonaws.com"],
        "/foundation-models",
        &[403],
        AuthStyle::Bearer,
    );
    bedrock.geo = vec![
        sig("ValidationException")
            .status(&[400, 403])
            .code("ValidationException")
            .body(&["not allowed from unsupported countries, regions, or territories"]),
    ];
    bedrock.location_visibility = LocationVisibility::Keyed;

    // Documented (DeepSeek's error codes: "402 Insufficient Balance").
    let mut deepseek = entry("deepseek", &["api.deepseek.com"], "/models", &[401], AuthStyle::Bearer);
    deepseek.accepted = vec![sig("insufficient_balance").status(&[402]).body(&["insufficient balance"])];

    vec![
        openai,
        anthropic,
        gemini,
        azure,
        bedrock,
        entry("mistral", &["api.mistral.ai"], "/v1/models", &[401], AuthStyle::Bearer),
        deepseek,
        entry("moonshot", &["api.moonshot.cn", "api.moonshot.ai"], "/v1/models", &[401], AuthStyle::Bearer),
        entry("zhipu", &["open.bigmodel.cn", "api.z.ai"], "/api/paas/v4/models", &[401], AuthStyle::Bearer),
        entry(
            "dashscope",
            &["dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com"],
            "/compatible-mode/v1/models",
            &[401],
            AuthStyle::Bearer,
        ),
        generic(),
    ]
}
