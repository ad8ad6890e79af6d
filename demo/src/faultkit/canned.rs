//! Providers' answers, as their public documentation and observed traffic show them, for
//! replay by [`serve_https`](super::serve_https).

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
