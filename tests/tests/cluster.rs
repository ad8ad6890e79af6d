//! Clustered mode end to end, on loopback: a three-node NATS JetStream cluster (Debian's
//! `nats-server`, installed by the test script), two collectors as ingest front ends, one in
//! the detector role. Agents report an enforcement wave through both front ends; one NATS
//! node, then the detector, then a front end are killed with SIGKILL along the way (its
//! agents move to the other front end). No acked result is lost or stored twice, the block is
//! detected once per blocked region, and the detector's events equal a replay of what it
//! stored. A real agent fails over from an endpoint that does not answer to one that does.

use std::collections::BTreeMap;
use std::time::Duration;

use blockwatch_proto::v1::ProbeResult;
use blockwatch_tests::nats::{cluster as nats_cluster, jetstream};
use blockwatch_tests::provider::Provider;
use blockwatch_tests::session::{stream_all, wave};
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
    let total: usize = fleet.values().map(|(_, rs)| rs.len()).sum();
    let on_a = |agent: &str| agent.ends_with("-1");

    // The first twenty minutes through both front ends; then a NATS node dies.
    stream_all(a.addr, part(&fleet, 0..20, on_a));
    stream_all(b.addr, part(&fleet, 0..20, |x| !on_a(x)));
    nodes[2].proc.kill9();
    // Twenty more on the two nodes left (still a quorum); then the detector dies, and comes
    // back while the front ends go on.
    stream_all(a.addr, part(&fleet, 20..30, on_a));
    stream_all(b.addr, part(&fleet, 20..30, |x| !on_a(x)));
    detector.proc.kill9();
    stream_all(a.addr, part(&fleet, 30..40, on_a));
    stream_all(b.addr, part(&fleet, 30..40, |x| !on_a(x)));
    let detector = CollectorProc::start_insecure(&det_dir, Some(detector.addr.port()), &jetstream(&nodes, "detector"));
    // The block begins at minute 40; front end B dies inside it and its agents move to A.
    stream_all(a.addr, part(&fleet, 40..50, on_a));
    stream_all(b.addr, part(&fleet, 40..50, |x| !on_a(x)));
    b.proc.kill9();
    stream_all(a.addr, part(&fleet, 50..60, |_| true));

    // Everything acked reaches the detector's store, once.
    let stored = wait_for("every acked result in the detector's store", Duration::from_secs(60), || {
        let (status, body) = http_get(detector.api, "/v1/export?what=results&format=jsonl");
        (status == 200 && body.lines().count() >= total).then_some(body)
    });
    let ids: std::collections::BTreeSet<&str> =
        stored.lines().map(|l| l.split("\"probe_id\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert_eq!(stored.lines().count(), total, "no result stored twice");
    assert_eq!(ids.len(), total, "every result acked is stored");
    let want: std::collections::BTreeSet<String> =
        fleet.values().flat_map(|(_, rs)| rs.iter().map(|r| r.probe_id.clone())).collect();
    assert!(ids.iter().all(|id| want.contains(*id)));

    // The block, once per blocked region; the live events are a replay of the store.
    let events = wait_for("the block detected", Duration::from_secs(30), || {
        let (_, body) = http_get(detector.api, "/v1/events?limit=1000");
        (body.matches("\"kind\":\"block_started\"").count() >= 2).then_some(body)
    });
    let starts: Vec<&str> = events.lines().filter(|l| l.contains("\"kind\":\"block_started\"")).collect();
    assert_eq!(starts.len(), 2, "{events}");
    assert!(
        starts.iter().any(|l| l.contains("\"region\":\"hk\""))
            && starts.iter().any(|l| l.contains("\"region\":\"cn\""))
    );
    let stored_file = dir.path().join("stored.jsonl");
    std::fs::write(&stored_file, &stored).unwrap();
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
