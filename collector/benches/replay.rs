//! Throughput of parsing, of the detector alone and of the whole replay, measured in one run
//! on one generated fleet trace (`cargo bench --bench replay`; `BW_BENCH_PROBES` scales it).
//! Each figure is the best of `BW_BENCH_ROUNDS` (default 3) rounds: on a shared machine the
//! best round is the one least disturbed by others.

use blockwatch_sim as sim;

use std::hint::black_box;
use std::time::Instant;

use std::collections::BTreeMap;

use blockwatch_collector::replay::{parquet, replay};
use blockwatch_collector::research::{Format, write_results};
use blockwatch_detector::{Detector, DetectorConfig};
use blockwatch_proto::Outcome;
use blockwatch_proto::trace::TraceLine;
use blockwatch_proto::trace::TraceRecord;

/// Results per second of the best of `rounds` runs of `f` over `n` results.
fn rate(n: usize, rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            n as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rounds = env("BW_BENCH_ROUNDS", 3).max(1);
    let mut p = sim::Params::new(sim::Family::LiftAndRollout, 60, 50, 7);
    p.regions = 5;
    p.targets = 4;
    p.probes = env("BW_BENCH_PROBES", 2000);
    measure(&p, rounds, &format!("{} agents x {} targets", p.regions * p.agents_per_region, p.targets));
    // A day of a big fleet with everything happening at once.
    let fleet = sim::Params::new(sim::Family::Fleet, 60, 2, 1);
    println!();
    measure(&fleet, rounds, "a day of 30 regions x 1-2 agents x 7 targets and a control");
}

/// Prints every figure for the trace of `p`.
fn measure(p: &sim::Params, rounds: usize, what: &str) {
    let t = Instant::now();
    let trace = sim::generate(p);
    let text = trace.to_jsonl();
    let n = trace.records.len();
    println!(
        "trace: {n} results ({what}, {:.0} MB), generated in {:.1}s; best of {rounds} rounds",
        text.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Floor: read every byte once.
    let scan = rate(n, rounds, || {
        black_box(text.as_bytes().iter().filter(|&&b| b == b'"').count());
    });

    // The general JSON parser on the same lines, for reference.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Line<'a> {
        probe_id: &'a str,
        agent_id: &'a str,
        region: &'a str,
        target: &'a str,
        started_at: &'a str,
        received_at: &'a str,
        outcome: &'a str,
    }
    let serde = rate(n, rounds, || {
        for line in text.lines() {
            black_box(serde_json::from_str::<Line<'_>>(line).expect("generated lines parse"));
        }
    });

    // Parse only: every line to a borrowed record with its times and outcome.
    let parse = rate(n, rounds, || {
        for line in text.lines() {
            black_box(TraceLine::parse(line).expect("generated lines parse").started_at);
        }
    });

    // Detector only, on observations parsed beforehand.
    let outcomes: Vec<Outcome> = trace.records.iter().map(|r| Outcome::from_name(r.outcome).expect("known")).collect();
    let mut found = 0;
    let detect = rate(n, rounds, || {
        let mut d = Detector::new(DetectorConfig::default());
        let mut events = Vec::new();
        for (r, &outcome) in trace.records.iter().zip(&outcomes) {
            d.observe(&r.observation(outcome), &mut events);
        }
        found = events.len();
    });

    // The whole replay: read, parse, detect, write.
    let mut stats = None;
    let full = rate(n, rounds, || {
        stats = Some(replay(text.as_bytes(), std::io::sink(), DetectorConfig::default()).expect("replay"));
    });
    let stats = stats.expect("ran");

    // The same results as a Parquet export, one file and a tree of (target, region) parts.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("results.parquet");
    let records = trace.trace_records();
    let numbered = || records.iter().enumerate().map(|(i, r)| (i as u64 + 1, r));
    let w = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
    write_results(Format::Parquet, w, numbered()).expect("write parquet");
    let mut cells: BTreeMap<(&str, &str), Vec<(u64, &TraceRecord)>> = BTreeMap::new();
    for (seq, r) in numbered() {
        cells.entry((&r.target, &r.region)).or_default().push((seq, r));
    }
    let tree = dir.path().join("tree");
    for ((t, r), rows) in &cells {
        let d = tree.join(format!("target={t}/region={r}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        let w = std::io::BufWriter::new(std::fs::File::create(d.join("part-0.parquet")).expect("create"));
        write_results(Format::Parquet, w, rows.iter().copied()).expect("write parquet");
    }
    let size = std::fs::metadata(&file).expect("written").len();
    let pq_read = rate(n, rounds, || {
        parquet::read_file(&file, |o| {
            black_box(o.started_at);
            Ok(())
        })
        .expect("reads");
    });
    let tree_read = rate(n, rounds, || {
        parquet::read_tree(&tree, |o| {
            black_box(o.started_at);
            Ok(())
        })
        .expect("reads");
    });
    let mut pq_stats = None;
    let pq_full = rate(n, rounds, || {
        pq_stats = Some(parquet::replay_file(&file, std::io::sink(), DetectorConfig::default()).expect("replay"));
    });
    let mut tree_stats = None;
    let tree_full = rate(n, rounds, || {
        tree_stats = Some(parquet::replay_tree(&tree, std::io::sink(), DetectorConfig::default()).expect("replay"));
    });
    assert_eq!(pq_stats, Some(stats), "the Parquet replay finds what the JSONL replay does");
    assert_eq!(tree_stats, Some(stats), "the tree replay finds what the JSONL replay does");

    println!("memory scan:   {:>6.2} M results/s", scan / 1e6);
    println!("serde_json:    {:>6.2} M results/s (general parser, same lines)", serde / 1e6);
    println!("parse only:    {:>6.2} M results/s", parse / 1e6);
    println!("detector only: {:>6.2} M results/s ({found} events)", detect / 1e6);
    println!(
        "full replay:   {:>6.2} M results/s = {:.2} x parse-only ({} events, {} duplicates)",
        full / 1e6,
        full / parse,
        stats.events,
        stats.duplicates
    );
    println!(
        "parquet read:  {:>6.2} M results/s (the detector's 13 columns of one {:.0} MB file; goal >= 10 M/s)",
        pq_read / 1e6,
        size as f64 / 1e6
    );
    println!("tree read:     {:>6.2} M results/s ({} part files, merged by seq)", tree_read / 1e6, cells.len());
    println!(
        "parquet replay:{:>6.2} M results/s = {:.2} x detector-only (one file; same events as the JSONL replay)",
        pq_full / 1e6,
        pq_full / detect
    );
    println!("tree replay:   {:>6.2} M results/s = {:.2} x detector-only", tree_full / 1e6, tree_full / detect);
}
