//! The catalogue and the pure classifier, tested as data (no network).

use blockwatch_agent::probe::classify::classify;
use blockwatch_agent::probe::{Catalogue, LocationVisibility, Provider, ProviderConfig};
use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::{Canned, canned};
use http::{HeaderMap, HeaderName, HeaderValue};

fn verdict(id: &str, keyed: bool, c: Canned) -> (Outcome, String) {
    let p = Catalogue::builtin().get(id).unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in &c.headers {
        headers.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let v = classify(&p, keyed, c.status, &headers, &c.body);
    (v.outcome, v.provider_code)
}

#[test]
fn builtin_entries_pass_their_own_checks() {
    let cat = Catalogue::builtin();
    let ids: Vec<&str> = cat.iter().map(|p| p.id()).collect();
    for want in [
        "openai",
        "anthropic",
        "gemini",
        "azure-openai",
        "mistral",
        "deepseek",
        "moonshot",
        "zhipu",
        "dashscope",
        "bedrock",
        "generic",
    ] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    for p in cat.iter() {
        Provider::new(p.config().clone()).unwrap_or_else(|e| panic!("{}: {e}", p.id()));
    }
    assert_eq!(cat.get("gemini").unwrap().config().location_visibility, LocationVisibility::Keyed);
    assert_eq!(cat.get("openai").unwrap().config().location_visibility, LocationVisibility::Unknown);
}

#[test]
fn hosts_map_to_providers() {
    let cat = Catalogue::builtin();
    for (host, id) in [
        ("api.openai.com", "openai"),
        ("API.OpenAI.com.", "openai"),
        ("myres.openai.azure.com", "azure-openai"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
        ("generativelanguage.googleapis.com", "gemini"),
        ("openai.azure.com", "generic"),
        ("evil-api.openai.com", "generic"),
        ("bedrock.a.b.amazonaws.com", "generic"),
        ("example.org", "generic"),
    ] {
        assert_eq!(cat.for_host(host).id(), id, "{host}");
    }
}

#[test]
fn config_files_add_and_override_providers() {
    let mut cat = Catalogue::builtin();
    let json = r#"[
      {"id": "acme", "hosts": ["api.acme.test"], "endpoint": "/v1/models", "reachable": [401],
       "geo": [{"status": 451, "body_contains": ["region"], "provider_code": "acme_region"}],
       "location_visibility": "keyless", "auth": "x_api_key", "headers": {"acme-version": "1"}},
      {"id": "openai", "hosts": ["api.openai.com", "eu.api.openai.com"], "endpoint": "/v1/models", "reachable": [401]}
    ]"#;
    let cfgs: Vec<ProviderConfig> = serde_json::from_str(json).unwrap();
    cat.extend(cfgs).unwrap();
    assert_eq!(cat.for_host("api.acme.test").id(), "acme");
    assert_eq!(cat.for_host("eu.api.openai.com").id(), "openai");
    let acme = cat.get("acme").unwrap();
    let v = classify(&acme, false, 451, &HeaderMap::new(), br#"{"msg":"Not in your Region"}"#);
    assert_eq!((v.outcome, v.provider_code.as_str()), (Outcome::HttpGeoBlocked, "acme_region"));

    let typo = r#"{"id": "x", "endpoint": "/", "reachable": [401], "reachabel": [200]}"#;
    assert!(serde_json::from_str::<ProviderConfig>(typo).is_err(), "unknown fields are refused");
    let bad: ProviderConfig = serde_json::from_str(r#"{"id": "x", "endpoint": "v1", "reachable": [401]}"#).unwrap();
    assert!(cat.extend(vec![bad]).is_err());
    assert!(cat.get("x").is_none(), "a refused batch changes nothing");
}

#[test]
fn answers_classify_per_provider() {
    assert_eq!(verdict("openai", false, canned::openai_reachable()).0, Outcome::Ok);
    assert_eq!(
        verdict("openai", false, canned::openai_geo_blocked()),
        (Outcome::HttpGeoBlocked, "unsupported_country_region_territory".into())
    );
    // The same geo answer from another provider's endpoint is not that provider's refusal.
    assert_eq!(verdict("mistral", false, canned::openai_geo_blocked()).0, Outcome::HttpUnexpected);
    assert_eq!(verdict("anthropic", false, canned::anthropic_overloaded()).0, Outcome::HttpServerError);
    assert_eq!(verdict("gemini", false, canned::gemini_keyless()).0, Outcome::Ok);
    assert_eq!(verdict("gemini", true, canned::gemini_geo_blocked()).0, Outcome::HttpGeoBlocked);
    assert_eq!(verdict("gemini", true, canned::gemini_keyless()).0, Outcome::HttpUnexpected);
    assert_eq!(verdict("bedrock", false, canned::bedrock_geo_blocked()).0, Outcome::HttpGeoBlocked);
    assert_eq!(verdict("openai", true, canned::openai_reachable()).0, Outcome::HttpAuthFailed);
    // Edge pages: Cloudflare's refusal is the edge's, its 502 only a server error.
    assert_eq!(
        verdict("anthropic", false, canned::cloudflare_1020()),
        (Outcome::HttpEdgeBlocked, "cloudflare_1020".into())
    );
    assert_eq!(verdict("generic", false, canned::cloudflare_1020()).0, Outcome::HttpEdgeBlocked);
    assert_eq!(verdict("generic", false, canned::cloudflare_502()).0, Outcome::HttpServerError);
    // The generic provider: any origin answer but 429/5xx is reachable.
    assert_eq!(verdict("generic", false, Canned::json(404, "{}")).0, Outcome::Ok);
    assert_eq!(verdict("generic", false, Canned::json(429, "{}")).0, Outcome::HttpRateLimited);
}
