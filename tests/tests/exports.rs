//! Exports for researchers: results, blocks and events as JSONL, CSV and Parquet, through the
//! API while the collector runs and through the CLI into a Hive-style tree — read back by
//! independent readers: Python's `csv`, pyarrow, DuckDB (from PyPI, installed by the test
//! script).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use blockwatch_tests::session::{stream_all, wave};
use blockwatch_tests::*;

fn get_bytes(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = &raw[split + 4..];
    // Streamed: de-chunk.
    let mut out = Vec::new();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        loop {
            let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&body[line_end + 2..line_end + 2 + n]);
            body = &body[line_end + 2 + n + 2..];
        }
    } else {
        out = body.to_vec();
    }
    (status, out)
}

/// Runs a Python snippet with `args`; its stdout, or `None` when a module it imports is missing.
fn python(code: &str, args: &[&str], modules: &[&str]) -> Option<String> {
    python_in("", code, args, modules)
}

/// As [`python`], with `path` (a directory of packages, or empty) on `PYTHONPATH`.
fn python_in(path: &str, code: &str, args: &[&str], modules: &[&str]) -> Option<String> {
    let python3 = || {
        let mut c = std::process::Command::new("python3");
        c.env("PYTHONPATH", path);
        c
    };
    for m in modules {
        let ok = python3().args(["-c", &format!("import {m}")]).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED part: python3 module {m} is not installed (tests/run.sh installs it)");
            return None;
        }
    }
    let out = python3().arg("-c").arg(code).args(args).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The rows of a CSV file as Python's `csv` module reads them, by header.
fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let code = "import csv, json, sys\nprint(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='')))))";
    serde_json::from_str(&python(code, &[path.to_str().unwrap()], &[]).unwrap()).unwrap()
}

fn start(dir: &Path) -> CollectorProc {
    let collector = CollectorProc::start_insecure(dir, None, "");
    let mut agents = wave("openai", &["hk", "cn"], &["us", "de"]);
    for (_, results) in agents.values_mut() {
        results.iter_mut().for_each(|r| r.provider = "openai".into());
    }
    stream_all(collector.addr, agents);
    wait_for("two blocks", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, "/v1/status");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["counts"]["blocked"] == 2).then_some(())
    });
    collector
}

