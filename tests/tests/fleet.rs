//! The agent fleet under stress: kill -9 at random moments, a collector that goes away, a
//! collector that never acknowledges or acknowledges slowly, central plans, three regions.

use std::time::Duration;

use blockwatch_tests::fake_collector::{AckMode, FakeCollector, rss_kib};
use blockwatch_tests::provider::Provider;
use blockwatch_tests::*;

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
    // The backlog is every result the killed agents handed a sequence number to; it has
    // drained once all of them are stored.
    let (_, backlog_end) = spool_state(dir.path(), "k-1");
    let mut agent = start_agent(dir.path(), "k-1", &cfg);
    // The backlog may have drained before this last agent started; it must be up (its signal
    // handler installed) before it is asked to stop.
    wait_for("the last agent to connect", Duration::from_secs(20), || {
        agent.log().contains("connected to collector").then_some(())
    });
    wait_for("the spool to drain", Duration::from_secs(60), || {
        let seqs = stored_seqs(collector.api, "k-1");
        (1..=backlog_end).all(|s| seqs.contains(&s)).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(collector.proc.terminate(), Some(0), "{}", collector.proc.log());

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
        let mut agent =
            start_agent(dir.path(), "m-1", &agent_toml("m-1", "eu", fake.addr, &provider, dir.path(), "127.0.0.2", 30));
        let pid = agent.child.id();
        // Deliberate durations: RSS is sampled once the agent has settled and again 10 s of
        // unacknowledged (or slowly acknowledged) results later; the bound is over that span.
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
            s.push_str(&format!(
                "[[plan.target]]\nid = \"{t}\"\nurl = \"{}\"\nprovider = \"openai\"\n",
                provider.url_at(&format!("/{t}/v1/models"))
            ));
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
    let tls = format!("\n[tls]\nca_dir = {:?}\n", fleet_ca(dir.path()).display().to_string());
    let saw =
        |path: &str, ip: &str| provider.seen.lock().unwrap().iter().any(|(a, p)| p == path && a.to_string() == ip);
    wait_for("every region to probe plan-a", Duration::from_secs(30), || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| saw("/plan-a/v1/models", ip)).then_some(())
    });
    std::fs::write(
        &collector.config,
        format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\n{}{tls}",
            collector.addr,
            collector.data_dir.display(),
            plan(&["plan-a", "plan-b"])
        ),
    )
    .unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &collector.proc.child.id().to_string()]).status();
    wait_for("every region to probe plan-b", Duration::from_secs(30), || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| saw("/plan-b/v1/models", ip)).then_some(())
    });
    // Without a [plan] the agents go back to their own targets.
    provider.seen.lock().unwrap().clear();
    std::fs::write(
        &collector.config,
        format!("listen = \"{}\"\ndata_dir = \"{}\"\n{tls}", collector.addr, collector.data_dir.display()),
    )
    .unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &collector.proc.child.id().to_string()]).status();
    wait_for("every region to probe its local target again", Duration::from_secs(30), || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| saw("/t0/v1/models", ip)).then_some(())
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
        withdrawn: false,
        version: 9,
        interval: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        targets: vec![PlanTarget { id: "evil".into(), url: "http://plain.example/".into(), ..Default::default() }],
    };
    let fake = FakeCollector::start(AckMode::After(Duration::from_millis(10)), Some(bad));
    let mut agent =
        start_agent(dir.path(), "p-1", &agent_toml("p-1", "eu", fake.addr, &provider, dir.path(), "127.0.0.2", 1));
    wait_for("the plan to be refused", Duration::from_secs(20), || {
        agent.log().contains("refused plan from collector").then_some(())
    });
    let log = agent.log();
    assert!(log.contains("interval 0s is outside 1s..=24h"), "{log}");
    assert!(log.contains("must start with https://"), "{log}");
    wait_for("the old targets to keep running", Duration::from_secs(20), || {
        provider.seen.lock().unwrap().iter().any(|(_, p)| p == "/t0/v1/models").then_some(())
    });
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn a_suspected_block_makes_the_collector_ask_the_region_to_probe_now() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    // The provider refuses hk's addresses from the start.
    provider
        .blocked
        .lock()
        .unwrap()
        .extend(["127.0.0.2", "127.0.0.3"].map(|ip| ip.parse::<std::net::IpAddr>().unwrap()));
    let mut collector = CollectorProc::start(dir.path(), None, "");
    // hk-1 probes every second; hk-2 only every 10 minutes, so within this test it probes
    // only when asked. eu-1 is in another region and must not be asked.
    let fast = agent_toml("hk-1", "hk", collector.addr, &provider, dir.path(), "127.0.0.2", 1);
    let slow = agent_toml("hk-2", "hk", collector.addr, &provider, dir.path(), "127.0.0.3", 1)
        .replace("interval = \"1s\"", "interval = \"10m\"");
    let other = agent_toml("eu-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.4", 1)
        .replace("interval = \"1s\"", "interval = \"10m\"");
    let mut agents = vec![start_agent(dir.path(), "hk-2", &slow), start_agent(dir.path(), "eu-1", &other)];
    // Both slow agents connected before the fast one starts failing.
    wait_for("the slow agents to connect", Duration::from_secs(20), || {
        let (_, body) = http_get(collector.api, "/v1/agents");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["hk-2"]["connected"] == true && v["eu-1"]["connected"] == true).then_some(())
    });
    agents.push(start_agent(dir.path(), "hk-1", &fast));
    wait_for("hk-2 to probe on request", Duration::from_secs(30), || {
        agents[0].log().contains("probe requested by the collector").then_some(())
    });
    wait_for("the block to be detected", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, "/v1/events?kind=block_started");
        body.contains("\"region\":\"hk\"").then_some(())
    });
    for a in &mut agents {
        assert_eq!(a.terminate(), Some(0), "{}", a.log());
    }
    assert!(collector.proc.log().contains("asked the region's agents to probe now"));
    assert_eq!(collector.proc.terminate(), Some(0));
    let all = export(&collector.data_dir);
    let requested: Vec<_> = all.iter().filter(|r| r.agent_id == "hk-2" && r.confirmation).collect();
    assert!(!requested.is_empty(), "hk-2 sent no requested probe");
    assert!(requested.iter().all(|r| r.outcome == "http_geo_blocked"), "{requested:?}");
    assert!(agents[1].log().matches("probe requested by the collector").count() == 0, "eu-1 was asked");
    // The agent rate-limits requests per target: never two requested probes within 5 s.
    let mut times: Vec<i64> = requested.iter().map(|r| r.started_ms().unwrap()).collect();
    times.sort_unstable();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 4_900), "{times:?}");
}

