//! `export` streams: exporting four times as many stored results leaves its peak RSS where it
//! was, as JSON lines (as CSV and OONI measurements are written), as Parquet and into a
//! partitioned tree. (The figures at 1 M and 10 M
//! results are the `export` bench's, in the README.)

use std::path::Path;
use std::process::Command;

use blockwatch_collector::store::Store;
use blockwatch_proto::Outcome;
use blockwatch_proto::time::to_timestamp;
use blockwatch_proto::v1::{Header, ProbeResult};
use blockwatch_tests::*;

/// A store of `n` results: 4 targets × 10 regions probing every minute, with the headers and
/// body start a real probe records.
fn build(dir: &Path, n: u64, t0: i64) {
    let store = Store::open(dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut batch = Vec::new();
    for i in 0..n {
        let (target, region) =
            (["openai", "anthropic", "gemini", "mistral"][(i % 4) as usize], format!("r{}", (i / 4) % 10));
        let agent = format!("{region}-1");
        let mut r = ProbeResult {
            probe_id: format!("{agent}/1/{i}"),
            agent_id: agent,
            region,
            target_id: target.into(),
            started_at: Some(to_timestamp(t0 + (i / 40) as i64 * 60_000)),
            http_status: 401,
            url: format!("https://api.{target}.test/v1/models"),
            response_headers: vec![
                Header { name: "server".into(), value: "cloudflare".into() },
                Header { name: "content-type".into(), value: "application/json".into() },
            ],
            body_prefix: br#"{"error":{"message":"missing key","code":"invalid_api_key"}}"#.to_vec(),
            ..Default::default()
        };
        r.set_outcome(Outcome::Ok);
        batch.push(r);
        if batch.len() == 5000 || i + 1 == n {
            rt.block_on(store.write_results(std::mem::take(&mut batch), t0)).unwrap();
        }
    }
    store.close();
}

/// The peak RSS, in KiB, of `blockwatch-collector ARGS`, as the kernel counts it for a
/// finished child (`getrusage`, through Python's `resource`).
fn peak_kib(args: &[&str]) -> u64 {
    let code = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
        assert r.returncode == 0, r.stderr.decode()\n\
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = Command::new("python3").args(["-c", code]).arg(bin("blockwatch-collector")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn export_memory_does_not_grow_with_the_export() {
    // One store, exported whole and a quarter of it (by time): the same store opened, the
    // same journal recovered, four times the rows written. Both exports are past a Parquet
    // row group (65 536 rows).
    let (n, t0) = (280_000, blockwatch_proto::time::now() - 5 * 86_400_000);
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), n, t0);
    let data = dir.path().to_str().unwrap();
    let quarter = blockwatch_proto::time::format_rfc3339(t0 + (n / 40 / 4) as i64 * 60_000);
    let out = tempfile::tempdir().unwrap();
    let tree = out.path().join("tree");
    let tree = tree.to_str().unwrap();
    // The first open of a freshly written store recovers its journal into memory (fjall
    // flushes it then): done here, so both exports below open the store alike.
    peak_kib(&["export", "--data-dir", data, "--to", "2000-01-01T00:00:00Z", "--output", "/dev/null"]);
    let opened = peak_kib(&["export", "--data-dir", data, "--to", "2000-01-01T00:00:00Z", "--output", "/dev/null"]);
    for format in ["jsonl", "parquet", "tree"] {
        let peaks: Vec<u64> = [Some(quarter.as_str()), None]
            .iter()
            .map(|to| {
                let mut args = vec!["export", "--data-dir", data, "--what", "results"];
                if format == "tree" {
                    args.extend(["--format", "parquet", "--partition-by", "date,target,region", "--output", tree]);
                } else {
                    args.extend(["--format", format, "--output", "/dev/null"]);
                }
                if let Some(to) = to {
                    args.extend(["--to", to]);
                }
                let kib = peak_kib(&args);
                let _ = std::fs::remove_dir_all(tree);
                kib
            })
            .collect();
        println!(
            "{format}: peak RSS {} KiB for {} results, {} KiB for {n} (the store opened, nothing exported: {opened} KiB)",
            peaks[0],
            n / 4,
            peaks[1]
        );
        // A row group's buffers are freed and gathered again; the allocator's reuse of them
        // varies by a few MiB. Growing with the rows would be tens of MiB here.
        assert!(
            peaks[1] <= peaks[0] + 16 * 1024,
            "{format}: peak RSS grew from {} KiB to {} KiB over 4x the results",
            peaks[0],
            peaks[1]
        );
    }
}