#[test]
fn results_and_blocks_come_out_in_every_format_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = start(dir.path());
    let api = collector.api;
    // JSONL through the export is the trace format: the same as /v1/results.
    let (status, jsonl) = get_bytes(api, "/v1/export?what=results");
    assert_eq!(status, 200);
    let (_, plain) = http_get(api, "/v1/results");
    assert_eq!(String::from_utf8(jsonl.clone()).unwrap(), plain);
    let records: Vec<serde_json::Value> = plain.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 480);
    let by_id: BTreeMap<&str, &serde_json::Value> =
        records.iter().map(|r| (r["probe_id"].as_str().unwrap(), r)).collect();

    // CSV, read by Python's csv module: a header, every row, the same values.
    let (status, csv) = get_bytes(api, "/v1/export?what=results&format=csv");
    assert_eq!(status, 200);
    let csv_path = dir.path().join("results.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let rows = csv_rows(&csv_path);
    assert_eq!(rows.len(), 480);
    for row in &rows {
        let r = by_id[row["probe_id"].as_str()];
        assert_eq!(row["outcome"], r["outcome"].as_str().unwrap());
        assert_eq!(row["started_at"], r["started_at"].as_str().unwrap());
        // No HTTP answer: no status (empty), not 0.
        let status = r["http_status"].as_u64().filter(|s| *s != 0).map(|s| s.to_string()).unwrap_or_default();
        assert_eq!(row["http_status"], status, "{row:?}");
        assert_eq!(row["region"], r["region"].as_str().unwrap());
    }

    // Parquet, read by pyarrow: real types, the same rows.
    let (status, pq) = get_bytes(api, "/v1/export?what=results&format=parquet");
    assert_eq!(status, 200);
    let pq_path = dir.path().join("results.parquet");
    std::fs::write(&pq_path, &pq).unwrap();
    let code = "import pyarrow.parquet as pq, json, sys\nt = pq.read_table(sys.argv[1])\n\
        print(json.dumps({'types': {f.name: str(f.type) for f in t.schema}, 'rows': [\
        {'probe_id': r['probe_id'], 'outcome': r['outcome'], 'http_status': r['http_status'], \
        'started_at': r['started_at'].isoformat(timespec='milliseconds'), 'ttfb_ms': r['ttfb_ms']} for r in t.to_pylist()]}))";
    if let Some(out) = python(code, &[pq_path.to_str().unwrap()], &["pyarrow"]) {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["types"]["started_at"], "timestamp[ms, tz=UTC]", "{}", v["types"]);
        assert_eq!(v["types"]["target"], "dictionary<values=string, indices=int32, ordered=0>");
        assert_eq!(v["types"]["http_status"], "uint32");
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 480);
        for row in rows {
            let r = by_id[row["probe_id"].as_str().unwrap()];
            assert_eq!(row["outcome"], r["outcome"]);
            let status = r["http_status"].as_u64().filter(|s| *s != 0);
            assert_eq!(row["http_status"].as_u64(), status, "{row}");
            assert!(row["ttfb_ms"].is_null(), "no HTTP phase in these results: null, not 0");
            let started = r["started_at"].as_str().unwrap().replace('Z', "+00:00");
            assert_eq!(row["started_at"].as_str().unwrap(), started);
        }
    }

    // Blocks: one row each, with the regions fine at the onset.
    let (_, blocks_csv) = get_bytes(api, "/v1/export?what=blocks&format=csv");
    let blocks_path = dir.path().join("blocks.csv");
    std::fs::write(&blocks_path, &blocks_csv).unwrap();
    let blocks = csv_rows(&blocks_path);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    for b in &blocks {
        assert_eq!((b["kind"].as_str(), b["target"].as_str(), b["signature"].as_str()), ("block", "openai", "geo"));
        assert_eq!(b["regions_fine"], "de us", "{b:?}");
        assert_eq!(b["end"], "", "still open");
        assert!(b["summary"].contains(',') || b["summary"].contains('"'), "quoting survives: {}", b["summary"]);
        assert_eq!(b["dominant_outcome"], "http_geo_blocked");
        assert_eq!(b["provider"], "openai");
    }
    // Events as JSONL objects.
    let (_, events) = get_bytes(api, "/v1/export?what=events&format=jsonl");
    let events: Vec<serde_json::Value> =
        String::from_utf8(events).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().filter(|e| e["kind"] == "block_started").count() == 2, "{events:?}");

    // Filters are exact at the edges: from is in, to is out.
    let mut times: Vec<&str> =
        records.iter().filter(|r| r["agent_id"] == "hk-1").map(|r| r["started_at"].as_str().unwrap()).collect();
    times.sort();
    let (a, b) = (times[10], times[20]);
    let (_, cut) = get_bytes(api, &format!("/v1/export?what=results&target=openai&region=hk&from={a}&to={b}"));
    let cut: Vec<serde_json::Value> =
        String::from_utf8(cut).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let want = records
        .iter()
        .filter(|r| {
            r["region"] == "hk" && r["started_at"].as_str().unwrap() >= a && r["started_at"].as_str().unwrap() < b
        })
        .count();
    assert_eq!(cut.len(), want);
    assert!(cut.iter().any(|r| r["started_at"] == a) && !cut.iter().any(|r| r["started_at"] == b));
    let (status, body) = get_bytes(api, "/v1/export?what=blocks&format=xlsx");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = get_bytes(api, "/v1/export?what=results&from=yesterday");
    assert_eq!(status, 400);

    // A partitioned tree from the CLI, once the collector has stopped, read by DuckDB as one table.
    assert_eq!(collector.proc.terminate(), Some(0));
    let tree = dir.path().join("tree");
    let data = collector.data_dir.to_str().unwrap().to_string();
    for what in ["results", "blocks"] {
        let out = run(
            &bin("blockwatch-collector"),
            &[
                "export",
                "--data-dir",
                &data,
                "--what",
                what,
                "--format",
                "parquet",
                "--partition-by",
                "date,target,region",
                "--output",
                tree.join(what).to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let region_dirs: Vec<String> =
        walk(&tree.join("results")).into_iter().filter(|p| p.ends_with(".parquet")).collect();
    assert!(
        region_dirs.iter().all(|p| p.contains("/date=") && p.contains("/target=openai/region=")),
        "{region_dirs:?}"
    );
    let code = "import duckdb, json, sys\nq = lambda s: duckdb.sql(s).fetchall()\n\
        r = q(f\"select region, count(*), sum(case when outcome = 'http_geo_blocked' then 1 else 0 end) from read_parquet('{sys.argv[1]}/results/**/*.parquet', hive_partitioning = true) group by region order by region\")\n\
        b = q(f\"select region, date, count(*) from read_parquet('{sys.argv[1]}/blocks/**/*.parquet', hive_partitioning = true) where kind = 'block' group by region, date order by region\")\n\
        print(json.dumps({'results': [list(x) for x in r], 'blocks': [[x[0], str(x[1]), x[2]] for x in b]}))";
    if let Some(out) = python(code, &[tree.to_str().unwrap()], &["duckdb"]) {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["results"], serde_json::json!([["cn", 120, 40], ["de", 120, 0], ["hk", 120, 40], ["us", 120, 0]]));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.iter().map(|b| b[0].as_str().unwrap()).collect::<Vec<_>>(), ["cn", "hk"], "{blocks:?}");
    }

    // Replay reads what was exported: the JSONL, the Parquet file and the tree give the same
    // events, the two blocks among them.
    let jsonl_path = dir.path().join("results.jsonl");
    std::fs::write(&jsonl_path, &jsonl).unwrap();
    let replay = |input: &Path| {
        let out = run(&bin("blockwatch-collector"), &["replay", "--input", input.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", input.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let from_jsonl = replay(&jsonl_path);
    assert_eq!(from_jsonl.lines().filter(|l| l.contains("\"block_started\"")).count(), 2, "{from_jsonl}");
    assert_eq!(replay(&pq_path), from_jsonl, "the Parquet export replays as its JSONL does");
    assert_eq!(replay(&tree.join("results")), from_jsonl, "the partitioned tree replays as its JSONL does");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// Results of real probes (the engine against the fault kit: a refusal, a reachable API with
/// a key, a binary answer, a reset handshake, a refused port, a name that does not exist),
/// ingested by a collector and exported as OONI measurements, load in OONI's own data tooling
/// (`oonidata` from PyPI) as `urlgetter` measurements with every failure string unchanged.
#[test]
fn ooni_measurements_load_in_oonidata_with_their_failures() {
    use blockwatch_agent::probe::Credential;
    use blockwatch_tests::faultkit::{self, Canned, DnsAnswer, TestPki, canned};
    use common::*;

    const KEY: &str = "sk-ooni-secret-4242";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = TestPki::new().unwrap();
    let results = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((LO, 0)).await.unwrap();
        let https = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, req| {
            match (req.uri().path(), req.headers().get("authorization")) {
                ("/binary", _) => Canned { status: 403, headers: vec![], body: vec![0xff, 0x00, 0x80, b'x'].into() },
                (_, Some(_)) => Canned::json(200, r#"{"object":"list","data":[]}"#),
                _ => canned::openai_geo_blocked(),
            }
        })
        .unwrap();
        let reset = faultkit::tls_reset_after_hello(LO).await.unwrap();
        let closed = faultkit::closed_port(LO).unwrap();
        let dns = faultkit::serve_dns(LO, [("api.openai.test".to_string(), DnsAnswer::Addresses(vec![LO]))].into())
            .await
            .unwrap();
        let eng = engine(&pki, vec![dns.addr()]);
        let mut keyed = spec(https.url("127.0.0.1", "/v1/models"), local_openai(), QUICK);
        keyed.credential = Some(Credential::new(KEY).unwrap());
        let specs = [
            spec(https.url("api.openai.test", "/v1/models"), provider("openai"), QUICK),
            keyed,
            spec(https.url("127.0.0.1", "/binary"), provider("openai"), QUICK),
            spec(reset.url("127.0.0.1", "/v1/models"), provider("openai"), QUICK),
            spec(format!("https://{closed}/v1/models"), provider("openai"), QUICK),
            spec("https://missing.test/v1/models".into(), provider("openai"), QUICK),
        ];
        let t0 = blockwatch_proto::time::now() - 60_000;
        let mut out = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let rep = eng.probe(s).await;
            let mut r =
                blockwatch_tests::session::result("hk-1", "hk", i as u64 + 1, "openai", t0 + i as i64, rep.outcome);
            rep.fill(&mut r);
            if i == 0 {
                (r.egress_asn, r.egress_as_org, r.egress_country) = (64500, "Example Net".into(), "HK".into());
            }
            out.push(r);
        }
        out
    });
    let failures: Vec<&str> = results.iter().map(|r| r.failure.as_str()).collect();
    assert_eq!(
        failures,
        [
            "http_request_failed",
            "",
            "http_request_failed",
            "connection_reset",
            "connection_refused",
            "dns_nxdomain_error"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "");
    stream_all(collector.addr, [("hk-1".to_string(), ("hk".to_string(), results))].into());
    wait_for("six results", Duration::from_secs(20), || {
        let (_, body) = http_get(collector.api, "/v1/results");
        (body.lines().count() == 6).then_some(())
    });
    let (_, plain) = http_get(collector.api, "/v1/results");
    let records: BTreeMap<String, serde_json::Value> = plain
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["probe_id"].as_str().unwrap().to_string(), v))
        .collect();
    let (status, body) = get_bytes(collector.api, "/v1/export?what=results&format=ooni");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains(KEY) && !text.to_ascii_lowercase().contains("authorization"), "no credential, ever");
    let raw: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(raw.len(), 6);
    let (status, _) = get_bytes(collector.api, "/v1/export?what=blocks&format=ooni");
    assert_eq!(status, 400, "OONI measurements are results");

    let path = dir.path().join("ooni.jsonl");
    std::fs::write(&path, &text).unwrap();
    let code = r#"
