//! The built-in provider entries. Facts come from the providers' public API documentation;
//! where a location refusal is not documented, no signature is invented and the visibility
//! stays `unknown`.

use std::collections::BTreeMap;

use super::entry::{AuthStyle, GENERIC, GeoSignature, LocationVisibility, ProviderConfig};

fn entry(id: &str, hosts: &[&str], endpoint: &str, reachable: &[u16], auth: AuthStyle) -> ProviderConfig {
    ProviderConfig {
        id: id.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        endpoint: endpoint.into(),
        reachable: reachable.to_vec(),
        reachable_keyed: vec![200],
        geo: Vec::new(),
        location_visibility: LocationVisibility::Unknown,
        auth,
        headers: BTreeMap::new(),
    }
}

fn geo(status: u16, code: Option<&str>, body_contains: &[&str], provider_code: &str) -> GeoSignature {
    GeoSignature {
        status,
        code: code.map(str::to_string),
        body_contains: body_contains.iter().map(|s| s.to_string()).collect(),
        provider_code: provider_code.into(),
    }
}

/// The fallback for hosts no entry claims.
///
/// Without a signature nothing can be called a geo block, so any answer from the origin other
/// than a rate limit or a server error counts as reachable: 2xx, 3xx, 401, 403 (JSON), 404
/// and 405. Edge refusals (Cloudflare's HTML 403/1020) are still recognised, since the
/// classifier checks for them before the reachable list.
pub(crate) fn generic() -> ProviderConfig {
    let mut reachable: Vec<u16> = (200..400).collect();
    reachable.extend([401, 403, 404, 405]);
    ProviderConfig { reachable_keyed: reachable.clone(), ..entry(GENERIC, &[], "/", &reachable, AuthStyle::Bearer) }
}

/// Every built-in entry, `generic` included.
pub(crate) fn providers() -> Vec<ProviderConfig> {
    let mut openai = entry("openai", &["api.openai.com"], "/v1/models", &[401], AuthStyle::Bearer);
    openai.geo =
        vec![geo(403, Some("unsupported_country_region_territory"), &[], "unsupported_country_region_territory")];

    let mut anthropic = entry("anthropic", &["api.anthropic.com"], "/v1/models", &[401], AuthStyle::XApiKey);
    anthropic.geo = vec![geo(403, Some("forbidden"), &["Request not allowed"], "forbidden")];
    anthropic.headers.insert("anthropic-version".into(), "2023-06-01".into());

    // Without a key Gemini answers 403 PERMISSION_DENIED everywhere; the location check only
    // happens for a keyed request, which then gets 400 FAILED_PRECONDITION.
    let mut gemini =
        entry("gemini", &["generativelanguage.googleapis.com"], "/v1beta/models", &[403], AuthStyle::XGoogApiKey);
    gemini.geo =
        vec![geo(400, Some("FAILED_PRECONDITION"), &["User location is not supported"], "FAILED_PRECONDITION")];
    gemini.location_visibility = LocationVisibility::Keyed;

    let azure = entry(
        "azure-openai",
        &["*.openai.azure.com", "*.cognitiveservices.azure.com"],
        "/openai/models?api-version=2024-10-21",
        &[401],
        AuthStyle::ApiKey,
    );

    // Bedrock refuses Anthropic models from unsupported places with a ValidationException;
    // AWS has used both 400 and 403 for it. An unsigned request is refused 403
    // (MissingAuthenticationToken / UnrecognizedClient) everywhere: that is reachable.
    let mut bedrock = entry(
        "bedrock",
        &["bedrock.*.amazonaws.com", "bedrock-runtime.*.amazonaws.com"],
        "/foundation-models",
        &[403],
        AuthStyle::Bearer,
    );
    let refusal = ["not allowed from unsupported countries, regions, or territories"];
    bedrock.geo = vec![
        geo(400, Some("ValidationException"), &refusal, "ValidationException"),
        geo(403, Some("ValidationException"), &refusal, "ValidationException"),
    ];
    bedrock.location_visibility = LocationVisibility::Keyed;

    vec![
        openai,
        anthropic,
        gemini,
        azure,
        bedrock,
        entry("mistral", &["api.mistral.ai"], "/v1/models", &[401], AuthStyle::Bearer),
        entry("deepseek", &["api.deepseek.com"], "/models", &[401], AuthStyle::Bearer),
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
