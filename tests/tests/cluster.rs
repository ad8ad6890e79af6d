//! Clustered mode end to end, on loopback: a three-node NATS JetStream cluster (Debian's
//! `nats-server`, installed by the test script), two collectors as ingest front ends, one in
//! the detector role. Agents report an enforcement wave through both front ends; one NATS
//! node, then the detector, then a front end are killed with SIGKILL along the way (its
//! agents move to the other front end). No acked result is lost or stored twice, the block is
//! detected once per blocked region, and the detector's events equal a replay of what it
//! stored. A standby detector takes over alerting from a killed one where it stopped: every
//! block event is delivered once, and the events stream holds each event once. A real agent
//! fails over from an endpoint that does not answer to one that does.

use std::collections::BTreeMap;
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_proto::v1::ProbeResult;
use blockwatch_tests::nats::{cluster as nats_cluster, jetstream, kv_value, stream_messages};
use blockwatch_tests::provider::Provider;
use blockwatch_tests::receiver::Receiver;
use blockwatch_tests::session::{result, stream_all, wave};
use blockwatch_tests::*;

/// The results `0..n` (by index) of every agent, in order.
type Fleet = BTreeMap<String, (String, Vec<ProbeResult>)>;

fn part(fleet: &Fleet, range: std::ops::Range<usize>, keep: impl Fn(&str) -> bool) -> Fleet {
    fleet
        .iter()
        .filter(|(a, _)| keep(a))
        .map(|(a, (r, rs))| (a.clone(), (r.clone(), rs[range.clone()].to_vec())))
        .collect()
}

/// Agents `*-1` report through front end `a`, the others through `b`.
fn on_a(agent: &str) -> bool {
    agent.ends_with("-1")
}

/// Streams minutes `range` of `fleet`, each agent through its front end.
fn through_both(a: std::net::SocketAddr, b: std::net::SocketAddr, fleet: &Fleet, range: std::ops::Range<usize>) {
    stream_all(a, part(fleet, range.clone(), on_a));
    stream_all(b, part(fleet, range, |x| !on_a(x)));
}

/// Waits for every result of `fleet` in the store behind `api`, and checks each is there once;
/// returns the store's results export.
fn stored_once(api: std::net::SocketAddr, fleet: &Fleet) -> String {
    let total: usize = fleet.values().map(|(_, rs)| rs.len()).sum();
    let stored = wait_showing("every acked result in the detector's store", Duration::from_secs(60), || {
        let (status, body) = http_get(api, "/v1/export?what=results&format=jsonl");
        let n = body.lines().count();
        (status == 200 && n >= total).then_some(body).ok_or_else(|| format!("status {status}, {n} of {total} results"))
    });
    let ids: std::collections::BTreeSet<&str> =
        stored.lines().map(|l| l.split("\"probe_id\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert_eq!(stored.lines().count(), total, "no result stored twice");
    assert_eq!(ids.len(), total, "every result acked is stored");
    let want: std::collections::BTreeSet<String> =
        fleet.values().flat_map(|(_, rs)| rs.iter().map(|r| r.probe_id.clone())).collect();
    assert!(ids.iter().all(|id| want.contains(*id)));
    stored
}

/// The detector's events (`/v1/events` lines, agents' own left out) equal a replay of the
/// results it stored.
fn assert_live_is_replay(dir: &std::path::Path, stored: &str, events: &str) {
    let stored_file = dir.join("stored.jsonl");
    std::fs::write(&stored_file, stored).unwrap();
    let replayed = run(&bin("blockwatch-collector"), &["replay", "--input", stored_file.to_str().unwrap()]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let norm = |l: &str| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove("seq");
        v.to_string()
    };
    let live: Vec<String> = events.lines().filter(|l| !l.contains("\"kind\":\"agent_")).map(norm).collect();
    let replay: Vec<String> = String::from_utf8(replayed.stdout).unwrap().lines().map(norm).collect();
    assert_eq!(live, replay, "the detector's events equal a replay of the stream it stored");
}

#[test]
fn a_jetstream_cluster_loses_nothing_through_kills_and_detects_the_block_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nodes) = nats_cluster(dir.path()) else { return };
    let sub = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (det_dir, a_dir, b_dir) = (sub("detector"), sub("ingest-a"), sub("ingest-b"));
    let mut detector = CollectorProc::start_insecure(&det_dir, None, &jetstream(&nodes, "detector"));
    let a = CollectorProc::start_insecure(&a_dir, None, &jetstream(&nodes, "ingest"));
    let mut b = CollectorProc::start_insecure(&b_dir, None, &jetstream(&nodes, "ingest"));
    let fleet = wave("openai", &["hk", "cn"], &["us", "de"]);

    // The first twenty minutes through both front ends; then a NATS node dies.
    through_both(a.addr, b.addr, &fleet, 0..20);
    nodes[2].proc.kill9();
    // Twenty more on the two nodes left (still a quorum); then the detector dies, and comes
    // back while the front ends go on.
    through_both(a.addr, b.addr, &fleet, 20..30);
    detector.proc.kill9();
    through_both(a.addr, b.addr, &fleet, 30..40);
    let detector = CollectorProc::start_insecure(&det_dir, Some(detector.addr.port()), &jetstream(&nodes, "detector"));
    // The block begins at minute 40; front end B dies inside it and its agents move to A.
    through_both(a.addr, b.addr, &fleet, 40..50);
    b.proc.kill9();
    stream_all(a.addr, part(&fleet, 50..60, |_| true));

    // Everything acked reaches the detector's store, once.
    let stored = stored_once(detector.api, &fleet);

    // The block, once per blocked region; the live events are a replay of the store.
    let events = wait_showing("the block detected", Duration::from_secs(30), || {
        let (_, body) = http_get(detector.api, "/v1/events?limit=1000");
        (body.matches("\"kind\":\"block_started\"").count() >= 2)
            .then(|| body.clone())
            .ok_or_else(|| format!("events:\n{body}\ndetector log:\n{}", detector.proc.log()))
    });
    let starts: Vec<&str> = events.lines().filter(|l| l.contains("\"kind\":\"block_started\"")).collect();
    assert_eq!(starts.len(), 2, "{events}");
    assert!(
        starts.iter().any(|l| l.contains("\"region\":\"hk\""))
            && starts.iter().any(|l| l.contains("\"region\":\"cn\""))
    );
    assert_live_is_replay(dir.path(), &stored, &events);

    // A front end's API answers fleet-wide questions as the detector does (it forwards them);
    // its own agents it answers itself.
    // (The restarted detector holds the lease once its killed self's has expired.)
    wait_for("the front end's answer", Duration::from_secs(30), || {
        (http_get(a.api, "/v1/events?limit=1000") == (200, events.clone())).then_some(())
    });
    // (An open block's duration is as of the answer.)
    let blocks = |api| {
        let (status, body) = http_get(api, "/v1/blocks");
        let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["blocks"].as_array_mut().unwrap().iter_mut().for_each(|b| {
            b["duration_seconds"].take();
        });
        (status, v)
    };
    assert_eq!(blocks(a.api), blocks(detector.api));
    let (status, agents) = http_get(a.api, "/v1/agents");
    assert!(status == 200 && agents.contains("hk-1"), "{agents}");
    drop(a);
}

