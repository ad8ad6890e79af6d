//! TCP and TLS failures, produced by the real engine against the fault kit.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::{self, TestPki, canned};
use common::*;
use tokio::net::TcpListener;

#[tokio::test]
async fn refused_port_is_tcp_refused() {
    let pki = TestPki::new().unwrap();
    let addr = faultkit::closed_port(LO).unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(format!("https://{addr}/v1/models"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TcpRefused, "connection_refused", ran_ip(true, false, false));
    assert_eq!(rep.peer_address, addr.to_string(), "the address tried");
    assert!(rep.local_address.is_empty(), "no connection was made");
}

#[tokio::test]
async fn reset_after_client_hello_is_tls_reset() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::tls_reset_after_hello(LO).await.unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TlsReset, "connection_reset", ran_ip(true, true, false));
    assert_eq!(rep.peer_address, srv.addr().to_string());
    assert!(rep.local_address.starts_with("127.0.0.1:"), "{}", rep.local_address);
}

#[tokio::test]
async fn close_after_client_hello_is_tls_eof() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::tls_eof_after_hello(LO).await.unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TlsEof, "eof_error", ran_ip(true, true, false));
}

#[tokio::test]
async fn alert_is_tls_alert() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::tls_alert(LO).await.unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TlsAlert, "unknown_failure: remote error: tls: handshake failure", ran_ip(true, true, false));
    assert!(rep.detail.contains("HandshakeFailure"), "{}", rep.detail);
}

#[tokio::test]
async fn silent_server_is_tls_timeout_within_budget() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::silent(LO).await.unwrap();
    let eng = engine(&pki, vec![]);
    let started = std::time::Instant::now();
    let rep = eng.probe(&spec(srv.url("127.0.0.1", "/"), provider("openai"), SHORT)).await;
    let took = started.elapsed();
    check(&rep, Outcome::TlsTimeout, "generic_timeout_error", ran_ip(true, true, false));
    assert!(
        took >= SHORT && took < SHORT + std::time::Duration::from_millis(300),
        "took {took:?} with a {SHORT:?} budget"
    );
}

async fn cert_case(cfg: std::sync::Arc<rustls::ServerConfig>, pki: &TestPki, failure: &str, why: &str) {
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv = faultkit::serve_https(listener, cfg, |_, _| canned::openai_reachable()).unwrap();
    let rep = engine(pki, vec![]).probe(&spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TlsCertInvalid, failure, ran_ip(true, true, false));
    assert!(rep.detail.starts_with(why), "detail {:?} should start with {why:?}", rep.detail);
}

#[tokio::test]
async fn certificate_for_another_host_is_invalid_hostname() {
    let pki = TestPki::new().unwrap();
    let cfg = pki.server_config(&["other.example.test"]).unwrap();
    cert_case(cfg, &pki, "ssl_invalid_hostname", "wrong host").await;
}

#[tokio::test]
async fn certificate_from_unknown_ca_is_unknown_authority() {
    let pki = TestPki::new().unwrap();
    let cfg = pki.untrusted_server_config(NAMES).unwrap();
    cert_case(cfg, &pki, "ssl_unknown_authority", "unknown issuer").await;
}

#[tokio::test]
async fn expired_certificate_is_invalid_certificate() {
    let pki = TestPki::new().unwrap();
    let cfg = pki.expired_server_config(NAMES).unwrap();
    cert_case(cfg, &pki, "ssl_invalid_certificate", "expired").await;
}

#[tokio::test]
async fn unusable_source_address_is_agent_error() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::silent(LO).await.unwrap();
    let mut s = spec(srv.url("127.0.0.1", "/"), provider("openai"), QUICK);
    // 192.0.2.1 (TEST-NET-1) is on no interface of this host: the bind fails locally and
    // no packet is sent anywhere.
    s.source_address = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let rep = engine(&pki, vec![]).probe(&s).await;
    check(&rep, Outcome::AgentError, "address_not_available", ran_ip(true, false, false));
}

#[tokio::test]
async fn source_address_is_used() {
    let pki = TestPki::new().unwrap();
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv =
        faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, _| canned::openai_reachable()).unwrap();
    let mut s = spec(srv.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK);
    s.source_address = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)));
    let rep = engine(&pki, vec![]).probe(&s).await;
    check(&rep, Outcome::Ok, "", ran_ip(true, true, true));
    let local: SocketAddr = rep.local_address.parse().unwrap();
    assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)));
}
