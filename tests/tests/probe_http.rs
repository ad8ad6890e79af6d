//! HTTP answers: each provider's reachable, geo-blocked, rate-limited and failing answers,
//! edge pages, keyed probes, and HTTP-level timeouts and resets.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use blockwatch_agent::probe::{Catalogue, Credential, ProbeReport};
use blockwatch_proto::Outcome;
use blockwatch_proto::v1::ProbeResult;
use blockwatch_tests::faultkit::{self, Canned, FaultServer, TestPki, canned};
use common::*;
use tokio::net::TcpListener;

async fn serve(pki: &TestPki, answer: Canned) -> FaultServer {
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), move |_, _| answer.clone()).unwrap()
}

async fn probe_answer(provider_id: &str, answer: Canned) -> ProbeReport {
    let pki = TestPki::new().unwrap();
    let srv = serve(&pki, answer).await;
    let p = provider(provider_id);
    let url = srv.url("127.0.0.1", &p.config().endpoint);
    engine(&pki, vec![]).probe(&spec(url, p, QUICK)).await
}

const ALL: Ran = Ran { dns: false, connect: true, tls: true, http: true };

/// Provider id, canned answer, expected outcome, provider code and status.
type Case = (&'static str, fn() -> Canned, Outcome, &'static str, u32);

#[tokio::test]
async fn provider_answers_are_classified() {
    let cases: &[Case] = &[
        ("openai", canned::openai_reachable, Outcome::Ok, "invalid_request_error", 401),
        ("openai", canned::openai_geo_blocked, Outcome::HttpGeoBlocked, "unsupported_country_region_territory", 403),
        ("openai", canned::openai_rate_limited, Outcome::HttpRateLimited, "rate_limit_exceeded", 429),
        ("openai", canned::openai_server_error, Outcome::HttpServerError, "server_error", 500),
        ("openai", canned::cloudflare_1020, Outcome::HttpEdgeBlocked, "cloudflare_1020", 403),
        ("openai", canned::cloudflare_502, Outcome::HttpServerError, "", 502),
        ("anthropic", canned::anthropic_reachable, Outcome::Ok, "authentication_error", 401),
        ("anthropic", canned::anthropic_geo_blocked, Outcome::HttpGeoBlocked, "forbidden", 403),
        ("anthropic", canned::anthropic_rate_limited, Outcome::HttpRateLimited, "rate_limit_error", 429),
        ("anthropic", canned::anthropic_overloaded, Outcome::HttpServerError, "overloaded_error", 529),
        ("gemini", canned::gemini_keyless, Outcome::Ok, "PERMISSION_DENIED", 403),
        ("gemini", canned::gemini_geo_blocked, Outcome::HttpGeoBlocked, "FAILED_PRECONDITION", 400),
        ("bedrock", canned::bedrock_geo_blocked, Outcome::HttpGeoBlocked, "ValidationException", 400),
        // Anthropic's geo answer from OpenAI's URL (a relay) is still Anthropic's refusal.
        ("openai", canned::anthropic_geo_blocked, Outcome::HttpGeoBlocked, "forbidden", 403),
    ];
    for (id, answer, outcome, code, status) in cases {
        let rep = probe_answer(id, answer()).await;
        let failure = if *outcome == Outcome::Ok { "" } else { "http_request_failed" };
        check(&rep, *outcome, failure, ALL);
        assert_eq!(rep.provider_code, *code, "{id}: {rep:#?}");
        assert_eq!(rep.http_status, *status, "{id}");
        assert_eq!(rep.provider, *id);
        if *outcome != Outcome::Ok {
            assert!(rep.detail.contains(&format!("status {status}: ")), "{}", rep.detail);
        }
    }
}

