//! Agents are who their certificates say. On a collector with mutual TLS, as shipped, a
//! well-behaved agent keeps getting every batch acked within a second while other clients try
//! to get in without a certificate, with one from another CA, with a valid one claiming
//! another agent or region, and with one revoked while its stream is open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockwatch_proto::Outcome;
use blockwatch_proto::time::now;
use blockwatch_proto::v1::RegisterRequest;
use blockwatch_tests::session::{Session, plain_client, result, tls_client};
use blockwatch_tests::*;

fn register(agent: &str, region: &str) -> RegisterRequest {
    RegisterRequest { agent_id: agent.into(), region: region.into(), version: "t".into(), ..Default::default() }
}

#[test]
fn only_the_certificate_holder_speaks_for_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start(dir.path(), None, "");
    let ca = dir.path().join("fleet-ca/ca.crt");
    let good = issue_agent(dir.path(), "good-1", "eu");
    let other = issue_agent(dir.path(), "b-1", "us");
    let doomed = issue_agent(dir.path(), "doomed-1", "eu");
    // A certificate for the same id from a CA the collector does not trust.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = issue_agent(foreign_dir.path(), "good-1", "eu");
    let foreign_ca = foreign_dir.path().join("fleet-ca/ca.crt");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_ack_ms = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    // The well-behaved agent: a batch every 100 ms, each acked in full.
    let good_agent = {
        let (stop, slowest, acked, addr, ca, good) =
            (stop.clone(), slowest_ack_ms.clone(), acked.clone(), collector.addr, ca.clone(), good.clone());
        rt.spawn(async move {
            let c = tls_client(addr, &ca, Some(&good)).await.expect("the good agent connects");
            let mut s = Session::open(c, "good-1", "eu").await.expect("the good agent registers");
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let sent = Instant::now();
                let a = s.send(vec![result("good-1", "eu", seq, "openai", now() - 500, Outcome::Ok)]).await;
                assert_eq!(a.acked.len(), 1, "{a:?}");
                slowest.fetch_max(sent.elapsed().as_millis() as u64, Ordering::Relaxed);
                acked.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    rt.block_on(async {
        // Plaintext to the TLS port: no gRPC at all.
        let plain = plain_client(collector.addr).await.register(register("good-1", "eu")).await;
        assert!(plain.is_err(), "plaintext was answered: {plain:?}");

        // TLS without a client certificate: the handshake is refused.
        let refused = match tls_client(collector.addr, &ca, None).await {
            Err(e) => e,
            Ok(mut c) => {
                c.register(register("good-1", "eu")).await.expect_err("registered without a certificate").to_string()
            }
        };
        assert!(!refused.is_empty());

        // A certificate from another CA (and the client pinning that CA): refused both ways.
        match tls_client(collector.addr, &foreign_ca, Some(&foreign)).await {
            Err(_) => {}
            Ok(mut c) => {
                c.register(register("good-1", "eu")).await.expect_err("a foreign CA's certificate was accepted");
            }
        }
        // Trusting our CA but presenting the foreign certificate.
        if let Ok(mut c) = tls_client(collector.addr, &ca, Some(&foreign)).await {
            c.register(register("good-1", "eu")).await.expect_err("a foreign CA's certificate was accepted");
        }

        // A valid certificate for b-1 claiming good-1, or another region.
        let mut c = tls_client(collector.addr, &ca, Some(&other)).await.expect("b-1 connects");
        let e = c.register(register("good-1", "eu")).await.expect_err("b-1 registered as good-1");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("cannot speak for agent \"good-1\""), "{}", e.message());
        let e = c.register(register("b-1", "eu")).await.expect_err("b-1 registered in eu");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("region \"us\", not \"eu\""), "{}", e.message());
        // Registered as itself, it still cannot open good-1's stream.
        c.register(register("b-1", "us")).await.expect("b-1 registers as itself");
        let e = Session::report(c.clone(), "good-1").await.err().expect("b-1 opened good-1's stream");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // Nor store results under good-1's probe ids.
        let mut s = Session::open(c, "b-1", "us").await.expect("b-1 streams as itself");
        let hijack = result("good-1", "us", 999_999, "openai", now() - 500, Outcome::HttpGeoBlocked);
        let a = s.send(vec![blockwatch_proto::v1::ProbeResult { agent_id: "b-1".into(), ..hijack }]).await;
        assert!(a.acked.is_empty() && a.refused.len() == 1, "{a:?}");

        // Revocation, on a live stream: the stream is closed within seconds, and the same
        // certificate cannot connect again.
        let c = tls_client(collector.addr, &ca, Some(&doomed)).await.expect("doomed-1 connects");
        let mut s = Session::open(c, "doomed-1", "eu").await.expect("doomed-1 registers");
        let a = s.send(vec![result("doomed-1", "eu", 1, "openai", now() - 500, Outcome::Ok)]).await;
        assert_eq!(a.acked.len(), 1);
        let revoke = run(
            &bin("blockwatch-collector"),
            &["ca", "revoke", "--dir", dir.path().join("fleet-ca").to_str().unwrap(), "--id", "doomed-1"],
        );
        assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
        let revoked_at = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.next_message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the revoked agent's stream was closed in time");
        let status = ended.expect_err("the stream ended with a status");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("revoked"), "{}", status.message());
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "closed after {:?}", revoked_at.elapsed());
        match tls_client(collector.addr, &ca, Some(&doomed)).await {
            Err(_) => {}
            Ok(mut c) => {
                c.register(register("doomed-1", "eu")).await.expect_err("a revoked certificate registered");
            }
        }
    });

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(good_agent).expect("the good agent never failed");
    let slowest = slowest_ack_ms.load(Ordering::Relaxed);
    assert!(acked.load(Ordering::Relaxed) >= 5, "the good agent sent too little to judge");
    assert!(slowest < 1000, "a good batch waited {slowest} ms for its ack");

    let log = collector.proc.log();
    assert!(log.contains("refused a claim of another agent's id"), "{log}");
    assert!(log.contains("fleet CA reloaded"), "{log}");
    let stored = export_live(&collector);
    assert!(stored.iter().all(|r| r.agent_id != "good-1" || r.region == "eu"), "forged results stored");
    assert!(!stored.iter().any(|r| r.probe_id.ends_with("/999999")), "a hijacked probe id was stored");
}

