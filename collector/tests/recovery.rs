//! Results stored by a collector that died before its detector logged their events: the next
//! start publishes those events, once.

use std::net::SocketAddr;
use std::path::Path;

use blockwatch_collector::config::CollectorConfig;
use blockwatch_collector::server::Collector;
use blockwatch_collector::store::Store;
use blockwatch_detector::{Detector, DetectorConfig, EventKind};
use blockwatch_proto::Outcome;
use blockwatch_sim::{Family, Params, generate};

fn config(dir: &Path) -> CollectorConfig {
    CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
        // No agent connects: the test drives the store and the detector directly.
        insecure: true,
        ..Default::default()
    }
}

fn block_events(dir: &Path) -> usize {
    let store = Store::open(dir).unwrap();
    let n = store.events().filter(|e| e.as_ref().unwrap().1.contains("\"block_started\"")).count();
    store.close();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_in_a_crash_are_published_at_the_next_start_and_only_once() {
    let trace = generate(&Params::new(Family::GeoBlock, 60, 3, 11));
    // What the detector decides over these results, run directly.
    let expected = {
        let mut d = Detector::new(DetectorConfig::default());
        let mut events = Vec::new();
        for r in &trace.records {
            d.observe(&r.observation(Outcome::from_name(r.outcome).unwrap()), &mut events);
        }
        events.iter().filter(|e| e.kind == EventKind::BlockStarted).count()
    };
    assert!(expected > 0, "the generated trace has blocks");

    let dir = tempfile::tempdir().unwrap();
    {
        // As if the process died right after the commits: results durable, no events.
        let store = Store::open(dir.path()).unwrap();
        let records = trace.trace_records();
        for chunk in records.chunks(500) {
            let received = chunk[0].received_ms().unwrap();
            let results = chunk.iter().map(|r| r.to_result().unwrap()).collect();
            let w = store.write_results(results, received).await.unwrap();
            assert_eq!(w.stored + w.duplicates.len(), chunk.len());
        }
        tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    }
    let d = dir.path().to_owned();
    assert_eq!(tokio::task::spawn_blocking(move || block_events(&d)).await.unwrap(), 0);
    for _ in 0..2 {
        let collector = Collector::start(&config(dir.path())).await.expect("starts");
        collector.shutdown(std::time::Duration::from_secs(5)).await;
        let d = dir.path().to_owned();
        let logged = tokio::task::spawn_blocking(move || block_events(&d)).await.unwrap();
        assert_eq!(logged, expected, "the trace's blocks, logged once");
    }
}