#[test]
fn after_a_long_outage_the_backlog_drains_at_the_upload_rate_oldest_first_with_fresh_results_flowing() {
    const RATE: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    // The agent starts against a collector that is not up yet, so its port is chosen before
    // any process exists; the collector comes up on it later.
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    fleet_ca(dir.path());
    // 10 probes a second, spooled while the collector is down.
    let cfg = agent_toml("c-1", "eu", addr, &provider, dir.path(), "127.0.0.2", 10)
        .replace("interval = \"1s\"\n", &format!("interval = \"1s\"\nupload_rate = {RATE}\n"));
    let started = std::time::Instant::now();
    let mut agent = start_agent(dir.path(), "c-1", &cfg);
    // The outage under test: 8 s of results pile up in the spool.
    std::thread::sleep(Duration::from_secs(8));
    let up = blockwatch_proto::time::now();
    let mut collector = CollectorProc::start(dir.path(), Some(port), "");
    wait_for("the agent to reconnect", Duration::from_secs(40), || {
        agent.log().contains("connected to collector").then_some(())
    });
    // The backlog (10 a second since the start) drains at RATE less the 10 a second still made.
    // It has drained once the stored results run without a gap up to one that started in the
    // last 4 s: the agent is then sending as fast as it probes (a probe ends within its 900 ms
    // timeout and gets its sequence number then), with nothing left behind for shutdown.
    let backlog = 10.0 * started.elapsed().as_secs_f64();
    let limit = Duration::from_secs_f64(3.0 * backlog / (RATE as f64 - 10.0) + 30.0);
    wait_for("the backlog to drain", limit, || {
        let all = stored(collector.api);
        let seqs: std::collections::BTreeSet<u64> = all.iter().map(seq_of).collect();
        let gapless = (1..).take_while(|s| seqs.contains(s)).last().unwrap_or(0);
        let recent = blockwatch_proto::time::now() - 4_000;
        all.iter().any(|r| seq_of(r) <= gapless && r.started_ms().unwrap() > recent.max(up + 2_000)).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(collector.proc.terminate(), Some(0));
    let (_, last_seq) = spool_state(dir.path(), "c-1");

    let all = export(&collector.data_dir);
    let seqs = seqs_by_agent(&all);
    assert_eq!(seqs["c-1"], (1..=last_seq).collect::<Vec<_>>(), "every completed probe stored exactly once");
    let seq = |r: &blockwatch_proto::trace::TraceRecord| r.probe_id.rsplit('/').next().unwrap().parse::<u64>().unwrap();
    let backlog: Vec<_> = all.iter().filter(|r| r.started_ms().unwrap() < up).collect();
    assert!(backlog.len() >= 60, "only {} results spooled during the outage", backlog.len());

    // Paced: no one-second window of receive times holds more than a burst plus a second's rate.
    let received: Vec<i64> = all.iter().map(|r| r.received_ms().unwrap()).collect();
    let busiest = received.iter().map(|&t| received.iter().filter(|&&u| u >= t && u < t + 1000).count()).max().unwrap();
    assert!(busiest <= 2 * RATE + 5, "{busiest} results stored within one second at upload_rate {RATE}");
    let first_rx = received.iter().min().copied().unwrap();
    let last_backlog_rx = backlog.iter().map(|r| r.received_ms().unwrap()).max().unwrap();
    let drain_s = (last_backlog_rx - first_rx) as f64 / 1000.0;
    let min_s = (backlog.len() - 2 * RATE) as f64 / RATE as f64;
    assert!(drain_s >= min_s * 0.9, "backlog of {} drained in {drain_s:.1}s, faster than {RATE}/s", backlog.len());

    // Oldest first: the store begins with the oldest result, and the backlog goes up in order
    // apart from the newest results riding along.
    assert_eq!(seq(&all[0]), 1, "the oldest result first");
    let b: Vec<u64> = backlog.iter().map(|r| seq(r)).collect();
    let rising = b.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(rising as f64 >= 0.7 * (b.len() - 1) as f64, "backlog out of order: {b:?}");

    // Fresh results flow during catch-up: results that started after the reconnect are stored
    // within a couple of seconds, before the backlog is done.
    let fresh_early: Vec<_> = all
        .iter()
        .filter(|r| r.started_ms().unwrap() > first_rx && r.received_ms().unwrap() < last_backlog_rx)
        .collect();
    assert!(!fresh_early.is_empty(), "no fresh result stored while the backlog drained ({drain_s:.1}s)");
    let worst = fresh_early.iter().map(|r| r.received_ms().unwrap() - r.started_ms().unwrap()).max().unwrap();
    assert!(worst < 3_000, "a fresh result waited {worst} ms during catch-up");
    println!(
        "backlog {} drained in {drain_s:.1}s at upload_rate {RATE}; busiest second {busiest}; fresh results waited at most {worst} ms",
        backlog.len()
    );
}

#[test]
fn an_agent_that_stops_talking_is_marked_silent_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let collector = CollectorProc::start(dir.path(), None, "heartbeat_interval = \"1s\"");
    let cfg = agent_toml("s-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2", 1)
        .replace("interval = \"1s\"", "interval = \"10m\"");
    let agents = |f: &dyn Fn(&serde_json::Value) -> bool| {
        let (_, body) = http_get(collector.api, "/v1/agents");
        serde_json::from_str::<serde_json::Value>(&body).ok().filter(|v| f(&v["s-1"])).map(|_| ())
    };
    let mut agent = start_agent(dir.path(), "s-1", &cfg);
    wait_for("the agent to connect", Duration::from_secs(20), || agents(&|a| a["connected"] == true));
    // Heartbeats alone keep a quiet agent (10 min interval) from being silent. The sleep is
    // the span under test: 5 s is more than the three 1 s heartbeat intervals after which a
    // quiet agent would be silent.
    std::thread::sleep(Duration::from_secs(5));
    assert!(agents(&|a| a["silent"] == false).is_some());
    agent.kill9();
    let t = std::time::Instant::now();
    wait_for("agent_silent", Duration::from_secs(20), || {
        let (_, body) = http_get(collector.api, "/v1/events?kind=agent_silent");
        body.contains("\"agent_id\":\"s-1\"").then_some(())
    });
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(2), "silent after only {took:?} with 1 s heartbeats");
    assert!(agents(&|a| a["silent"] == true && a["connected"] == false).is_some());
    // The collector restarts while the agent is silent: it still knows, from its log.
    let port = collector.addr.port();
    let mut collector = collector;
    assert_eq!(collector.proc.terminate(), Some(0));
    let collector = CollectorProc::start(dir.path(), Some(port), "heartbeat_interval = \"1s\"");
    let _agent = start_agent(dir.path(), "s-1", &cfg);
    wait_for("agent_back", Duration::from_secs(20), || {
        let (_, body) = http_get(collector.api, "/v1/events?kind=agent_back");
        body.contains("\"agent_id\":\"s-1\"").then_some(())
    });
    let (_, all) = http_get(collector.api, "/v1/events");
    assert_eq!(all.matches("agent_silent").count(), 1, "{all}");
}

