//! Egress identity: an IP-echo endpoint (the fault kit answering each caller its own address)
//! looked up through the probe engine, and kept current.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blockwatch_agent::probe::egress::{self, EgressError};
use blockwatch_tests::faultkit::{self, Canned, FaultServer, TestPki};
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
    let (tx, mut rx) = watch::channel(String::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(egress::keep_current(
        engine(&pki, vec![]),
        echo_spec(&srv),
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
            let v = rx.borrow_and_update().clone();
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
