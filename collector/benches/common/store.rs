//! The benches' store at scale: 7 targets × 30 regions × 2 agents probing every minute, built
//! once through the real write path under `target/bench-store-N` and reused
//! (`BW_BENCH_REBUILD=1` builds it again). Shared by the `query` and `export` benches.
#![allow(dead_code)] // each bench uses a part

use std::path::PathBuf;
use std::time::Instant;

use blockwatch_collector::store::Store;
use blockwatch_proto::Outcome;
use blockwatch_proto::time::to_timestamp;
use blockwatch_proto::v1::{PhaseDurations, ProbeResult};

pub const TARGETS: [&str; 7] = ["openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "cohere"];
pub const REGIONS: usize = 30;
pub const AGENTS: usize = 2;
pub const MINUTE: i64 = 60_000;
pub const DAY: i64 = 86_400_000;

pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn region(i: usize) -> String {
    format!("r{i:02}")
}

/// The store's results, minute by minute: every series probes once a minute; a few
/// (target, region) cells are refused for a stretch.
pub fn build_store(dir: &std::path::Path, total: u64, t0: i64) {
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

/// The store of `total` results (built when missing), its directory, the time of its first
/// result and how many minutes it spans.
pub fn ensure(total: u64) -> (PathBuf, i64, i64) {
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
    (dir, t0, minutes)
}
