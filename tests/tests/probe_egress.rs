//! Egress identity: an IP-echo endpoint (the fault kit answering each caller its own address)
//! looked up through the probe engine, and kept current.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blockwatch_agent::probe::egress::{self, Egress, EgressError};
use blockwatch_agent::probe::geoip::{GeoIp, GeoIpError, Network};
use blockwatch_tests::faultkit::{self, Canned, FaultServer, TestPki};
use blockwatch_tests::mmdb::{self, Asn, Country, IpinfoLite, IsoCode};
use bytes::Bytes;
use common::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn text(status: u16, body: String) -> Canned {
    Canned { status, headers: vec![("content-type".into(), "text/plain".into())], body: Bytes::from(body) }
}

/// An echo server listening on every loopback address, answering `answer(peer ip, request n)`.
async fn echo<F>(pki: &TestPki, answer: F) -> FaultServer
where
    F: Fn(IpAddr, usize) -> Canned + Send + Sync + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await.unwrap();
    let n = AtomicUsize::new(0);
    faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), move |peer, _| {
        answer(peer.ip(), n.fetch_add(1, Ordering::SeqCst))
    })
    .unwrap()
}

fn echo_spec(srv: &FaultServer) -> blockwatch_agent::probe::ProbeSpec {
    spec(srv.url("127.0.0.1", "/"), provider("generic"), QUICK)
}

#[tokio::test]
async fn lookup_returns_the_address_the_server_saw() {
    let pki = TestPki::new().unwrap();
    let srv = echo(&pki, |ip, _| text(200, format!("{ip}\n"))).await;
    let eng = engine(&pki, vec![]);
    let mut s = echo_spec(&srv);
    assert_eq!(egress::lookup(&eng, &s).await.unwrap(), LO);
    // The look-up leaves from the probes' source address, so it names their egress.
    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    s.source_address = Some(src);
    assert_eq!(egress::lookup(&eng, &s).await.unwrap(), src);
}

#[tokio::test]
async fn bad_answers_are_named() {
    let pki = TestPki::new().unwrap();
    let srv = echo(&pki, |_, n| match n {
        0 => text(503, "busy".into()),
        _ => text(200, "<html>not an address</html>".into()),
    })
    .await;
    let eng = engine(&pki, vec![]);
    let s = echo_spec(&srv);
    let e = egress::lookup(&eng, &s).await.unwrap_err();
    assert!(matches!(e, EgressError::Status { status: 503, .. }), "{e}");
    let e = egress::lookup(&eng, &s).await.unwrap_err();
    assert!(matches!(e, EgressError::NotAnAddress { .. }), "{e}");
    assert!(e.to_string().contains("not an IP address"), "{e}");
    let closed = faultkit::closed_port(LO).unwrap();
    let e = egress::lookup(&eng, &spec(format!("https://{closed}/"), provider("generic"), QUICK)).await.unwrap_err();
    assert!(matches!(e, EgressError::Fetch { outcome: "tcp_refused", .. }), "{e}");
}