import json, sys
from oonidata.dataclient import load_measurement
from oonidata.models.nettests import UrlGetter
out = []
for line in open(sys.argv[1]):
    m = load_measurement(msmt=json.loads(line))
    assert isinstance(m, UrlGetter), type(m)
    tk = m.test_keys
    out.append({
        "uid": m.measurement_uid, "asn": m.probe_asn, "cc": m.probe_cc, "input": m.input,
        "start": m.measurement_start_time, "failure": tk.failure, "failed_operation": tk.failed_operation,
        "queries": [[q.query_type, q.failure, [a.ipv4 or a.ipv6 or a.hostname for a in (q.answers or [])]] for q in (tk.queries or [])],
        "tcp": [[c.ip, c.port, c.status.success, c.status.failure] for c in (tk.tcp_connect or [])],
        "tls": [[t.failure, t.tls_version, t.server_name] for t in (tk.tls_handshakes or [])],
        "http": [[h.failure, h.response.code, (h.response.body_bytes or b"").hex(), [list(x) for x in (h.request.headers_list_str or [])]] for h in (tk.requests or [])],
    })
print(json.dumps(out))
"#;
    // oonidata goes in a directory of its own (tests/run.sh: it pins old dependencies).
    let ooni_path = std::env::var("BLOCKWATCH_OONIDATA_PATH").unwrap_or_default();
    let Some(loaded) = python_in(&ooni_path, code, &[path.to_str().unwrap()], &["oonidata.dataclient"]) else {
        return;
    };
    let loaded: Vec<serde_json::Value> = serde_json::from_str(&loaded).unwrap();
    assert_eq!(loaded.len(), 6);
    for (m, raw) in loaded.iter().zip(&raw) {
        let rec = &records[raw["test_keys"]["x_probe_id"].as_str().unwrap()];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        assert_eq!(m["uid"], raw["measurement_uid"]);
        assert_eq!(s(&m["failure"]), s(&rec["failure"]), "{m}");
        assert_eq!(s(&m["failed_operation"]), s(&rec["failed_operation"]), "{m}");
        assert_eq!(s(&m["input"]), s(&rec["url"]));
        let op = s(&rec["failed_operation"]);
        let failure = s(&rec["failure"]);
        // The failure is where it happened, and nowhere else.
        let tls_failure = m["tls"].get(0).map(|t| s(&t[0]));
        let http_failure = m["http"].get(0).map(|h| s(&h[0]));
        match op.as_str() {
            "resolve" => {
                let q: Vec<String> = m["queries"].as_array().unwrap().iter().map(|q| s(&q[1])).collect();
                assert_eq!(q, [failure.clone(), failure.clone()], "{m}");
                assert!(m["tcp"].as_array().unwrap().is_empty());
            }
            "connect" => {
                assert_eq!(m["tcp"][0][2], false);
                assert_eq!(s(&m["tcp"][0][3]), failure);
                assert!(m["tls"].as_array().unwrap().is_empty());
            }
            "tls_handshake" => {
                assert_eq!(m["tcp"][0][2], true);
                assert_eq!(tls_failure.as_deref(), Some(failure.as_str()));
                assert!(m["http"].as_array().unwrap().is_empty());
            }
            "http_round_trip" => {
                assert_eq!(
                    (tls_failure.as_deref(), http_failure.as_deref()),
                    (Some(""), Some(failure.as_str())),
                    "{m}"
                );
                assert_eq!(m["http"][0][1], rec["http_status"]);
            }
            _ => {
                assert_eq!(failure, "");
                assert_eq!(m["http"][0][1], 200);
                let sent: Vec<&str> =
                    m["http"][0][3].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap()).collect();
                assert!(sent.contains(&"user-agent") && !sent.contains(&"authorization"), "{sent:?}");
            }
        }
    }
    // The name that resolved: both query types, the A record; the network from the result.
    let first = &loaded[0];
    assert_eq!(first["queries"], serde_json::json!([["AAAA", "dns_no_answer", []], ["A", null, ["127.0.0.1"]]]));
    assert_eq!((first["asn"].as_str(), first["cc"].as_str()), (Some("AS64500"), Some("HK")));
    assert_eq!(first["tls"][0][1], "TLSv1.3");
    assert_eq!(first["tls"][0][2], "api.openai.test");
    assert_eq!((loaded[1]["asn"].as_str(), loaded[1]["cc"].as_str()), (Some("AS0"), Some("ZZ")));
    // The binary body comes back byte for byte.
    assert_eq!(loaded[2]["http"][0][2], "ff008078");
}
