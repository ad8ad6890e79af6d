//! Memory of exports at two store sizes: the release `blockwatch-collector export` run on the
//! bench store of `BW_BENCH_SMALL` (default 1 000 000) and of `BW_BENCH_RESULTS` (default
//! 10 000 000) results, each format, its peak RSS (the kernel's high-water mark, `VmHWM`,
//! read every 5 ms while it runs) and its rate, next to the same command exporting nothing
//! (an empty time range: the store opened and closed) as the reference.
//!
//! `cargo bench -p blockwatch-collector --bench export`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/store.rs"]
mod store;

/// Runs `args` to the end; its peak RSS in MiB and its time.
fn measure(args: &[&str]) -> (f64, Duration) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockwatch-collector"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn export");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        // Read before asking whether it ended: the last read is within 5 ms of the end.
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))
        {
            peak_kib = peak_kib.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).ok();
            assert!(status.success(), "{args:?}: {err}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (peak_kib as f64 / 1024.0, t.elapsed())
}

fn main() {
    let sizes = [store::env("BW_BENCH_SMALL", 1_000_000), store::env("BW_BENCH_RESULTS", 10_000_000)];
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let tree = out_dir.path().join("tree");
    let tree = tree.to_str().expect("utf-8 path");
    let cases: [(&str, Vec<&str>); 6] = [
        ("results, JSONL", vec!["--format", "jsonl", "--output", "/dev/null"]),
        ("results, CSV", vec!["--format", "csv", "--output", "/dev/null"]),
        ("results, Parquet", vec!["--format", "parquet", "--output", "/dev/null"]),
        ("results, OONI", vec!["--format", "ooni", "--output", "/dev/null"]),
        (
            "results, Parquet tree by date,target,region",
            vec!["--format", "parquet", "--partition-by", "date,target,region", "--output", tree],
        ),
        ("nothing (an empty range): the reference", vec!["--to", "2000-01-01T00:00:00Z", "--output", "/dev/null"]),
    ];
    let mut rows: Vec<Vec<(f64, Duration)>> = vec![Vec::new(); cases.len()];
    for &n in &sizes {
        let (dir, _, _) = store::ensure(n);
        let data = dir.to_str().expect("utf-8 path").to_string();
        for (i, (_, extra)) in cases.iter().enumerate() {
            let mut args = vec!["export", "--data-dir", &data, "--what", "results"];
            args.extend(extra.iter().copied());
            rows[i].push(measure(&args));
            if Path::new(tree).exists() {
                std::fs::remove_dir_all(tree).expect("remove the tree");
            }
        }
    }
    println!("peak RSS of `blockwatch-collector export` (release), and its rate");
    println!(
        "{:<46} {:>22} {:>22}",
        "export",
        format!("{} M results", sizes[0] as f64 / 1e6),
        format!("{} M results", sizes[1] as f64 / 1e6)
    );
    for ((name, _), r) in cases.iter().zip(&rows) {
        let cell = |(mib, t): (f64, Duration), n: u64| {
            if name.starts_with("nothing") {
                format!("{mib:6.1} MiB {:>9}", format!("{:.2} s", t.as_secs_f64()))
            } else {
                format!("{mib:6.1} MiB {:>6.2} M/s", n as f64 / t.as_secs_f64() / 1e6)
            }
        };
        println!("{:<46} {:>22} {:>22}", name, cell(r[0], sizes[0]), cell(r[1], sizes[1]));
    }
}
