//! Start-up at scale: from `Collector::start` to an agent's Register answered, on a store of
//! `BW_BENCH_RESULTS` (default 10 000 000) results — 7 targets × 30 regions × 2 agents probing
//! every minute, shared with the query and export benches — once with no checkpoint it can
//! take up (the reference: the detector rebuilt by replaying the whole store) and once from the
//! checkpoint that start wrote, in the same run.
//!
//! `cargo bench -p blockwatch-collector --bench startup`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockwatch_collector::config::CollectorConfig;
use blockwatch_collector::server::Collector;
use blockwatch_collector::store::Store;
use blockwatch_detector::DetectorConfig;
use blockwatch_proto::v1::RegisterRequest;
use blockwatch_proto::v1::fleet_client::FleetClient;

#[path = "common/store.rs"]
mod store;
use store::env;

/// One start: the time to an answered Register, and what the detector's rebuild reported.
async fn start(cfg: &CollectorConfig) -> Duration {
    let t = Instant::now();
    let collector = Collector::start(cfg).await.expect("the collector starts");
    let mut client = FleetClient::connect(format!("http://{}", collector.addr)).await.expect("connect");
    client
        .register(RegisterRequest {
            agent_id: "r00-1".into(),
            region: "r00".into(),
            version: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    let took = t.elapsed();
    drop(client);
    collector.shutdown(Duration::from_secs(5)).await;
    took
}

fn main() {
    let total = env("BW_BENCH_RESULTS", 10_000_000);
    let (dir, _, _) = store::ensure(total);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cfg = CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.clone(),
        insecure: true,
        detector: DetectorConfig::default(),
        ..Default::default()
    };
    // No checkpoint to take up: one that is not a detector's state stands in for a store from
    // before checkpoints (the collector says so and replays everything).
    {
        let store = Store::open(&dir).expect("open the bench store");
        store.event_log().checkpoint(0, &[]).expect("clear the checkpoint");
        store.close();
    }
    let full = rt.block_on(start(&cfg));
    let (covered, bytes) = {
        let store = Store::open(&dir).expect("open the bench store");
        let h = store.detector_checkpoint_header().expect("read").expect("the start wrote a checkpoint");
        store.close();
        h
    };
    let fast = rt.block_on(start(&cfg));
    println!("collector start to an answered Register, {total} stored results (same run):");
    println!("  detector rebuilt by replaying the whole store   {:8.2} s", full.as_secs_f64());
    println!(
        "  from the checkpoint ({covered} results, {} KiB)  {:8.2} s   ({:.0}x faster)",
        bytes / 1024,
        fast.as_secs_f64(),
        full.as_secs_f64() / fast.as_secs_f64()
    );
}
