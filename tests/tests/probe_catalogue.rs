//! The catalogue and the pure classifier, tested as data (no network).

use blockwatch_agent::probe::classify::classify;
use blockwatch_agent::probe::{Catalogue, LocationVisibility, Provider, ProviderConfig};
use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::{Canned, canned};
use http::{HeaderMap, HeaderName, HeaderValue};

fn verdict(id: &str, keyed: bool, c: Canned) -> (Outcome, String) {
    let cat = Catalogue::builtin();
    let p = cat.get(id).unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in &c.headers {
        headers.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let v = classify(&cat, &p, keyed, c.status, &headers, &c.body);
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
    let v = classify(&cat, &acme, false, 451, &HeaderMap::new(), br#"{"msg":"Not in your Region"}"#);
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
    // A known refusal is one whoever's URL it came from (a relay, a target with the wrong
    // or no provider).
    for other in ["mistral", "generic"] {
        assert_eq!(
            verdict(other, false, canned::openai_geo_blocked()),
            (Outcome::HttpGeoBlocked, "unsupported_country_region_territory".into())
        );
    }
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

/// Everything a built-in signature states, a config entry can state too: statuses, codes,
/// headers, all-of and any-of body texts, for refusals, edge pages and accepted answers.
#[test]
fn config_entries_express_every_kind_of_signature() {
    let toml = r#"
        id = "relay"
        hosts = ["relay.example"]
        endpoint = "/v1/models"
        reachable = [401]
        geo = [{ status = [400, 403], code = "FAILED_PRECONDITION", body_any = ["not available in your country", "location is not supported"], provider_code = "relay_geo" }]
        edge = [{ headers = { "x-edge-verdict" = "deny" }, provider_code = "relay_edge" }]
        accepted = [{ status = 402, body_contains = ["balance"], provider_code = "relay_balance" }]
    "#;
    let entry: ProviderConfig = toml::from_str(toml).unwrap();
    let mut cat = Catalogue::builtin();
    cat.extend(vec![entry]).unwrap();
    let relay = cat.get("relay").unwrap();
    let answer = |status: u16, headers: &[(&str, &str)], body: &str| {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let v = classify(&cat, &relay, false, status, &h, body.as_bytes());
        (v.outcome, v.provider_code)
    };
    let geo = r#"{"error":{"status":"FAILED_PRECONDITION","message":"Feature X is NOT available in your country."}}"#;
    assert_eq!(answer(403, &[], geo), (Outcome::HttpGeoBlocked, "relay_geo".into()));
    assert_eq!(answer(451, &[], geo).0, Outcome::HttpUnexpected, "status outside the list");
    let other = r#"{"error":{"status":"FAILED_PRECONDITION","message":"Precondition failed."}}"#;
    assert_eq!(answer(400, &[], other).0, Outcome::HttpUnexpected, "none of the wordings");
    assert_eq!(
        answer(418, &[("X-Edge-Verdict", "DENY by rule 7")], ""),
        (Outcome::HttpEdgeBlocked, "relay_edge".into())
    );
    assert_eq!(answer(402, &[], "Low Balance"), (Outcome::Ok, "relay_balance".into()));

    // A signature must say something, and whatever it says must be checkable.
    for (bad, why) in [
        (r#"geo = [{ provider_code = "x" }]"#, "without a condition"),
        (r#"edge = [{ body_any = [""], provider_code = "x" }]"#, "empty body text"),
        (r#"accepted = [{ status = 99, provider_code = "x" }]"#, "not an HTTP status"),
        (r#"geo = [{ headers = { "bad header" = "" }, provider_code = "x" }]"#, "not an HTTP header name"),
        (r#"geo = [{ status = 403, provider_code = "" }]"#, "provider_code"),
    ] {
        let text = format!("id = \"x\"\nendpoint = \"/\"\nreachable = [401]\n{bad}");
        let entry: ProviderConfig = toml::from_str(&text).unwrap();
        let err = Catalogue::builtin().extend(vec![entry]).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// The reported answers, classified as data (the same table the HTTPS test serves).
#[test]
fn reported_answers_classify_as_data() {
    for shape in canned::real_world() {
        let (outcome, code) = verdict(shape.provider, shape.keyed, shape.answer);
        assert_eq!((outcome.name(), &code), (shape.outcome, &shape.provider_code), "{}", shape.name);
    }
}
