//! The agent fleet under stress: kill -9 at random moments, a collector that goes away, a
//! collector that never acknowledges or acknowledges slowly, central plans, three regions.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use blockwatch_tests::fake_collector::{AckMode, FakeCollector, rss_kib};
use blockwatch_tests::provider::Provider;
use blockwatch_tests::*;

fn agent_toml(id: &str, region: &str, collector: SocketAddr, provider: &Provider, dir: &Path, source: &str, targets: usize) -> String {
    let mut s = format!(
        "agent_id = \"{id}\"\nregion = \"{region}\"\ncollector = \"http://{collector}\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         source_address = \"{source}\"\nspool_dir = \"{}\"\nca_file = \"{}\"\n[confirm]\ncount = 0\n",
        dir.join(format!("spool-{id}")).display(),
        provider.ca_file.display()
    );
    for i in 0..targets {
        s.push_str(&format!(
            "[[target]]\nid = \"t{i}\"\nurl = \"{}\"\nprovider = \"openai\"\nlocal = true\n",
            provider.url_at(&format!("/t{i}/v1/models"))
        ));
    }
    s
}

/// Opens an agent's spool after it stopped: (pending, last sequence number handed out).
fn spool_state(dir: &Path, id: &str) -> (u64, u64) {
    let spool = blockwatch_agent::spool::Spool::open(&dir.join(format!("spool-{id}")), 64 << 20).expect("open spool");
    (spool.stats().pending, spool.last_seq())
}

