//! DNS outcomes against the fault kit's DNS server, and a name resolved all the way through
//! to a local HTTPS answer.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use blockwatch_agent::probe::{Engine, EngineConfig, ProbeReport};
use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::{self, DnsAnswer, FaultServer, TestPki, canned};
use common::*;
use tokio::net::TcpListener;

const DNS_ONLY: Ran = Ran { dns: true, connect: false, tls: false, http: false };

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

async fn dns_server() -> FaultServer {
    let zone = BTreeMap::from([
        ("api.openai.test".to_string(), DnsAnswer::Addresses(vec![LO])),
        ("private.test".to_string(), DnsAnswer::Addresses(vec![v4(10, 1, 2, 3)])),
        ("poisoned.test".to_string(), DnsAnswer::Addresses(vec![v4(198, 51, 100, 7)])),
        ("servfail.test".to_string(), DnsAnswer::ServFail),
        ("refused.test".to_string(), DnsAnswer::Refused),
        ("empty.test".to_string(), DnsAnswer::NoAnswer),
        ("silent.test".to_string(), DnsAnswer::Silent),
        ("sinkhole.test".to_string(), DnsAnswer::Addresses(vec![v4(0, 0, 0, 0)])),
        ("sinkhole6.test".to_string(), DnsAnswer::Addresses(vec!["::".parse().unwrap()])),
    ]);
    faultkit::serve_dns(LO, zone).await.unwrap()
}

async fn probe_name(host: &str, allow_private: bool, timeout: std::time::Duration) -> ProbeReport {
    let pki = TestPki::new().unwrap();
    let dns = dns_server().await;
    let eng = Engine::new(EngineConfig {
        nameservers: vec![dns.addr()],
        extra_ca_pem: Some(pki.ca_pem().to_vec()),
        // 198.51.100.7 is what the censor answers: poisoned wherever it appears.
        poison: vec![v4(198, 51, 100, 7)],
        ..Default::default()
    })
    .unwrap();
    let mut s = spec(format!("https://{host}/v1/models"), provider("openai"), timeout);
    s.allow_private = allow_private;
    eng.probe(&s).await
}

#[tokio::test]
async fn nxdomain() {
    let rep = probe_name("missing.test", false, QUICK).await;
    check(&rep, Outcome::DnsNxdomain, "dns_nxdomain_error", DNS_ONLY);
    // Both queries are recorded, each with its own failure.
    let queries: Vec<(&str, &str, usize)> =
        rep.dns_queries.iter().map(|q| (q.query_type.as_str(), q.failure.as_str(), q.answers.len())).collect();
    assert_eq!(queries, [("AAAA", "dns_nxdomain_error", 0), ("A", "dns_nxdomain_error", 0)]);
}

#[tokio::test]
async fn servfail() {
    let rep = probe_name("servfail.test", false, QUICK).await;
    check(&rep, Outcome::DnsServfail, "dns_servfail_error", DNS_ONLY);
}

#[tokio::test]
async fn refused_is_servfail_with_refused_failure() {
    let rep = probe_name("refused.test", false, QUICK).await;
    check(&rep, Outcome::DnsServfail, "dns_refused_error", DNS_ONLY);
}

#[tokio::test]
async fn no_answer() {
    let rep = probe_name("empty.test", false, QUICK).await;
    check(&rep, Outcome::DnsNoAnswer, "dns_no_answer", DNS_ONLY);
}

#[tokio::test]
async fn silent_server_is_dns_timeout() {
    let rep = probe_name("silent.test", false, SHORT).await;
    check(&rep, Outcome::DnsTimeout, "generic_timeout_error", DNS_ONLY);
}

#[tokio::test]
async fn private_answer_is_bogon_unless_allowed() {
    let rep = probe_name("private.test", false, QUICK).await;
    check(&rep, Outcome::DnsBogon, "dns_bogon_error", DNS_ONLY);
    assert_eq!(rep.resolved, vec![v4(10, 1, 2, 3)], "the forged answer is recorded");
    let rep = probe_name("api.openai.test", false, QUICK).await;
    check(&rep, Outcome::DnsBogon, "dns_bogon_error", DNS_ONLY);
}

#[tokio::test]
async fn poisoned_answer_is_bogon_even_when_private_is_allowed() {
    let rep = probe_name("poisoned.test", true, QUICK).await;
    check(&rep, Outcome::DnsBogon, "dns_bogon_error", DNS_ONLY);
    assert_eq!(rep.resolved, vec![v4(198, 51, 100, 7)]);
}

#[tokio::test]
async fn name_resolves_through_to_the_provider() {
    let pki = TestPki::new().unwrap();
    let dns = dns_server().await;
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let https = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, req| {
        // The Host header carries the name, as a real provider would see it.
        assert!(req.headers()["host"].to_str().unwrap().starts_with("api.openai.test:"));
        canned::openai_reachable()
    })
    .unwrap();
    let rep = engine(&pki, vec![dns.addr()])
        .probe(&spec(https.url("api.openai.test", "/v1/models"), provider("openai"), QUICK))
        .await;
    check(&rep, Outcome::Ok, "", Ran { dns: true, connect: true, tls: true, http: true });
    assert_eq!(rep.resolved, vec![LO]);
    assert_eq!(rep.peer_address, https.addr().to_string());
    // Per query type: the A query's record, the AAAA query's lack of one.
    let queries: Vec<String> = rep
        .dns_queries
        .iter()
        .map(|q| {
            let answers: Vec<String> = q.answers.iter().map(|a| format!("{} {}", a.answer_type, a.value)).collect();
            format!("{} [{}] {}", q.query_type, q.failure, answers.join(", "))
        })
        .collect();
    assert_eq!(queries, ["AAAA [dns_no_answer] ", "A [] A 127.0.0.1"], "{:?}", rep.dns_queries);
    // The session and the exchange, as the export's OONI measurement needs them.
    assert_eq!(rep.tls_version, "TLSv1.3");
    assert!(
        rep.tls_cipher_suite.starts_with("TLS_AES_") || rep.tls_cipher_suite.starts_with("TLS_CHACHA20"),
        "{}",
        rep.tls_cipher_suite
    );
    assert_eq!(rep.url, https.url("api.openai.test", "/v1/models"));
    let host = rep.request_headers.iter().find(|(n, _)| n == "host").map(|(_, v)| v.as_str());
    assert!(host.is_some_and(|h| h.starts_with("api.openai.test:")), "{:?}", rep.request_headers);
    assert!(rep.response_headers.iter().any(|(n, _)| n == "content-type"), "{:?}", rep.response_headers);
    assert!(rep.body_prefix.starts_with(b"{"), "{:?}", String::from_utf8_lossy(&rep.body_prefix));
}

/// `0.0.0.0` and `::`, the usual sinkhole answers, are forged even for a local target, where
/// a connection to them would reach this very host.
#[tokio::test]
async fn sinkhole_answers_are_bogons_even_for_local_targets() {
    for (name, addr) in [("sinkhole.test", v4(0, 0, 0, 0)), ("sinkhole6.test", "::".parse().unwrap())] {
        let rep = probe_name(name, true, QUICK).await;
        check(&rep, Outcome::DnsBogon, "dns_bogon_error", DNS_ONLY);
        assert_eq!(rep.resolved, vec![addr], "{name}");
    }
}
