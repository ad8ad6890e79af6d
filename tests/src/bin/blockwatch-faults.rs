//! The fault harness as a command: `cargo build --release --bins &&
//! target/release/blockwatch-faults [--long] [--seed N] [--keep DIR]`. Loopback only; the short
//! run takes about a minute and a half, `--long` (50 collector and 50 agent kills, a one-minute
//! partition) about seven. Exits non-zero when anything was lost, stored twice, or the live
//! events differ from a replay.

use blockwatch_tests::faults::{Options, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut opts = if args.iter().any(|a| a == "--long") { Options::long() } else { Options::short() };
    if let Some(seed) = value("--seed").and_then(|s| s.parse().ok()) {
        opts.seed = seed;
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = value("--keep").map_or_else(|| tmp.path().to_owned(), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).expect("the run's directory");
    eprintln!("fault harness: {opts:?}\nin {}", dir.display());
    let summary = run(&dir, &opts);
    print!("{}", summary.table());
    let ok = summary.lost == 0
        && summary.duplicates_stored == 0
        && summary.stored == summary.sent
        && summary.live_equals_replay
        && summary.blocks_detected > 0;
    if !ok {
        eprintln!("FAILED: see {}", dir.display());
        let _ = tmp.keep();
        std::process::exit(1);
    }
}
