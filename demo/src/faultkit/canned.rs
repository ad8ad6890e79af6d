//! Providers' answers, as their public documentation and observed traffic show them, for
//! replay by [`serve_https`](super::serve_https). [`real_world`] lists the shapes users have
//! reported publicly with what each must classify as.

use super::Canned;

/// OpenAI, keyless `/v1/models`: 401 (reachable).
pub fn openai_reachable() -> Canned {
    Canned::json(
        401,
        r#"{"error":{"message":"You didn't provide an API key.","type":"invalid_request_error","param":null,"code":null}}"#,
    )
    .with_header("x-request-id", "req_0123456789abcdef")
    .with_header("server", "cloudflare")
    .with_header("cf-ray", "8f0000000000abcd-FRA")
}

/// OpenAI refusing the caller's location.
pub fn openai_geo_blocked() -> Canned {
    Canned::json(
        403,
        r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#,
    )
    .with_header("server", "cloudflare")
    .with_header("cf-ray", "8f0000000000abce-HKG")
}

/// OpenAI rate limit.
pub fn openai_rate_limited() -> Canned {
    Canned::json(
        429,
        r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    )
}

/// OpenAI server error.
pub fn openai_server_error() -> Canned {
    Canned::json(
        500,
        r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
    )
}

/// Anthropic, keyless `/v1/models`: 401 (reachable).
pub fn anthropic_reachable() -> Canned {
    Canned::json(
        401,
        r#"{"type":"error","error":{"type":"authentication_error","message":"x-api-key header is required"}}"#,
    )
}

