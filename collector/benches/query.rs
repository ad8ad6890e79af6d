//! Queries at scale: a store of `BW_BENCH_RESULTS` (default 10 000 000) stored results — 7
//! targets × 30 regions × 2 agents probing every minute, about 16 days — and the questions the
//! dashboard and the API ask of it, each next to what the same answer costs without the index
//! (a scan of the store), measured in the same run. The store is built once under
//! `target/bench-store-N` and reused (`BW_BENCH_REBUILD=1` builds it again).
//!
//! `cargo bench -p blockwatch-collector --bench query`

use std::time::{Duration, Instant};

use blockwatch_collector::export::{Filtered, export_filtered};
use blockwatch_collector::status::Status;
use blockwatch_collector::store::Store;
use blockwatch_collector::timeline::{Ask, build};

#[path = "common/store.rs"]
mod store;
use store::{DAY, MINUTE, env, region};

/// Best of `rounds` runs of `f`, and what the last returned.
fn best<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("at least one round"))
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let total = env("BW_BENCH_RESULTS", 10_000_000);
    let rounds = env("BW_BENCH_ROUNDS", 5) as usize;
    let (dir, t0, minutes) = store::ensure(total);
    let store = Store::open(&dir).expect("open");
    let reader = store.reader();
    let stored = reader.last_result_seq();
    let bytes = blockwatch_collector::metrics::dir_bytes(&dir);
    println!(
        "store: {stored} results, {:.1} MiB on disk, {:.0} bytes per stored result",
        bytes as f64 / 1048576.0,
        bytes as f64 / stored as f64
    );
    println!();
    println!("{:<58} {:>11} {:>13}  reference (a scan, no index)", "query", "time", "answer");

    // One (target, region) day: every result of it, read and written out as trace lines.
    let day_from = t0 + (minutes * MINUTE) / 2;
    let cell = Filtered {
        target: Some("openai".into()),
        region: Some(region(3)),
        from: Some(day_from),
        to: Some(day_from + DAY),
        limit: 100_000,
        ..Default::default()
    };
    let (t, (n, _)) = best(rounds, || export_filtered(&reader, &cell, std::io::sink()).expect("query"));
    let scan = Filtered {
        target: None,
        ..Filtered { region: cell.region.clone(), from: cell.from, to: cell.to, limit: 100_000, ..Default::default() }
    };
    let (ts, (ns, _)) = best(1, || export_filtered(&reader, &scan, std::io::sink()).expect("scan"));
    println!(
        "{:<58} {} {:>9} res  {} ({ns} results of the region, all targets)",
        "one (target, region) day of results (≤ 50 ms)",
        ms(t),
        n,
        ms(ts)
    );

    // The status of every cell: the live view, in memory; its rebuild at start reads the log
    // and the newest results.
    let (tr, status) = best(1, || Status::rebuild(&reader));
    let (t, cells) = best(rounds, || status.cells());
    println!(
        "{:<58} {} {:>9} cells  rebuilt at start in {}",
        "the status of every cell (≤ 10 ms)",
        ms(t),
        cells.len(),
        ms(tr)
    );

    // A day's timeline of one target across regions, 15-minute buckets.
    let ask = Ask { target: "openai".into(), region: None, from: day_from, to: day_from + DAY, step: 15 * MINUTE };
    let (t, tl) = best(rounds, || build(&reader, &ask).expect("timeline"));
    let buckets: usize = tl.regions.values().map(Vec::len).sum();
    let (ts, scanned) = best(1, || {
        let mut k = 0u64;
        for r in reader.results() {
            let r = r.expect("read");
            let Some(p) = r.result else { continue };
            let at = p.started_at.as_ref().map_or(0, blockwatch_proto::time::from_timestamp);
            if p.target_id == "openai" && (day_from..day_from + DAY).contains(&at) {
                k += 1;
            }
        }
        k
    });
    println!(
        "{:<58} {} {:>9} bkts  {} (scan counting {scanned} results)",
        "a day's timeline of one target across regions (≤ 100 ms)",
        ms(t),
        buckets,
        ms(ts)
    );
    store.close();
}
