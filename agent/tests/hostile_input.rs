//! Property tests over what the agent reads from outside: any provider answer (status,
//! headers, body) is classified without panicking and never as reachable through a refusal
//! page, and any config text parses or lists its problems.
//!
//! 256 cases a property by default; `PROPTEST_CASES=1000000 cargo test -p blockwatch-agent
//! --test hostile_input --release` is the long run.

use blockwatch_agent::config::AgentConfig;
use blockwatch_agent::probe::Catalogue;
use blockwatch_agent::probe::classify::classify;
use blockwatch_proto::Outcome;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Bodies that look like providers' JSON errors often enough to reach the signature checks.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            prop::sample::select(vec!["code", "status", "type", "__type", "message"]),
            "[a-zA-Z_ ,.]{0,40}",
            prop::sample::select(vec!["error", "x", "errors"]),
        )
            .prop_map(|(k, v, outer)| format!(r#"{{"{outer}":{{"{k}":"{v}"}}}}"#).into_bytes()),
        Just(br#"{"error":{"code":"unsupported_country_region_territory"}}"#.to_vec()),
        Just(b"<html><title>Access denied</title>Error code: 1020</html>".to_vec()),
        Just(br#"{"error": [1, {"code": null}], "type": 3}"#.to_vec()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec(
        (prop::sample::select(vec!["server", "cf-ray", "x-amzn-errortype", "content-type", "x"]), "[ -~]{0,30}"),
        0..6,
    )
    .prop_map(|kv| {
        let mut h = HeaderMap::new();
        for (k, v) in kv {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(HeaderName::from_static(k), v);
            }
        }
        h
    })
}

proptest! {
    #[test]
    fn any_answer_is_classified(
        provider in prop::sample::select(vec!["openai", "anthropic", "gemini", "bedrock", "generic", "mistral"]),
        keyed in any::<bool>(),
        status in prop_oneof![100u16..600, Just(401u16), Just(403u16), Just(429u16), Just(529u16)],
        headers in headers(),
        body in body(),
    ) {
        let catalogue = Catalogue::builtin();
        let p = catalogue.get(provider).unwrap();
        let v = classify(&catalogue, &p, keyed, status, &headers, &body);
        prop_assert!(v.detail.len() <= 1024, "detail of {} bytes", v.detail.len());
        if status == 429 && v.outcome != Outcome::HttpGeoBlocked && v.outcome != Outcome::HttpEdgeBlocked {
            prop_assert!(v.outcome == Outcome::HttpRateLimited || v.outcome == Outcome::Ok, "{v:?}");
        }
        if keyed && status == 401 {
            prop_assert!(v.outcome != Outcome::Ok, "a keyed 401 is never ok: {v:?}");
        }
    }

    #[test]
    fn any_config_text_parses_or_lists_its_problems(text in prop_oneof![
        "(agent_id|region|collector|interval|timeout|spool_max_mb|poison|nameservers) = (\"[a-z0-9:/.]{0,12}\"|[0-9]{1,5}|\\[\\]|true)\n{0,1}",
        "((agent_id|region|interval|concurrency) = (\"[a-z0-9]{0,8}\"|-?[0-9]{1,3}|\\[1\\])\n){0,6}(\\[\\[target\\]\\]\n(id|url|interval) = \"[a-z:/.0-9]{0,10}\"\n){0,2}",
        ".{0,200}",
    ]) {
        match AgentConfig::parse(&text) {
            Ok(cfg) => { let _ = cfg.validate(); }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