/// Anthropic refusing the caller's location.
pub fn anthropic_geo_blocked() -> Canned {
    Canned::json(403, r#"{"error":{"type":"forbidden","message":"Request not allowed"}}"#)
}

/// Anthropic rate limit.
pub fn anthropic_rate_limited() -> Canned {
    Canned::json(
        429,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
    )
}

/// Anthropic overloaded (529).
pub fn anthropic_overloaded() -> Canned {
    Canned::json(529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
}

/// Gemini, keyless `/v1beta/models`: 403 PERMISSION_DENIED (reachable).
pub fn gemini_keyless() -> Canned {
    Canned::json(
        403,
        r#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.","status":"PERMISSION_DENIED"}}"#,
    )
}

/// Gemini refusing the caller's location (keyed).
pub fn gemini_geo_blocked() -> Canned {
    Canned::json(
        400,
        r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#,
    )
}

/// Bedrock refusing Anthropic models from an unsupported place.
pub fn bedrock_geo_blocked() -> Canned {
    Canned::json(
        400,
        r#"{"message":"Access to Anthropic models is not allowed from unsupported countries, regions, or territories. Please refer to https://www.anthropic.com/supported-countries for more information on the countries and regions Anthropic supports."}"#,
    )
    .with_header("x-amzn-errortype", "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")
    .with_header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000")
}

/// Cloudflare's own "Access denied" page, error 1020 (a firewall rule at the edge).
pub fn cloudflare_1020() -> Canned {
    Canned::html(
        403,
        "<!DOCTYPE html>\n<html><head><title>Access denied | api.openai.com used Cloudflare to restrict access</title></head>\
         <body><div id=\"cf-error-details\"><h1>Access denied</h1><span class=\"cf-error-code\">Error code: 1020</span>\
         <p>The site owner may have set restrictions that prevent you from accessing the site.</p></div></body></html>",
    )
    .with_header("server", "cloudflare")
    .with_header("cf-ray", "8f0000000000abcf-SIN")
}

/// Cloudflare's own 502 "Bad gateway" page.
pub fn cloudflare_502() -> Canned {
    Canned::html(
        502,
        "<html><head><title>api.openai.com | 502: Bad gateway</title></head><body><h1>Bad gateway</h1>\
         <span>Error code 502</span><p>Cloudflare</p></body></html>",
    )
    .with_header("server", "cloudflare")
    .with_header("cf-ray", "8f0000000000abd0-AMS")
}

/// Cloudflare's plain-text refusal to a non-browser client (`error code: 1020`, also 1000,
/// 1034 and the other 10xx access refusals).
pub fn cloudflare_plain(code: u16) -> Canned {
    Canned::text(403, &format!("error code: {code}"))
        .with_header("server", "cloudflare")
        .with_header("cf-ray", "8f0000000000abd1-HKG")
}

/// Cloudflare's WAF block page.
pub fn cloudflare_sorry_blocked() -> Canned {
    Canned::html(
        403,
        "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head><body>\
         <div class=\"cf-wrapper\"><h1 data-translate=\"block_headline\">Sorry, you have been blocked</h1>\
         <h2>You are unable to access api.openai.com</h2><p>This website is using a security service to protect \
         itself from online attacks.</p><span>Cloudflare Ray ID: <strong>8f0000000000abd2</strong></span></div></body></html>",
    )
    .with_header("server", "cloudflare")
    .with_header("cf-ray", "8f0000000000abd2-SIN")
}

/// Cloudflare's managed challenge ("Just a moment..."), marked by `cf-mitigated: challenge`.
pub fn cloudflare_challenge() -> Canned {
    Canned::html(
        403,
        "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title></head><body>\
         <noscript>Enable JavaScript and cookies to continue</noscript>\
         <script src=\"/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1\"></script></body></html>",
    )
    .with_header("server", "cloudflare")
    .with_header("cf-mitigated", "challenge")
    .with_header("cf-ray", "8f0000000000abd3-FRA")
}

/// Gemini, keyed: the free tier refused in the caller's country.
pub fn gemini_free_tier_refused() -> Canned {
    Canned::json(
        400,
        r#"{"error":{"code":400,"message":"Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio.","status":"FAILED_PRECONDITION"}}"#,
    )
}

/// Gemini, keyed: a feature refused in the caller's country.
pub fn gemini_feature_refused() -> Canned {
    Canned::json(
        400,
        r#"{"error":{"code":400,"message":"Image generation is not available in your country.","status":"FAILED_PRECONDITION"}}"#,
    )
}

/// Gemini, keyed with a bad key: also 400, but INVALID_ARGUMENT.
pub fn gemini_invalid_key() -> Canned {
    Canned::json(
        400,
        r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
    )
}

/// Anthropic's overload as a 500 `api_error`.
pub fn anthropic_overloaded_500() -> Canned {
    Canned::json(500, r#"{"type":"error","error":{"type":"api_error","message":"Overloaded"}}"#)
}

/// Anthropic, keyed, an account without credit: the place is served.
pub fn anthropic_credit_too_low() -> Canned {
    Canned::json(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
    )
}

/// OpenAI, keyed, an exhausted quota: 429 like a rate limit, but it does not clear by waiting.
pub fn openai_insufficient_quota() -> Canned {
    Canned::json(
        429,
        r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
    )
}

/// DeepSeek, keyed, no balance left.
pub fn deepseek_insufficient_balance() -> Canned {
    Canned::json(
        402,
        r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
    )
}

/// One reported answer and what it means.
pub struct Shape {
    /// What it is.
    pub name: String,
    /// The catalogue entry of the target that received it.
    pub provider: &'static str,
    /// Whether the probe sent a key.
    pub keyed: bool,
    /// The answer.
    pub answer: Canned,
    /// The outcome it must classify as (its trace name) and the provider code reported.
    pub outcome: &'static str,
    pub provider_code: String,
}

/// The answers on record that a classifier must get right, each with its meaning.
pub fn real_world() -> Vec<Shape> {
    let shape = |name: &str, provider, keyed, answer, outcome, provider_code: &str| Shape {
        name: name.to_string(),
        provider,
        keyed,
        answer,
        outcome,
        provider_code: provider_code.to_string(),
    };
    let mut v = vec![
        shape(
            "openai geo",
            "openai",
            false,
            openai_geo_blocked(),
            "http_geo_blocked",
            "unsupported_country_region_territory",
        ),
        shape(
            "openai geo at a target without a provider",
            "generic",
            false,
            openai_geo_blocked(),
            "http_geo_blocked",
            "unsupported_country_region_territory",
        ),
        shape("anthropic geo", "anthropic", false, anthropic_geo_blocked(), "http_geo_blocked", "forbidden"),
        shape("gemini location", "gemini", true, gemini_geo_blocked(), "http_geo_blocked", "FAILED_PRECONDITION"),
        shape(
            "gemini free tier",
            "gemini",
            true,
            gemini_free_tier_refused(),
            "http_geo_blocked",
            "FAILED_PRECONDITION",
        ),
        shape("gemini feature", "gemini", true, gemini_feature_refused(), "http_geo_blocked", "FAILED_PRECONDITION"),
        shape("gemini invalid key", "gemini", true, gemini_invalid_key(), "http_unexpected", "INVALID_ARGUMENT"),
        shape("gemini keyless", "gemini", false, gemini_keyless(), "ok", "PERMISSION_DENIED"),
        shape("bedrock flat body", "bedrock", true, bedrock_geo_blocked(), "http_geo_blocked", "ValidationException"),
        shape(
            "bedrock flat body at a relay",
            "generic",
            false,
            bedrock_geo_blocked(),
            "http_geo_blocked",
            "ValidationException",
        ),
        shape("cloudflare 1020 page", "openai", false, cloudflare_1020(), "http_edge_blocked", "cloudflare_1020"),
        shape(
            "cloudflare block page",
            "openai",
            false,
            cloudflare_sorry_blocked(),
            "http_edge_blocked",
            "cloudflare_blocked",
        ),
        shape(
            "cloudflare challenge",
            "anthropic",
            false,
            cloudflare_challenge(),
            "http_edge_blocked",
            "cloudflare_challenge",
        ),
        shape("cloudflare 502", "openai", false, cloudflare_502(), "http_server_error", ""),
        shape(
            "anthropic overloaded 529",
            "anthropic",
            false,
            anthropic_overloaded(),
            "http_server_error",
            "overloaded_error",
        ),
        shape(
            "anthropic overloaded 500",
            "anthropic",
            false,
            anthropic_overloaded_500(),
            "http_server_error",
            "api_error",
        ),
        shape(
            "anthropic credit too low",
            "anthropic",
            true,
            anthropic_credit_too_low(),
            "ok",
            "credit_balance_too_low",
        ),
        shape("openai rate limit", "openai", true, openai_rate_limited(), "http_rate_limited", "rate_limit_exceeded"),
        shape("openai quota", "openai", true, openai_insufficient_quota(), "ok", "insufficient_quota"),
        shape("deepseek balance", "deepseek", true, deepseek_insufficient_balance(), "ok", "insufficient_balance"),
        shape("openai reachable", "openai", false, openai_reachable(), "ok", "invalid_request_error"),
        shape("anthropic reachable", "anthropic", false, anthropic_reachable(), "ok", "authentication_error"),
    ];
    for code in [1000, 1009, 1020, 1034] {
        let (name, provider_code) = (format!("cloudflare plain {code}"), format!("cloudflare_{code}"));
        v.push(shape(&name, "openai", false, cloudflare_plain(code), "http_edge_blocked", &provider_code));
    }
    v
}