/// Every answer users reported publicly, served verbatim over local HTTPS and probed (keyed
/// where the answer needs a key: the provider's entry then claims the test host).
#[tokio::test]
async fn reported_answers_are_classified() {
    let pki = TestPki::new().unwrap();
    let shapes = canned::real_world();
    assert!(shapes.len() >= 25, "{} shapes", shapes.len());
    for shape in shapes {
        let srv = serve(&pki, shape.answer.clone()).await;
        let mut cat = Catalogue::builtin();
        let mut entry = cat.get(shape.provider).unwrap().config().clone();
        entry.hosts = vec!["127.0.0.1".into()];
        cat.extend(vec![entry]).unwrap();
        let eng = blockwatch_agent::probe::Engine::new(blockwatch_agent::probe::EngineConfig {
            extra_ca_pem: Some(pki.ca_pem().to_vec()),
            catalogue: Arc::new(cat.clone()),
            ..Default::default()
        })
        .unwrap();
        let p = cat.get(shape.provider).unwrap();
        let mut s = spec(srv.url("127.0.0.1", &p.config().endpoint), p, QUICK);
        if shape.keyed {
            s.credential = Some(Credential::new("sk-test-0000").unwrap());
        }
        let rep = eng.probe(&s).await;
        let want = Outcome::from_name(shape.outcome).unwrap();
        assert_eq!((rep.outcome, &rep.provider_code), (want, &shape.provider_code), "{}: {rep:#?}", shape.name);
        assert_eq!(rep.keyed, shape.keyed, "{}", shape.name);
        let failure = if want == Outcome::Ok { "" } else { "http_request_failed" };
        assert_eq!(rep.failure, failure, "{}", shape.name);
    }
}

#[tokio::test]
async fn edge_headers_and_fill() {
    let rep = probe_answer("openai", canned::openai_geo_blocked()).await;
    assert_eq!(rep.edge_headers.get("server").map(String::as_str), Some("cloudflare"));
    assert!(rep.edge_headers.contains_key("cf-ray"));
    let mut r = ProbeResult::default();
    rep.fill(&mut r);
    assert_eq!(r.outcome, Outcome::HttpGeoBlocked as i32);
    assert_eq!(r.failure, "http_request_failed");
    assert_eq!(r.http_status, 403);
    assert_eq!(r.provider, "openai");
    assert_eq!(r.provider_code, "unsupported_country_region_territory");
    assert_eq!(r.peer_address, rep.peer_address);
    assert_eq!(r.edge_headers.get("cf-ray"), rep.edge_headers.get("cf-ray"));
    assert_eq!(r.durations, Some(rep.durations));
}

#[tokio::test]
async fn body_is_capped() {
    let pki = TestPki::new().unwrap();
    let big =
        format!(r#"{{"error":{{"code":"unsupported_country_region_territory","pad":"{}"}}}}"#, "x".repeat(200_000));
    let srv = serve(&pki, Canned::json(403, &big)).await;
    let eng = blockwatch_agent::probe::Engine::new(blockwatch_agent::probe::EngineConfig {
        extra_ca_pem: Some(pki.ca_pem().to_vec()),
        body_cap: 1024,
        ..Default::default()
    })
    .unwrap();
    let rep = eng.probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK)).await;
    // Cut at 1 KiB the JSON no longer parses, so the code-based signature cannot match.
    check(&rep, Outcome::HttpUnexpected, "http_request_failed", ALL);
    assert_eq!(rep.body_prefix, big.as_bytes()[..blockwatch_proto::bounds::BODY_PREFIX_BYTES]);
    assert!(rep.body_truncated);
    assert!(rep.detail.len() < 400, "detail is bounded: {}", rep.detail.len());
}

#[tokio::test]
async fn keyed_probe_sends_key_and_401_is_auth_failed() {
    let pki = TestPki::new().unwrap();
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, req| {
        match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer sk-good") => Canned::json(200, r#"{"object":"list","data":[]}"#),
            _ => canned::openai_reachable(),
        }
    })
    .unwrap();
    let eng = engine(&pki, vec![]);
    let mut s = spec(srv.url("127.0.0.1", "/v1/models"), local_openai(), QUICK);
    s.credential = Some(Credential::new("sk-good").unwrap());
    let rep = eng.probe(&s).await;
    check(&rep, Outcome::Ok, "", ALL);
    assert!(rep.keyed);
    // The request's headers are recorded, never the credential's.
    assert!(rep.request_headers.iter().any(|(n, _)| n == "user-agent"), "{:?}", rep.request_headers);
    assert!(
        rep.request_headers.iter().all(|(n, v)| n != "authorization" && !v.contains("sk-good")),
        "{:?}",
        rep.request_headers
    );
    s.credential = Some(Credential::new("sk-revoked").unwrap());
    let rep = eng.probe(&s).await;
    check(&rep, Outcome::HttpAuthFailed, "http_request_failed", ALL);
    assert!(rep.keyed);
}

