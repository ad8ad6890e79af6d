//! The agent around the engine: a config's `[[provider]]` entries, a target's key, the control
//! target and the egress address and network, all the way through `scheduler::probe_once` into the spool.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use blockwatch_agent::config::AgentConfig;
use blockwatch_agent::probe::geoip::GeoIp;
use blockwatch_agent::probe::{ProbeSpec, egress};
use blockwatch_agent::scheduler::{ProbeContext, probe_once};
use blockwatch_agent::spool::Spool;
use blockwatch_agent::{plan, targets};
use blockwatch_proto::Outcome;
use blockwatch_proto::v1::ProbeResult;
use blockwatch_tests::faultkit::{self, Canned, TestPki, canned};
use blockwatch_tests::mmdb::{self, Asn, Country, IsoCode};
use bytes::Bytes;
use common::*;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

const KEY: &str = "sk-acme-secret";

#[tokio::test]
async fn config_keys_control_and_egress_reach_the_results() {
    let pki = TestPki::new().unwrap();
    // One server plays the provider (200 only to the right key) and the IP-echo endpoint.
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |peer, req| {
        if req.uri().path() == "/ip" {
            return Canned { status: 200, headers: vec![], body: Bytes::from(peer.ip().to_string()) };
        }
        match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == format!("Bearer {KEY}") => Canned::json(200, r#"{"object":"list","data":[]}"#),
            _ => canned::openai_geo_blocked(),
        }
    })
    .unwrap();
    // The default control target is the collector's host and port; here something listens.
    let collector = faultkit::silent(LO).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = srv.addr().port();
    // The network the egress address belongs to, in GeoLite2's two files.
    let (asn_db, country_db) = (dir.path().join("asn.mmdb"), dir.path().join("country.mmdb"));
    let asn = Asn { autonomous_system_number: 64500, autonomous_system_organization: "Example Hosting" };
    mmdb::write(&asn_db, false, "GeoLite2-ASN", &[("127.0.0.0/8", asn)]);
    let de = Country { country: Some(IsoCode { iso_code: "DE" }), registered_country: None };
    mmdb::write(&country_db, true, "GeoLite2-Country", &[("127.0.0.0/8", de)]);
    let cfg = AgentConfig::parse(&format!(
        r#"
        agent_id = "a1"
        region = "r1"
        collector = "http://{collector}"
        insecure = true
        spool_dir = {spool:?}
        egress_echo_url = "https://127.0.0.1:{port}/ip"
        geoip_db = [{asn_db:?}, {country_db:?}]
        [[target]]
        id = "acme"
        url = "https://127.0.0.1:{port}/v1/models"
        credential_env = "ACME_KEY"
        local = true
        [[provider]]
        id = "acme"
        hosts = ["127.0.0.1"]
        endpoint = "/v1/models"
        reachable = [401]
        geo = [{{ status = 403, code = "unsupported_country_region_territory", provider_code = "acme_geo" }}]
        "#,
        collector = collector.addr(),
        spool = dir.path().join("spool").display().to_string(),
        asn_db = asn_db.display().to_string(),
        country_db = country_db.display().to_string(),
    ))
    .unwrap();
    cfg.validate().unwrap();
    let credentials = cfg.credentials(|k| (k == "ACME_KEY").then(|| KEY.to_string())).unwrap();
    let catalogue = cfg.catalogue().unwrap();
    let eng = engine(&pki, vec![]);

    let (egress_tx, egress_rx) = watch::channel(egress::Egress::default());
    let echo = ProbeSpec {
        url: cfg.egress_echo_url.clone().unwrap(),
        provider: targets::provider_for(&catalogue, "generic", "", &[]),
        ..spec(String::new(), provider("generic"), QUICK)
    };
    // Runs until the test's runtime ends.
    let never = std::future::pending::<()>();
    let geoip = GeoIp::new(cfg.geoip_db.clone());
    tokio::spawn(egress::keep_current(eng.clone(), echo, geoip, egress::REFRESH, egress::RETRY, egress_tx, never));
    let mut known = egress_rx.clone();
    tokio::time::timeout(Duration::from_secs(10), known.wait_for(|e| !e.address.is_empty())).await.unwrap().unwrap();

    let spool = Arc::new(Spool::open(&cfg.spool_dir, 1 << 20).unwrap());
    let ctx = ProbeContext {
        cfg: Arc::new(cfg.clone()),
        engine: eng,
        catalogue: Arc::new(catalogue),
        spool: Arc::clone(&spool),
        new_results: Arc::new(Notify::new()),
        permits: Arc::new(Semaphore::new(4)),
        credentials: Arc::new(credentials),
        egress: egress_rx,
        metrics: Arc::new(blockwatch_agent::metrics::AgentMetrics::new(&cfg.agent_id, &cfg.region)),
    };
    let active = plan::initial(&cfg);
    assert_eq!(active.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["acme", "control"]);
    for t in &active.targets {
        assert_eq!(probe_once(&ctx, t, false).await, Some(Outcome::Ok), "{}", t.id);
    }

    let results = spool.pending(10, 0, &HashSet::new()).unwrap();
    let by_id = |id: &str| -> &ProbeResult { results.iter().find(|r| r.target_id == id).unwrap() };
    let acme = by_id("acme");
    assert!(acme.keyed, "the key from credential_env was sent");
    assert_eq!((acme.provider.as_str(), acme.http_status, acme.control), ("acme", 200, false));
    assert_eq!(acme.egress_address, "127.0.0.1");
    let network = |r: &ProbeResult| (r.egress_asn, r.egress_as_org.clone(), r.egress_country.clone());
    assert_eq!(network(acme), (64500, "Example Hosting".into(), "DE".into()));
    let control = by_id("control");
    assert!(control.control);
    assert_eq!(control.peer_address, collector.addr().to_string());
    assert_eq!((control.http_status, control.keyed), (0, false));
    assert_eq!(control.egress_address, "127.0.0.1");
    assert_eq!(network(control), network(acme));
    assert!(results.iter().all(|r| !format!("{r:?}").contains(KEY)), "the key is in no result");

    // Without the key the same provider's refusal is classified by the config's signature.
    let mut keyless = active.targets[0].clone();
    keyless.credential = None;
    assert_eq!(probe_once(&ctx, &keyless, false).await, Some(Outcome::HttpGeoBlocked));
    let results = spool.pending(10, 0, &HashSet::new()).unwrap();
    assert!(results.iter().any(|r| r.provider_code == "acme_geo" && !r.keyed));
}
