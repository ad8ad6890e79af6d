//! Throughput of parsing, of the detector alone and of the whole replay, measured in one run
//! on one generated fleet trace (`cargo bench --bench replay`; `BW_BENCH_PROBES` scales it).

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::hint::black_box;
use std::time::Instant;

use blockwatch_proto::Outcome;
use blockwatch_collector::detector::{Detector, DetectorConfig, Observation};
use blockwatch_collector::replay::{parse_line, replay};

fn main() {
    let probes = std::env::var("BW_BENCH_PROBES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut p = sim::Params::new(sim::Family::LiftAndRollout, 60, 50, 7);
    p.regions = 5;
    p.targets = 4;
    p.probes = probes;
    let t = Instant::now();
    let trace = sim::generate(&p);
    let text = trace.to_jsonl();
    let n = trace.records.len();
    println!(
        "trace: {n} results ({} agents x {} targets, {:.0} MB), generated in {:.1}s",
        p.regions * p.agents_per_region,
        p.targets,
        text.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Parse only: every line to a borrowed record with its times and outcome.
    let t = Instant::now();
    let mut acc = 0i64;
    for (i, line) in text.lines().enumerate() {
        let r = parse_line(line, i as u64 + 1).expect("generated lines parse");
        acc = acc.wrapping_add(r.started_at ^ r.received_at ^ r.outcome as i64);
    }
    black_box(acc);
    let parse = n as f64 / t.elapsed().as_secs_f64();

    // Detector only, on observations parsed beforehand.
    let outcomes: Vec<Outcome> = trace.records.iter().map(|r| Outcome::from_name(r.outcome).expect("known")).collect();
    let mut d = Detector::new(DetectorConfig::default());
    let mut events = Vec::new();
    let t = Instant::now();
    for (r, &outcome) in trace.records.iter().zip(&outcomes) {
        let obs = Observation {
            probe_id: &r.probe_id,
            agent_id: &r.agent_id,
            region: &r.region,
            target: &r.target,
            started_at: r.started_at,
            received_at: r.received_at,
            outcome,
            control: false,
            confirmation: false,
        };
        d.observe(&obs, &mut events);
    }
    let detect = n as f64 / t.elapsed().as_secs_f64();
    let found = events.len();

    // The whole replay: read, parse, detect, write.
    let t = Instant::now();
    let stats = replay(text.as_bytes(), std::io::sink(), DetectorConfig::default()).expect("replay");
    let full = n as f64 / t.elapsed().as_secs_f64();

    println!("parse only:    {:>6.2} M results/s", parse / 1e6);
    println!("detector only: {:>6.2} M results/s ({found} events)", detect / 1e6);
    println!(
        "full replay:   {:>6.2} M results/s = {:.2} x parse-only ({} events, {} duplicates)",
        full / 1e6,
        full / parse,
        stats.events,
        stats.duplicates
    );
}