#[tokio::test]
async fn credential_is_never_sent_to_a_foreign_host() {
    let pki = TestPki::new().unwrap();
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, req| {
        assert!(req.headers().get("authorization").is_none(), "credential leaked");
        canned::openai_reachable()
    })
    .unwrap();
    // The built-in OpenAI entry owns api.openai.com only, not 127.0.0.1.
    let mut s = spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK);
    s.credential = Some(Credential::new("sk-good").unwrap());
    let rep = engine(&pki, vec![]).probe(&s).await;
    check(&rep, Outcome::AgentError, &rep.failure, ran_ip(false, false, false));
    assert!(rep.failure.starts_with("unknown_failure: credential withheld"), "{}", rep.failure);
    assert!(!rep.keyed);
    assert!(rep.detail.contains("credential withheld"));
}

#[tokio::test]
async fn blocking_by_source_address() {
    // The collector demo's use: one server, refusing only some sources.
    let pki = TestPki::new().unwrap();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await.unwrap();
    let blocked = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let srv = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), move |peer, _| {
        if peer.ip() == blocked { canned::openai_geo_blocked() } else { canned::openai_reachable() }
    })
    .unwrap();
    let eng = engine(&pki, vec![]);
    let url = srv.url("127.0.0.1", "/v1/models");
    for (src, outcome) in
        [(Ipv4Addr::new(127, 0, 0, 2), Outcome::Ok), (Ipv4Addr::new(127, 0, 0, 3), Outcome::HttpGeoBlocked)]
    {
        let mut s = spec(url.clone(), provider("openai"), QUICK);
        s.source_address = Some(IpAddr::V4(src));
        assert_eq!(eng.probe(&s).await.outcome, outcome, "from {src}");
    }
}

#[tokio::test]
async fn silence_after_handshake_is_http_timeout() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::tls_silent_after_handshake(LO, pki.server_config(NAMES).unwrap()).await.unwrap();
    let eng = engine(&pki, vec![]);
    let started = std::time::Instant::now();
    let rep = eng.probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), SHORT)).await;
    let took = started.elapsed();
    check(&rep, Outcome::HttpTimeout, "generic_timeout_error", ALL);
    assert!(took < SHORT + std::time::Duration::from_millis(300), "took {took:?} with a {SHORT:?} budget");
}

#[tokio::test]
async fn reset_after_request_is_http_reset() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::http_reset(LO, pki.server_config(NAMES).unwrap()).await.unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::HttpReset, "connection_reset", ALL);
}

/// A body cut after the head (a reset, a close, silence until the deadline) is recorded as
/// what happened, never `ok` on a truncated answer; an answer that is not HTTP is
/// `unknown_failure` with the reason, not `http_request_failed`.
#[tokio::test]
async fn cut_bodies_and_broken_answers_are_recorded() {
    use faultkit::RawEnd;
    const CUT: &[u8] = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n{\"error\":{\"message\":\"You didn";
    let pki = TestPki::new().unwrap();
    let cases: &[(&[u8], RawEnd, Outcome, &str)] = &[
        (CUT, RawEnd::Reset, Outcome::HttpReset, "connection_reset"),
        (CUT, RawEnd::Close, Outcome::HttpReset, "eof_error"),
        (CUT, RawEnd::Hang, Outcome::HttpTimeout, "generic_timeout_error"),
    ];
    for &(raw, end, outcome, failure) in cases {
        let srv = faultkit::http_raw(LO, pki.server_config(NAMES).unwrap(), raw, end).await.unwrap();
        let rep =
            engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), SHORT)).await;
        check(&rep, outcome, failure, ALL);
        assert_eq!(rep.http_status, 401, "{end:?}: the status that arrived is kept");
        assert!(rep.detail.contains("body cut after"), "{end:?}: {}", rep.detail);
    }
    let srv = faultkit::http_raw(LO, pki.server_config(NAMES).unwrap(), b"SSH-2.0-OpenSSH_9.6\r\n\r\n", RawEnd::Close)
        .await
        .unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK)).await;
    assert_eq!(rep.outcome, Outcome::HttpUnexpected, "{rep:#?}");
    assert!(rep.failure.starts_with("unknown_failure: "), "{}", rep.failure);
    assert_eq!(rep.failed_operation, "http_round_trip");
}
