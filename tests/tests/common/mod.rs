//! Helpers shared by the integration tests: an engine trusting the fault kit's CA, probe
//! specs, and one assertion that checks outcome, failure string and which phases ran.
#![allow(dead_code)] // each test file uses a different subset

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use blockwatch_agent::probe::{Catalogue, Engine, EngineConfig, ProbeReport, ProbeSpec, Provider};
use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::TestPki;

/// 127.0.0.1.
pub const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Names every fault-kit certificate is valid for.
pub const NAMES: &[&str] = &["localhost", "127.0.0.1", "api.openai.test", "api.anthropic.test"];

/// A generous probe budget for probes that should finish quickly.
pub const QUICK: Duration = Duration::from_secs(5);
/// A short budget for probes that are meant to time out.
pub const SHORT: Duration = Duration::from_millis(800);

/// An engine trusting `pki`, resolving through `nameservers` (system resolver if empty).
pub fn engine(pki: &TestPki, nameservers: Vec<SocketAddr>) -> Engine {
    Engine::new(EngineConfig { nameservers, extra_ca_pem: Some(pki.ca_pem().to_vec()), ..EngineConfig::default() })
        .expect("engine")
}

/// A built-in provider.
pub fn provider(id: &str) -> Arc<Provider> {
    Catalogue::builtin().get(id).expect("built-in provider")
}

/// OpenAI's entry, claiming the loopback test host so a credential may be sent to it.
pub fn local_openai() -> Arc<Provider> {
    let mut cat = Catalogue::builtin();
    let mut cfg = cat.get("openai").unwrap().config().clone();
    cfg.hosts = vec!["127.0.0.1".into()];
    cat.extend(vec![cfg]).unwrap();
    cat.get("openai").unwrap()
}

/// A keyless spec for a local target.
pub fn spec(url: String, provider: Arc<Provider>, timeout: Duration) -> ProbeSpec {
    ProbeSpec { url, provider, timeout, source_address: None, allow_private: true, credential: None }
}

/// Which phases must have a non-zero duration: DNS, connect, TLS, HTTP.
#[derive(Debug, Clone, Copy)]
pub struct Ran {
    pub dns: bool,
    pub connect: bool,
    pub tls: bool,
    pub http: bool,
}

/// Phases that ran, by count from the start, for a target given as an IP literal.
pub fn ran_ip(connect: bool, tls: bool, http: bool) -> Ran {
    Ran { dns: false, connect, tls, http }
}

/// Asserts outcome, failure string and exactly which phases were timed.
pub fn check(rep: &ProbeReport, outcome: Outcome, failure: &str, ran: Ran) {
    let d = &rep.durations;
    let got = Ran { dns: d.dns_us > 0, connect: d.connect_us > 0, tls: d.tls_us > 0, http: d.http_us > 0 };
    assert_eq!(rep.outcome, outcome, "outcome; report: {rep:#?}");
    assert_eq!(rep.failure, failure, "failure; report: {rep:#?}");
    assert_eq!(
        (got.dns, got.connect, got.tls, got.http),
        (ran.dns, ran.connect, ran.tls, ran.http),
        "phases that ran (dns, connect, tls, http); report: {rep:#?}"
    );
    assert!(d.total_us > 0, "total always timed");
    assert_eq!(d.http_ttfb_us > 0, rep.http_status > 0, "ttfb only with an answer; report: {rep:#?}");
    // The failed operation is the last phase that ran, or the top level when none did.
    let last =
        [(ran.http, "http_round_trip"), (ran.tls, "tls_handshake"), (ran.connect, "connect"), (ran.dns, "resolve")]
            .into_iter()
            .find_map(|(r, op)| r.then_some(op))
            .unwrap_or("top_level");
    let op = if failure.is_empty() { "" } else { last };
    assert_eq!(rep.failed_operation, op, "failed operation; report: {rep:#?}");
}