/// The collector keeps its agents across a restart: one that stays away afterwards is
/// reported silent by the new process, and one stopped cleanly (SIGTERM: it says goodbye) is
/// reported stopped, never silent.
#[test]
fn agents_are_known_across_restarts_and_a_clean_stop_is_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let collector = CollectorProc::start(dir.path(), None, "heartbeat_interval = \"1s\"");
    let cfg = |id: &str, ip: &str| {
        agent_toml(id, "eu", collector.addr, &provider, dir.path(), ip, 1)
            .replace("interval = \"1s\"", "interval = \"10m\"")
    };
    let view = |api, id: &str| -> Option<serde_json::Value> {
        let (_, body) = http_get(api, "/v1/agents");
        serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| v[id].clone()).filter(|a| !a.is_null())
    };
    let mut away = start_agent(dir.path(), "k-1", &cfg("k-1", "127.0.0.2"));
    let mut leaving = start_agent(dir.path(), "k-2", &cfg("k-2", "127.0.0.3"));
    for id in ["k-1", "k-2"] {
        wait_for("the agents to connect", Duration::from_secs(20), || {
            view(collector.api, id).filter(|a| a["connected"] == true).map(|_| ())
        });
    }
    assert_eq!(leaving.terminate(), Some(0));
    wait_for("the clean stop", Duration::from_secs(10), || {
        view(collector.api, "k-2").filter(|a| a["stopped"] == true && a["connected"] == false).map(|_| ())
    });
    // One agent dies and the collector restarts before it could call it silent.
    away.kill9();
    let port = collector.addr.port();
    let mut collector = collector;
    assert_eq!(collector.proc.terminate(), Some(0));
    let collector = CollectorProc::start(dir.path(), Some(port), "heartbeat_interval = \"1s\"");
    let k1 = view(collector.api, "k-1").expect("k-1 is known after the restart");
    assert_eq!((k1["region"].as_str(), k1["connected"].as_bool()), (Some("eu"), Some(false)), "{k1}");
    let k2 = view(collector.api, "k-2").expect("k-2 is known after the restart");
    assert_eq!((k2["stopped"].as_bool(), k2["silent"].as_bool()), (Some(true), Some(false)), "{k2}");
    wait_for("agent_silent for the agent that stayed away", Duration::from_secs(20), || {
        let (_, body) = http_get(collector.api, "/v1/events?kind=agent_silent");
        body.contains("\"agent_id\":\"k-1\"").then_some(())
    });
    // Three heartbeat intervals and more have passed since the start: the stopped agent is
    // still stopped, and was never silent.
    let (_, all) = http_get(collector.api, "/v1/events?kind=agent_silent");
    assert!(!all.contains("\"agent_id\":\"k-2\""), "{all}");
    let k2 = view(collector.api, "k-2").unwrap();
    assert_eq!((k2["stopped"].as_bool(), k2["silent"].as_bool()), (Some(true), Some(false)), "{k2}");
    let (_, metrics) = http_get(collector.api, "/metrics");
    assert!(metrics.contains("blockwatch_agents{state=\"stopped\"} 1"), "{metrics}");
}