#[test]
fn an_agent_fails_over_to_the_next_collector_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let collector = CollectorProc::start_insecure(dir.path(), None, "");
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = agent_toml("f-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2", 1).replace(
        &format!("collector = \"http://{}\"\n", collector.addr),
        &format!("collector = \"http://{dead}\"\nfailover = [\"http://{}\"]\n", collector.addr),
    );
    assert!(cfg.contains("failover"), "{cfg}");
    let agent = start_agent(dir.path(), "f-1", &cfg);
    wait_for("the agent's results through the failover endpoint", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, "/v1/results?target=t0&region=eu");
        (body.lines().count() >= 2).then_some(())
    });
    drop(agent);
    let log = std::fs::read_to_string(dir.path().join("f-1.log")).unwrap();
    assert!(log.contains(&dead) && log.contains("collector session ended"), "{log}");
}

/// The webhook notifications `hook` got of `kind`: each event's id and region.
fn delivered(hook: &Receiver, kind: &str) -> Vec<(u64, String)> {
    hook.received()
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
        .filter(|v| v["kind"] == kind)
        .flat_map(|v| v["events"].as_array().unwrap().clone())
        .map(|e| (e["id"].as_str().unwrap().parse().unwrap(), e["region"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_standby_detector_takes_over_alerting_where_the_killed_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nodes) = nats_cluster(dir.path()) else { return };
    let hook = Receiver::start();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let detector_cfg = format!(
        "{}lease = \"4s\"\n\n[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = {:?}\n\
         group_window = \"0s\"\n",
        jetstream(&nodes, "detector"),
        hook.url("/in"),
        secret.display().to_string()
    );
    let sub = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (one_dir, two_dir) = (sub("detector-1"), sub("detector-2"));
    let holds = "this detector holds the lease";
    let mut one = CollectorProc::start_insecure(&one_dir, None, &detector_cfg);
    wait_for("the first detector to hold the lease", Duration::from_secs(30), || {
        one.proc.log().contains(holds).then_some(())
    });
    // The NATS node killed below dies after the lease's, cursors' and events' streams have their
    // copies on every node (not while the cluster is still placing them).
    for node in &nodes {
        wait_for("the lease, cursors and events streams on every NATS node", Duration::from_secs(30), || {
            (stream_messages(node, "KV_BLOCKWATCH_LEASE") == Some(1)
                && stream_messages(node, "KV_BLOCKWATCH_LEASE_CURSORS").is_some()
                && stream_messages(node, "BLOCKWATCH_EVENTS").is_some())
            .then_some(())
        });
    }
    let mut two = CollectorProc::start_insecure(&two_dir, None, &detector_cfg);
    let a = CollectorProc::start_insecure(&sub("ingest-a"), None, &jetstream(&nodes, "ingest"));
    let mut b = CollectorProc::start_insecure(&sub("ingest-b"), None, &jetstream(&nodes, "ingest"));

    // The block begins at minute 40 in two regions, and ends at minute 60 (the agents of the
    // blocked regions answer again until minute 80).
    let t0 = blockwatch_proto::time::now() - 90 * 60_000;
    let fleet: Fleet = ["hk", "cn", "us"]
        .iter()
        .flat_map(|region| (1..=2).map(move |n| (*region, format!("{region}-{n}"), n as i64)))
        .map(|(region, agent, n)| {
            let results = (0..80u64)
                .map(|i| {
                    let refused = region != "us" && (40..60).contains(&i);
                    let outcome = if refused { Outcome::HttpGeoBlocked } else { Outcome::Ok };
                    result(&agent, region, i + 1, "openai", t0 + i as i64 * 60_000 + n * 1000, outcome)
                })
                .collect();
            (agent, (region.to_string(), results))
        })
        .collect();
    let both = |range| through_both(a.addr, b.addr, &fleet, range);

    // A NATS node dies early; the active detector dies inside the block, once it has sent the
    // block's starts; front end B dies too, and its agents move to A.
    both(0..20);
    nodes[2].proc.kill9();
    both(20..50);
    wait_showing("both block starts delivered by the first detector", Duration::from_secs(60), || {
        let sent = delivered(&hook, "block_started");
        (sent.len() >= 2).then_some(()).ok_or_else(|| format!("delivered {sent:?}; its log:\n{}", one.proc.log()))
    });
    // Once its sink's cursor is mirrored in the cluster, it dies.
    wait_showing("the first detector's sink cursor in the cluster", Duration::from_secs(30), || {
        let cursor = kv_value(&nodes[0], "BLOCKWATCH_LEASE_CURSORS", "sink.hook");
        (cursor.as_deref().and_then(|c| c.parse::<u64>().ok()) >= Some(2))
            .then_some(())
            .ok_or_else(|| format!("cursor {cursor:?}; its log:\n{}", one.proc.log()))
    });
    one.proc.kill9();
    both(50..55);
    b.proc.kill9();
    stream_all(a.addr, part(&fleet, 55..80, |_| true));
    wait_for("the standby to take the lease", Duration::from_secs(30), || two.proc.log().contains(holds).then_some(()));
    wait_showing("both block ends delivered by the standby", Duration::from_secs(60), || {
        let sent = delivered(&hook, "block_ended");
        (sent.len() >= 2).then_some(()).ok_or_else(|| format!("delivered {sent:?}; its log:\n{}", two.proc.log()))
    });

    // Nothing acked lost or stored twice; the standby's events are a replay of its store.
    let stored = stored_once(two.api, &fleet);
    let (_, events) = http_get(two.api, "/v1/events?limit=1000");
    assert_live_is_replay(dir.path(), &stored, &events);

    // Every block event of the standby's log delivered, once, though two detectors alerted.
    let log: Vec<(u64, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "block_started" || e["kind"] == "block_ended")
        .map(|e| (e["seq"].as_u64().unwrap(), e["region"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(log.len(), 4, "{events}");
    let mut sent: Vec<(u64, String)> = [delivered(&hook, "block_started"), delivered(&hook, "block_ended")].concat();
    sent.sort();
    assert_eq!(sent, log, "each block event delivered once, by one detector or the other");

    // The events stream holds the log, each event once.
    let all = events.lines().count() as u64;
    wait_showing("the events stream to hold the standby's log", Duration::from_secs(30), || {
        let held = stream_messages(&nodes[0], "BLOCKWATCH_EVENTS");
        (held == Some(all)).then_some(()).ok_or_else(|| format!("{held:?} messages of {all}"))
    });

    // The killed detector comes back as a standby and catches up to the same log, sequence
    // numbers and all (what the mirrored cursors rely on).
    let one = CollectorProc::start_insecure(&one_dir, Some(one.addr.port()), &detector_cfg);
    wait_showing("the first detector to catch up to the standby's log", Duration::from_secs(90), || {
        let (_, got) = http_get(one.api, "/v1/events?limit=1000");
        (got == events)
            .then_some(())
            .ok_or_else(|| format!("its events:\n{got}\nthe standby's:\n{events}\nits log:\n{}", one.proc.log()))
    });
    assert!(!one.proc.log().contains(holds));
    // A clean stop hands the lease over at once.
    assert_eq!(two.proc.terminate(), Some(0));
    assert!(two.proc.log().contains("detector lease handed over"), "{}", two.proc.log());
    wait_for("the first detector to take the handed-over lease", Duration::from_secs(30), || {
        one.proc.log().contains(holds).then_some(())
    });
    let sent_again = delivered(&hook, "block_started").len() + delivered(&hook, "block_ended").len();
    assert_eq!(sent_again, 4, "nothing sent again");
}