fn export_live(collector: &CollectorProc) -> Vec<blockwatch_proto::trace::TraceRecord> {
    stored(collector.api)
}

/// The real agent: with its certificate it reports over TLS; with one from another CA it is
/// refused, says so once per attempt, and backs off rather than retrying at full pace.
#[test]
fn the_agent_speaks_tls_and_backs_off_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start(dir.path(), None, "");
    let good = format!(
        "agent_id = \"t-1\"\nregion = \"eu\"\n{}interval = \"1s\"\nspool_dir = {:?}\n",
        uplink(dir.path(), collector.addr, "t-1", "eu"),
        dir.path().join("spool-t-1").display().to_string()
    );
    let mut agent = start_agent(dir.path(), "t-1", &good);
    wait_for("the TLS agent's results to be stored", Duration::from_secs(30), || {
        stored(collector.api).iter().any(|r| r.agent_id == "t-1").then_some(())
    });
    agent.terminate();

    // Certificate for the same id, from a CA this collector does not trust.
    let foreign_dir = tempfile::tempdir().unwrap();
    let certs = issue_agent(foreign_dir.path(), "t-2", "eu");
    let file = |f: &str| format!("{:?}", certs.join(f).display().to_string());
    let bad = format!(
        "agent_id = \"t-2\"\nregion = \"eu\"\ncollector = \"https://{}\"\n\
         tls = {{ ca_file = {}, cert_file = {}, key_file = {} }}\ninterval = \"1s\"\nspool_dir = {:?}\n",
        collector.addr,
        file("ca.crt"),
        file("agent.crt"),
        file("agent.key"),
        dir.path().join("spool-t-2").display().to_string()
    );
    let mut agent = start_agent(dir.path(), "t-2", &bad);
    wait_for("the refused agent to say so", Duration::from_secs(20), || {
        agent.log().contains("the collector refuses this agent").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    let attempts = log.matches("the collector refuses this agent").count();
    assert!(attempts <= 2, "retried {attempts} times in a few seconds:\n{log}");
    assert!(!stored(collector.api).iter().any(|r| r.agent_id == "t-2"));
    agent.terminate();
}

/// `check-config` reads the TLS files `run` will need, and names the key of a missing one.
#[test]
fn check_config_reads_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    let certs = issue_agent(dir.path(), "c-1", "eu");
    let body = |key: &str| {
        format!(
            "agent_id = \"c-1\"\nregion = \"eu\"\ncollector = \"https://127.0.0.1:7400\"\n\
             tls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?} }}\n",
            certs.join("ca.crt").display().to_string(),
            certs.join(if key == "cert_file" { "missing.crt" } else { "agent.crt" }).display().to_string(),
            certs.join(if key == "key_file" { "ca.crt" } else { "agent.key" }).display().to_string(),
        )
    };
    let check = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        run(&bin("blockwatch-agent"), &["check-config", "--config", cfg.to_str().unwrap()])
    };
    assert!(check(body("")).status.success());
    let out = check(body("cert_file"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.cert_file"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check(body("key_file"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.key_file"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `ca list` shows what was issued and revoked.
#[test]
fn ca_list_shows_issued_and_revoked_certificates() {
    let dir = tempfile::tempdir().unwrap();
    issue_agent(dir.path(), "l-1", "eu");
    issue_agent(dir.path(), "l-2", "hk");
    let ca = dir.path().join("fleet-ca");
    let collector = bin("blockwatch-collector");
    assert!(run(&collector, &["ca", "revoke", "--dir", ca.to_str().unwrap(), "--id", "l-2"]).status.success());
    let out = run(&collector, &["ca", "list", "--dir", ca.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let by_id = |id: &str| rows.iter().find(|r| r["agent_id"] == id).unwrap();
    assert!(by_id("l-1")["revoked_at"].is_null());
    assert!(by_id("l-2")["revoked_at"].is_i64());
    assert_eq!(by_id("l-2")["region"], "hk");
    let out = run(&collector, &["ca", "revoke", "--dir", ca.to_str().unwrap(), "--id", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unrevoked certificate of agent \"nobody\""));
}