#[tokio::test]
async fn kept_current_and_last_known_kept_through_failures() {
    let pki = TestPki::new().unwrap();
    // First 127.0.0.1, then a failing endpoint, then a new address.
    let srv = echo(&pki, |_, n| match n {
        0 => text(200, "127.0.0.1".into()),
        1 | 2 => text(500, "oops".into()),
        _ => text(200, "127.0.0.2".into()),
    })
    .await;
    let (tx, mut rx) = watch::channel(Egress::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(egress::keep_current(
        engine(&pki, vec![]),
        echo_spec(&srv),
        GeoIp::default(),
        Duration::from_millis(50),
        Duration::from_millis(20),
        tx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.changed().await.is_ok() {
            let v = rx.borrow_and_update().address.clone();
            seen.push(v.clone());
            if v == "127.0.0.2" {
                break;
            }
        }
    })
    .await
    .expect("the new address within 10s");
    assert_eq!(seen.first().map(String::as_str), Some("127.0.0.1"));
    assert!(seen.iter().all(|v| v == "127.0.0.1" || v == "127.0.0.2"), "never blanked: {seen:?}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends on stop").unwrap();
}

/// The three layouts the common databases use, for 127.0.0.0/8 and 2001:db8::/32; written
/// into `dir`.
fn databases(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let asn = dir.join("GeoLite2-ASN.mmdb");
    let org = "Example Hosting GmbH";
    mmdb::write(
        &asn,
        false,
        "GeoLite2-ASN",
        &[
            ("127.0.0.0/24", Asn { autonomous_system_number: 64500, autonomous_system_organization: org }),
            ("127.0.1.0/24", Asn { autonomous_system_number: 64501, autonomous_system_organization: "Home\nNet" }),
        ],
    );
    let country = dir.join("GeoLite2-Country.mmdb");
    let iso = |c| Some(IsoCode { iso_code: c });
    mmdb::write(
        &country,
        true,
        "GeoLite2-Country",
        &[
            ("127.0.0.0/16", Country { country: iso("DE"), registered_country: iso("DE") }),
            // No physical country: the registration's is used.
            ("127.1.0.0/16", Country { country: None, registered_country: iso("fr") }),
            ("2001:db8::/32", Country { country: iso("NL"), registered_country: None }),
        ],
    );
    let ipinfo = dir.join("ipinfo_lite.mmdb");
    mmdb::write(
        &ipinfo,
        true,
        "ipinfo lite",
        &[("127.0.0.0/8", IpinfoLite { asn: "AS64502", as_name: "Lite Net", country: "Japan", country_code: "JP" })],
    );
    (asn, country, ipinfo)
}

fn net(asn: u32, as_org: &str, country: &str) -> Network {
    Network { asn, as_org: as_org.into(), country: country.into() }
}

#[test]
fn networks_are_read_from_each_common_database_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (asn, country, ipinfo) = databases(dir.path());
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // GeoLite2 ships ASN and country apart: both files, the first naming a field gives it.
    let both = GeoIp::new(vec![asn.clone(), country.clone()]);
    assert!(both.check().is_empty());
    assert_eq!(both.network(ip("127.0.0.7")).unwrap(), net(64500, "Example Hosting GmbH", "DE"));
    // Control characters are no part of a name a result carries.
    assert_eq!(both.network(ip("127.0.1.1")).unwrap(), net(64501, "HomeNet", "DE"));
    assert_eq!(both.network(ip("127.1.2.3")).unwrap(), net(0, "", "FR"));
    // An IPv6 address: the IPv4-only ASN file does not hold it, the country file does.
    assert_eq!(both.network(ip("2001:db8::1")).unwrap(), net(0, "", "NL"));
    assert_eq!(both.network(ip("192.0.2.1")).unwrap(), Network::default());
    // IPinfo lite: `asn` as text, `country` a name and `country_code` the code.
    let lite = GeoIp::new(vec![ipinfo.clone()]);
    assert_eq!(lite.network(ip("127.0.0.7")).unwrap(), net(64502, "Lite Net", "JP"));
    // Order decides: the ASN file first gives the ASN, IPinfo the country it lacks.
    let mixed = GeoIp::new(vec![asn, ipinfo]);
    assert_eq!(mixed.network(ip("127.0.0.7")).unwrap(), net(64500, "Example Hosting GmbH", "JP"));

    // Files that are not databases are named, at check time and at look-up.
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"not a database").unwrap();
    let missing = dir.path().join("missing.mmdb");
    let bad = GeoIp::new(vec![country, junk.clone(), missing.clone()]);
    let problems: Vec<String> = bad.check().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with(&format!("geoip_db {}", junk.display())), "{problems:?}");
    assert!(problems[1].starts_with(&format!("geoip_db {}", missing.display())), "{problems:?}");
    assert!(matches!(bad.network(ip("127.0.0.1")), Err(GeoIpError::Open { .. })));
}

#[tokio::test]
async fn the_egress_identity_carries_its_network() {
    let pki = TestPki::new().unwrap();
    let srv = echo(&pki, |_, n| text(200, if n == 0 { "127.0.0.9" } else { "127.1.0.9" }.into())).await;
    let dir = tempfile::tempdir().unwrap();
    let (asn, country, _) = databases(dir.path());
    let (tx, mut rx) = watch::channel(Egress::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(egress::keep_current(
        engine(&pki, vec![]),
        echo_spec(&srv),
        GeoIp::new(vec![asn, country]),
        Duration::from_millis(50),
        Duration::from_millis(20),
        tx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let wait = |want: &'static str| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| e.address == want))
                .await
                .unwrap()
                .unwrap()
                .clone()
        }
    };
    assert_eq!(wait("127.0.0.9").await.network, net(64500, "Example Hosting GmbH", "DE"));
    // The next look-up moved networks: the identity follows, whole.
    assert_eq!(wait("127.1.0.9").await.network, net(0, "", "FR"));
    rx.mark_unchanged();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends on stop").unwrap();
}