#[test]
fn kill9_and_collector_outage_lose_nothing_and_store_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let mut collector = CollectorProc::start(dir.path(), None, "");
    let port = collector.addr.port();
    let cfg = agent_toml("k-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2", 10);
    for round in 0..6u64 {
        let mut agent = start_agent(dir.path(), "k-1", &cfg);
        // A different moment each round, so the kill lands mid-probe, mid-spool-write and
        // mid-stream at one point or another.
        std::thread::sleep(Duration::from_millis(900 + 370 * round));
        agent.kill9();
        if round == 2 {
            assert_eq!(collector.proc.terminate(), Some(0));
        }
        if round == 4 {
            collector = CollectorProc::start(dir.path(), Some(port), "");
        }
    }
    let mut agent = start_agent(dir.path(), "k-1", &cfg);
    wait_for("the spool to drain", Duration::from_secs(60), || {
        collector.proc.log().matches("agent registered").count().ge(&1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(collector.proc.terminate(), Some(0));

    let (pending, last_seq) = spool_state(dir.path(), "k-1");
    assert_eq!(pending, 0, "graceful shutdown left results unsent");
    let all = export(&collector.data_dir);
    let seqs = seqs_by_agent(&all);
    let got = &seqs["k-1"];
    assert!(last_seq >= 50, "only {last_seq} probes completed");
    let want: Vec<u64> = (1..=last_seq).collect();
    assert_eq!(got, &want, "every completed probe stored exactly once");
}

#[test]
fn silent_or_slow_collector_keeps_the_agent_bounded() {
    for mode in [AckMode::Never, AckMode::After(Duration::from_millis(1500))] {
        let dir = tempfile::tempdir().unwrap();
        let provider = Provider::start(dir.path());
        let fake = FakeCollector::start(mode, None);
        let mut agent = start_agent(dir.path(), "m-1", &agent_toml("m-1", "eu", fake.addr, &provider, dir.path(), "127.0.0.2", 30));
        let pid = agent.child.id();
        std::thread::sleep(Duration::from_secs(5));
        let early = rss_kib(pid);
        std::thread::sleep(Duration::from_secs(10));
        let late = rss_kib(pid);
        let seen = fake.seen();
        assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
        assert!(seen.max_unacked <= 4, "{mode:?}: {} batches unacked at once", seen.max_unacked);
        if mode == AckMode::Never {
            assert!(seen.batches <= 4, "sent {} batches without acks", seen.batches);
            let spooled = seen.heartbeats.last().copied().unwrap_or(0);
            assert!(spooled >= 200, "heartbeats say {spooled} spooled: {:?}", seen.heartbeats);
        } else {
            assert!(seen.batches >= 5, "slow acks should still drain: {seen:?}");
        }
        assert!(late < early + 4096, "{mode:?}: RSS grew from {early} KiB to {late} KiB");
    }
}

#[test]
fn central_plan_reaches_three_regions_and_changes_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let plan = |targets: &[&str]| {
        let mut s = String::from("[plan]\ninterval = \"1s\"\n");
        for t in targets {
            s.push_str(&format!("[[plan.target]]\nid = \"{t}\"\nurl = \"{}\"\nprovider = \"openai\"\n", provider.url_at(&format!("/{t}/v1/models"))));
        }
        s
    };
    let mut collector = CollectorProc::start(dir.path(), None, &plan(&["plan-a"]));
    let mut agents = Vec::new();
    for (i, region) in ["eu", "us", "hk"].iter().enumerate() {
        let id = format!("{region}-1");
        let mut cfg = agent_toml(&id, region, collector.addr, &provider, dir.path(), &format!("127.0.0.{}", i + 2), 1);
        // Plan targets are on loopback too; the agent marks a plan target local when its own
        // config has a local target of that id.
        cfg.push_str(&format!("[[target]]\nid = \"plan-b\"\nurl = \"{}\"\nlocal = true\n", provider.url_at("/unused")));
        cfg.push_str(&format!("[[target]]\nid = \"plan-a\"\nurl = \"{}\"\nlocal = true\n", provider.url_at("/unused")));
        agents.push(start_agent(dir.path(), &id, &cfg));
    }
    let saw = |path: &str, ip: &str| provider.seen.lock().unwrap().iter().any(|(a, p)| p == path && a.to_string() == ip);
    wait_for("every region to probe plan-a", Duration::from_secs(30), || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| saw("/plan-a/v1/models", ip)).then_some(())
    });
    std::fs::write(&collector.config, format!("listen = \"{}\"\ndata_dir = \"{}\"\n{}", collector.addr, collector.data_dir.display(), plan(&["plan-a", "plan-b"]))).unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &collector.proc.child.id().to_string()]).status();
    wait_for("every region to probe plan-b", Duration::from_secs(30), || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| saw("/plan-b/v1/models", ip)).then_some(())
    });
    // A broken reload is refused and the plan stays.
    std::fs::write(&collector.config, "listen = [oops").unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &collector.proc.child.id().to_string()]).status();
    wait_for("the refused reload to be logged", Duration::from_secs(10), || {
        collector.proc.log().contains("config reload refused").then_some(())
    });
    for a in &mut agents {
        assert_eq!(a.terminate(), Some(0));
    }
    assert_eq!(collector.proc.terminate(), Some(0));
    let all = export(&collector.data_dir);
    let regions: std::collections::BTreeSet<_> = all.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(regions.into_iter().collect::<Vec<_>>(), ["eu", "hk", "us"]);
    assert!(all.iter().all(|r| r.outcome == "ok"), "a loopback probe failed");
    assert!(all.iter().any(|r| r.target == "plan-b"));
}

#[test]
fn agent_refuses_a_bad_plan_and_keeps_its_own() {
    use blockwatch_proto::v1::{Plan, PlanTarget};
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let bad = Plan {
        version: 9,
        interval: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        targets: vec![PlanTarget { id: "evil".into(), url: "http://plain.example/".into(), ..Default::default() }],
    };
    let fake = FakeCollector::start(AckMode::After(Duration::from_millis(10)), Some(bad));
    let mut agent = start_agent(dir.path(), "p-1", &agent_toml("p-1", "eu", fake.addr, &provider, dir.path(), "127.0.0.2", 1));
    wait_for("the plan to be refused", Duration::from_secs(20), || agent.log().contains("refused plan from collector").then_some(()));
    let log = agent.log();
    assert!(log.contains("interval 0s0ns is outside 1s..=24h"), "{log}");
    assert!(log.contains("must start with https://"), "{log}");
    wait_for("the old targets to keep running", Duration::from_secs(20), || {
        provider.seen.lock().unwrap().iter().any(|(_, p)| p == "/t0/v1/models").then_some(())
    });
    assert_eq!(agent.terminate(), Some(0));
}
