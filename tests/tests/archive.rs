//! The archive end to end: a collector whose store holds days that are closed rolls them
//! into a real S3-compatible server (moto's, from PyPI; a local directory when it is not
//! installed, said so), is killed with SIGKILL mid-roll and started again; then an
//! independent reader (pyarrow) finds every result exactly once and nothing partial, and the
//! API's export, which now reads those days from the archive, is the store's own export
//! byte for byte.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blockwatch_tests::{CollectorProc, bin, free_port, http_get, run, wait_for};

const BUCKET: &str = "blockwatch-archive";

/// The log of the collector's `n`th start in `dir`.
fn collector_log(dir: &Path, n: usize) -> String {
    std::fs::read_to_string(dir.join(format!("collector-{n}.log"))).unwrap_or_default()
}

/// moto's S3 server on loopback, stopped when dropped.
struct S3 {
    child: Child,
    addr: SocketAddr,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(code).args(args).output().expect("python3");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn has_module(m: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {m}")]).status().is_ok_and(|s| s.success())
}

/// Starts moto's server with a bucket, or `None` (printed) when moto is not installed.
fn s3() -> Option<S3> {
    if !has_module("moto.server") || !has_module("boto3") {
        eprintln!(
            "SKIPPED part: python3 module moto[server] is not installed (tests/run.sh installs it); the archive goes to a local directory"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let s3 = S3 { child, addr };
    wait_for("moto's S3 server", Duration::from_secs(30), || TcpStream::connect(addr).ok());
    python(&format!("{BOTO}\ns3.create_bucket(Bucket=sys.argv[2])"), &[&endpoint(addr), BUCKET]);
    Some(s3)
}

fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A boto3 client for the endpoint in `sys.argv[1]`.
const BOTO: &str = "import sys, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
                    aws_access_key_id='test', aws_secret_access_key='test')";

/// Writes a generated trace that ended nine days ago into a store at `data_dir`, as ingest
/// would; returns how many results.
fn old_store(data_dir: &Path) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut trace =
            blockwatch_sim::generate(&blockwatch_sim::Params::new(blockwatch_sim::Family::Curfew, 1200, 3, 9));
        let nine_days_ago = blockwatch_proto::time::now() - 9 * 86_400_000;
        trace = trace.shifted(nine_days_ago - trace.end, "");
        let store = blockwatch_collector::store::Store::open(data_dir).unwrap();
        let recs: Vec<_> = trace.records.iter().zip(trace.trace_records()).collect();
        for batch in recs.chunks(50) {
            let received = batch.iter().map(|(r, _)| r.received_at).max().unwrap();
            store.write_results(batch.iter().map(|(_, t)| t.to_result().unwrap()).collect(), received).await.unwrap();
        }
        store.close();
        recs.len()
    })
}

#[test]
fn closed_days_are_archived_once_through_a_crash_and_read_back() {
    if !has_module("pyarrow") {
        eprintln!("SKIPPED: python3 module pyarrow is not installed (tests/run.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("collector-data");
    let n = old_store(&data_dir);
    let before = run(
        &bin("blockwatch-collector"),
        &["export", "--data-dir", data_dir.to_str().unwrap(), "--what", "results", "--format", "jsonl"],
    );
    assert!(before.status.success(), "{}", String::from_utf8_lossy(&before.stderr));
    let s3 = s3();
    let local = dir.path().join("archive");
    let archive = match &s3 {
        Some(s) => format!(
            "[archive]\nurl = \"s3://{BUCKET}/fleet\"\nevery = \"1s\"\n[archive.options]\nendpoint = \"{}\"\nallow_http = \"true\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            endpoint(s.addr)
        ),
        None => format!("[archive]\nurl = \"file://{}\"\nevery = \"1s\"\n", local.display()),
    };
    // Killed as soon as the first day holding results is written: the roll is part-way
    // through the days.
    let mut collector = CollectorProc::start_insecure(dir.path(), None, &archive);
    wait_for("the first day of results archived", Duration::from_secs(60), || {
        collector.proc.log().lines().any(|l| l.contains("archived a day") && !l.contains("rows=0")).then_some(())
    });
    collector.proc.kill9();
    let collector = CollectorProc::start_insecure(dir.path(), None, &archive);
    wait_for("the archive up to date", Duration::from_secs(120), || {
        collector.proc.log().contains("archive up to date").then_some(())
    });
    let days = |log: String| log.lines().filter(|l| l.contains("archived a day") && !l.contains("rows=0")).count();
    eprintln!(
        "days of results archived: {} before the SIGKILL, {} after the restart",
        days(collector_log(dir.path(), 1)),
        days(collector.proc.log())
    );

    // Every object, read by pyarrow: each a whole Parquet file, every result once.
    let files = dir.path().join("downloaded");
    let read = "import sys, json, os, pyarrow.parquet as pq\nrows = []\nfiles = 0\n\
                for root, _, names in os.walk(sys.argv[-1]):\n  for n in names:\n    p = os.path.join(root, n)\n    \
                if '/results/' not in p: continue\n    files += 1\n    t = pq.read_table(p)\n    \
                for r in t.to_pylist():\n      rows.append([r['seq'], r['probe_id'], r['agent_id'], r['region'], r['target'], \
                r['outcome'], round(r['started_at'].timestamp() * 1000), r['http_status'] or 0])\n\
                print(json.dumps({'files': files, 'rows': sorted(rows)}))";
    let listed = match &s3 {
        Some(s) => {
            let download = format!(
                "{BOTO}\nimport os\nfor o in s3.list_objects_v2(Bucket=sys.argv[2], Prefix='fleet/').get('Contents', []):\n  \
                 to = os.path.join(sys.argv[3], o['Key'])\n  os.makedirs(os.path.dirname(to), exist_ok=True)\n  \
                 s3.download_file(sys.argv[2], o['Key'], to)\n  print(o['Key'])"
            );
            python(&download, &[&endpoint(s.addr), BUCKET, files.to_str().unwrap()])
        }
        None => {
            std::fs::create_dir_all(&files).unwrap();
            let out = Command::new("cp").arg("-r").arg(&local).arg(files.join("fleet")).status().unwrap();
            assert!(out.success());
            String::new()
        }
    };
    assert!(!listed.contains('#'), "no staging object is left behind: {listed}");
    let got: serde_json::Value = serde_json::from_str(&python(read, &[files.to_str().unwrap()])).unwrap();
    let rows = got["rows"].as_array().unwrap();
    let mut want: Vec<serde_json::Value> = String::from_utf8(before.stdout.clone())
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let ms = blockwatch_proto::time::parse_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
            serde_json::json!([
                i + 1,
                r["probe_id"],
                r["agent_id"],
                r["region"],
                r["target"],
                r["outcome"],
                ms,
                r.get("http_status").cloned().unwrap_or(0.into())
            ])
        })
        .collect();
    want.sort_by_key(|r| r[0].as_u64());
    assert!(want.len() > n / 2, "the store holds the trace (less its re-sent duplicates)");
    assert_eq!(rows.len(), want.len(), "every result archived, none twice");
    assert_eq!(*rows, want, "pyarrow reads the store's results back");
    assert!(got["files"].as_u64().unwrap() > 3, "{got}");

    // The API's export reads the archived days from the archive: the same bytes.
    let (status, body) = http_get(collector.api, "/v1/export?what=results&format=jsonl");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_bytes(), before.stdout.as_slice(), "the export through the archive is the store's");
}
