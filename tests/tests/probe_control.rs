//! Connect-only (`tcp://host:port`) probes, as control targets use them, against the fault kit.

mod common;

use std::collections::BTreeMap;

use blockwatch_agent::probe::{Engine, EngineConfig};
use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::{self, DnsAnswer, TestPki};
use common::*;

const CONNECT_ONLY: Ran = Ran { dns: false, connect: true, tls: false, http: false };

#[tokio::test]
async fn closed_port_is_tcp_refused() {
    let pki = TestPki::new().unwrap();
    let addr = faultkit::closed_port(LO).unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(format!("tcp://{addr}"), provider("generic"), QUICK)).await;
    check(&rep, Outcome::TcpRefused, "connection_refused", CONNECT_ONLY);
}

#[tokio::test]
async fn listening_port_is_ok_without_tls_or_http() {
    let pki = TestPki::new().unwrap();
    // It accepts and never sends a byte: a connect-only probe must not wait for anything more.
    let srv = faultkit::silent(LO).await.unwrap();
    let eng = engine(&pki, vec![]);
    let started = std::time::Instant::now();
    let rep = eng.probe(&spec(format!("tcp://{}", srv.addr()), provider("generic"), QUICK)).await;
    let took = started.elapsed();
    check(&rep, Outcome::Ok, "", CONNECT_ONLY);
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert_eq!(rep.peer_address, srv.addr().to_string());
    assert_eq!(rep.http_status, 0);
}

#[tokio::test]
async fn names_are_resolved_first() {
    let pki = TestPki::new().unwrap();
    let srv = faultkit::silent(LO).await.unwrap();
    let zone = BTreeMap::from([("collector.test".to_string(), DnsAnswer::Addresses(vec![LO]))]);
    let dns = faultkit::serve_dns(LO, zone).await.unwrap();
    let eng = engine(&pki, vec![dns.addr()]);
    let port = srv.addr().port();
    let rep = eng.probe(&spec(format!("tcp://collector.test:{port}"), provider("generic"), QUICK)).await;
    check(&rep, Outcome::Ok, "", Ran { dns: true, ..CONNECT_ONLY });
    assert_eq!(rep.resolved, vec![LO]);
    let rep = eng.probe(&spec(format!("tcp://gone.test:{port}"), provider("generic"), QUICK)).await;
    check(&rep, Outcome::DnsNxdomain, "dns_nxdomain_error", Ran { dns: true, connect: false, tls: false, http: false });
}

#[tokio::test]
async fn bad_tcp_urls_are_agent_errors() {
    let eng = Engine::new(EngineConfig::default()).unwrap();
    let rep = eng.probe(&spec("tcp://127.0.0.1".into(), provider("generic"), QUICK)).await;
    check(&rep, Outcome::AgentError, &rep.failure, ran_ip(false, false, false));
    assert!(rep.failure.starts_with("unknown_failure: bad probe URL"), "{}", rep.failure);
    assert!(rep.detail.contains("tcp:// needs a port"), "{}", rep.detail);
    // fetch (the egress look-up's path) wants an answer, which tcp:// never gives.
    let err = eng.fetch(&spec("tcp://127.0.0.1:1".into(), provider("generic"), QUICK)).await.unwrap_err();
    assert!(err.detail.contains("not an https:// URL"), "{}", err.detail);
}

/// The real agent and collector: with no `control` key the agent probes the collector's own
/// port, and those results arrive as target `control`, flagged as such.
#[test]
fn agent_probes_the_collector_as_its_default_control() {
    use blockwatch_tests::{CollectorProc, export, start_agent, stored, uplink, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let mut collector = CollectorProc::start(dir.path(), None, "");
    let config = format!(
        "agent_id = \"ctl-1\"\nregion = \"eu\"\n{}interval = \"1s\"\nspool_dir = {:?}\n",
        uplink(dir.path(), collector.addr, "ctl-1", "eu"),
        dir.path().join("spool").display().to_string(),
    );
    let mut agent = start_agent(dir.path(), "ctl-1", &config);
    wait_for("agent to register", std::time::Duration::from_secs(20), || {
        collector.proc.log().contains("agent registered").then_some(())
    });
    wait_for("two control results to be stored", std::time::Duration::from_secs(20), || {
        (stored(collector.api).len() >= 2).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    assert_eq!(collector.proc.terminate(), Some(0));
    let records = export(&collector.data_dir);
    assert!(!records.is_empty(), "no control results");
    for r in &records {
        assert_eq!((r.target.as_str(), r.control, r.outcome.as_str()), ("control", true, "ok"), "{r:?}");
        assert_eq!(r.peer_address, collector.addr.to_string());
    }
}
