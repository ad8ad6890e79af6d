//! The live path: results streamed through a running collector by many agents at once give
//! exactly the events that `replay` gives over the same stored results, and those events can be
//! queried over the collector's HTTP API.

use std::collections::BTreeMap;

use blockwatch_proto::v1::ProbeResult;
use blockwatch_sim::Family;
use blockwatch_tests::session::{sample, stream_all};
use blockwatch_tests::*;

fn strip_seq(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("event json");
    let mut m = v.as_object().expect("event object").clone();
    assert!(m.remove("seq").is_some_and(|s| s.is_u64()), "API events carry their seq: {line}");
    serde_json::to_string(&m).unwrap()
}

fn normalise(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("event json");
    serde_json::to_string(&v).unwrap()
}

fn live_equals_replay(family: Family, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let records = sample(family, seed);
    let sample_name = format!("{family:?}");
    let mut per_agent: BTreeMap<String, (String, Vec<ProbeResult>)> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        // The trace repeats some results (re-sends); an agent re-sends too, so keep them.
        seen.insert(r.probe_id.clone());
        per_agent
            .entry(r.agent_id.clone())
            .or_insert_with(|| (r.region.clone(), Vec::new()))
            .1
            .push(r.to_result().expect("sample record"));
    }

    let mut collector = CollectorProc::start_insecure(dir.path(), None, "max_batch = 100");
    stream_all(collector.addr, per_agent);
    // Graceful stop: the detector drains its queue and the event log is complete.
    assert_eq!(collector.proc.terminate(), Some(0), "{}", collector.proc.log());

    let stored = dir.path().join("stored.jsonl");
    let out = run(
        &bin("blockwatch-collector"),
        &["export", "--data-dir", collector.data_dir.to_str().unwrap(), "--output", stored.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = std::fs::read_to_string(&stored).unwrap();
    assert_eq!(exported.lines().count(), seen.len(), "every distinct result stored once");

    let replayed = dir.path().join("replayed.events.jsonl");
    let out = run(
        &bin("blockwatch-collector"),
        &["replay", "--input", stored.to_str().unwrap(), "--output", replayed.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Vec<String> = std::fs::read_to_string(&replayed).unwrap().lines().map(normalise).collect();

    // Restart on the same store and read the live event log over the API.
    let collector = CollectorProc::start_insecure(dir.path(), None, "");
    let (status, body) = http_get(collector.api, "/v1/events?limit=100000");
    assert_eq!(status, 200, "{body}");
    // The collector's own events (agents going silent) are not the detector's.
    let live: Vec<String> = body.lines().filter(|l| !l.contains("\"kind\":\"agent_")).map(strip_seq).collect();

    println!("{sample_name}: {} live events, {} replayed", live.len(), replayed.len());
    assert!(live.iter().any(|l| l.contains("\"block_started\"")), "the sample has blocks: {live:#?}");
    assert_eq!(live, replayed, "live events differ from replay of the stored results");

    // The stored results over the API are the export, and page by position.
    let (status, body) = http_get(collector.api, "/v1/results");
    assert_eq!(status, 200);
    assert!(body == exported, "GET /v1/results differs from export ({} vs {} bytes)", body.len(), exported.len());
    let (_, page) = http_get(collector.api, "/v1/results?after=10&limit=5");
    assert_eq!(page.lines().collect::<Vec<_>>(), exported.lines().skip(10).take(5).collect::<Vec<_>>());
    let (status, body) = http_get(collector.api, "/v1/results?after=-1");
    assert_eq!(status, 400, "{body}");

    // Filters and paging.
    let (_, started) = http_get(collector.api, "/v1/events?kind=block_started");
    assert!(started.lines().count() >= 1 && started.lines().all(|l| l.contains("\"kind\":\"block_started\"")));
    let (_, first) = http_get(collector.api, "/v1/events?limit=1");
    let (_, rest) = http_get(collector.api, "/v1/events?after=1");
    assert_eq!(first.lines().count() + rest.lines().count(), live.len());
    let (status, body) = http_get(collector.api, "/v1/events?limit=0");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit=0"), "{body}");
    // A typo in a kind is an error naming it, not an empty log that never fires.
    let (status, body) = http_get(collector.api, "/v1/events?kind=block_start");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("kind=block_start: unknown event kind") && body.contains("block_stale"), "{body}");
    let (status, _) = http_get(collector.api, "/v1/events?kind=block_stale");
    assert_eq!(status, 200);
    let (status, body) = http_get(collector.api, "/v1/events?colour=red");
    assert_eq!(status, 400);
    assert!(body.contains("colour"), "{body}");
}

#[test]
fn live_events_equal_replay_geo_and_network_blocks_with_ends() {
    live_equals_replay(Family::LiftAndRollout, 3);
}

#[test]
fn live_events_equal_replay_with_late_spool_flushes() {
    live_equals_replay(Family::LateArrival, 5);
}
