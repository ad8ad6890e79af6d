//! Queries at scale: a store of `BW_BENCH_RESULTS` (default 10 000 000) stored results — 7
//! targets × 30 regions × 2 agents probing every minute, about 16 days — and the questions the
//! dashboard and the API ask of it, each next to what the same answer costs without the index
//! (a scan of the store), measured in the same run. The store is built once under
//! `target/bench-store-N` and reused (`BW_BENCH_REBUILD=1` builds it again).
//!
//! `cargo bench -p blockwatch-collector --bench query`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blockwatch_collector::export::{Filtered, export_filtered};
use blockwatch_collector::status::Status;
use blockwatch_collector::store::Store;
use blockwatch_collector::timeline::{Ask, build};
use blockwatch_proto::Outcome;
use blockwatch_proto::time::to_timestamp;
use blockwatch_proto::v1::{PhaseDurations, ProbeResult};

const TARGETS: [&str; 7] = ["openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "cohere"];
const REGIONS: usize = 30;
const AGENTS: usize = 2;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

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

fn region(i: usize) -> String {
    format!("r{i:02}")
}

/// The store's results, minute by minute: every series probes once a minute; a few
/// (target, region) cells are refused for a stretch.
fn build_store(dir: &std::path::Path, total: u64, t0: i64) {
    let store = Store::open(dir).expect("open the bench store");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let series = (TARGETS.len() * REGIONS * AGENTS) as u64;
    let minutes = total.div_ceil(series);
    let started = Instant::now();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(10_000);
    for m in 0..minutes {
        for (ti, target) in TARGETS.iter().enumerate() {
            for ri in 0..REGIONS {
                for a in 0..AGENTS {
                    if written == total {
                        break;
                    }
                    written += 1;
                    let agent = format!("{}-{}", region(ri), a + 1);
                    let refused = ri % 10 == 3 && ti % 3 == 0 && (m / 1440) % 4 == 1;
                    let mut r = ProbeResult {
                        probe_id: format!("{agent}/1/{}", m * TARGETS.len() as u64 + ti as u64),
                        agent_id: agent,
                        region: region(ri),
                        target_id: target.to_string(),
                        started_at: Some(to_timestamp(t0 + m as i64 * MINUTE + (a as i64) * 1000)),
                        provider: target.to_string(),
                        http_status: if refused { 403 } else { 401 },
                        provider_code: if refused {
                            "unsupported_country_region_territory".into()
                        } else {
                            String::new()
                        },
                        resolved_addresses: vec!["192.0.2.10".into()],
                        peer_address: "192.0.2.10:443".into(),
                        durations: Some(PhaseDurations {
                            dns_us: 900,
                            connect_us: 21_000,
                            tls_us: 43_000,
                            http_ttfb_us: 88_000,
                            http_us: 90_000,
                            total_us: 160_000,
                        }),
                        egress_address: "198.51.100.7".into(),
                        egress_asn: 64_500 + ri as u32,
                        egress_country: "ZZ".into(),
                        ..Default::default()
                    };
                    r.set_outcome(if refused { Outcome::HttpGeoBlocked } else { Outcome::Ok });
                    batch.push(r);
                    if batch.len() == 10_000 {
                        let b = std::mem::take(&mut batch);
                        rt.block_on(store.write_results(b, t0 + m as i64 * MINUTE)).expect("write");
                    }
                }
            }
        }
        if m % 2000 == 0 && m > 0 {
            eprintln!("  … {written} results stored ({:.0}/s)", written as f64 / started.elapsed().as_secs_f64());
        }
    }
    if !batch.is_empty() {
        rt.block_on(store.write_results(batch, t0 + minutes as i64 * MINUTE)).expect("write");
    }
    store.close();
    eprintln!("stored {written} results in {:.0} s", started.elapsed().as_secs_f64());
}

fn main() {
    let total = env("BW_BENCH_RESULTS", 10_000_000);
    let rounds = env("BW_BENCH_ROUNDS", 5) as usize;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/bench-store-{total}"));
    // The data's clock: ends now, whole minutes.
    let series = (TARGETS.len() * REGIONS * AGENTS) as u64;
    let minutes = total.div_ceil(series) as i64;
    let marker = dir.join("bench-t0");
    let rebuild = std::env::var("BW_BENCH_REBUILD").is_ok_and(|v| v == "1");
    let t0 = match std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<i64>().ok()) {
        Some(t0) if !rebuild => t0,
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
            let t0 = (blockwatch_proto::time::now() / MINUTE - minutes) * MINUTE;
            eprintln!("building a store of {total} results in {} (once)", dir.display());
            build_store(&dir, total, t0);
            std::fs::write(&marker, t0.to_string()).expect("marker");
            t0
        }
    };
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
