//! What people and charts read: `/v1/status`, `/v1/blocks`, `/v1/timeline`, filtered
//! `/v1/results`, and the dashboard itself, loaded in a real headless Chromium (Debian's
//! `chromium`) while the collector holds a detected block.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use blockwatch_tests::session::{stream_all, wave};
use blockwatch_tests::*;

/// `GET path`: (status, headers lower-cased, body) of an answer with a length.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(|v| v.trim().to_string()))
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn start() -> (tempfile::TempDir, CollectorProc) {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "");
    let mut all = wave("openai", &["hk", "cn"], &["us", "de"]);
    // The same regions' other agents probe anthropic, which answers everywhere.
    for (agent, (region, mut results)) in wave("anthropic", &[], &["hk", "cn", "us", "de"]) {
        let id = format!("{agent}-b");
        for (i, r) in results.iter_mut().enumerate() {
            r.agent_id = id.clone();
            r.probe_id = format!("{id}/1/{}", i + 1);
        }
        all.insert(id, (region, results));
    }
    stream_all(collector.addr, all);
    wait_for("two blocks", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, "/v1/status");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["counts"]["blocked"] == 2).then_some(())
    });
    (dir, collector)
}

#[test]
fn status_blocks_timeline_and_filtered_results() {
    let (_dir, collector) = start();
    let api = collector.api;
    let s = json(api, "/v1/status");
    assert_eq!(s["counts"]["reachable"], 6, "{s}");
    let cell = |t: &str, r: &str| {
        s["cells"].as_array().unwrap().iter().find(|c| c["target"] == t && c["region"] == r).cloned().unwrap()
    };
    let hk = cell("openai", "hk");
    assert_eq!(hk["state"], "blocked");
    assert_eq!(hk["block"]["signature"], "geo");
    assert_eq!(hk["latest"]["outcome"], "http_geo_blocked");
    assert!(hk["since"].is_string());
    assert_eq!(cell("openai", "us")["state"], "reachable");
    assert_eq!(json(api, "/v1/status?state=blocked&target=openai")["cells"].as_array().unwrap().len(), 2);

    // Blocks: open, with their evidence; paged.
    let b = json(api, "/v1/blocks");
    let blocks = b["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2, "{b}");
    for x in blocks {
        assert_eq!((x["target"].as_str(), x["end"].as_str()), (Some("openai"), None), "{x}");
        assert_eq!(x["signature"], "geo");
        assert!(!x["agents"].as_array().unwrap().is_empty(), "{x}");
        assert!(x["duration_seconds"].as_f64().unwrap() > 0.0);
    }
    let hk_block = blocks.iter().find(|x| x["region"] == "hk").unwrap();
    assert_eq!(hk_block["id"], hk["block"]["seq"], "the status names the block's id");
    let page = json(api, "/v1/blocks?limit=1");
    assert_eq!(page["blocks"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_u64().unwrap();
    let rest = json(api, &format!("/v1/blocks?after={next}"));
    assert_eq!(rest["blocks"].as_array().unwrap().len(), 1);
    assert!(rest.get("next_after").is_none());
    assert_eq!(json(api, "/v1/blocks?region=us")["blocks"].as_array().unwrap().len(), 0);
    assert_eq!(json(api, "/v1/blocks?open=false")["blocks"].as_array().unwrap().len(), 0);

    // Timeline: every probe counted once, by region and outcome.
    let now = blockwatch_proto::time::now();
    let from = blockwatch_proto::time::format_rfc3339(now - 2 * 3_600_000);
    let tl = json(api, &format!("/v1/timeline?target=openai&from={from}&step=15m"));
    let regions = tl["regions"].as_object().unwrap();
    assert_eq!(regions.keys().collect::<Vec<_>>(), ["cn", "de", "hk", "us"]);
    let sum = |r: &str, outcome: &str| -> u64 {
        regions[r].as_array().unwrap().iter().map(|b| b["outcomes"][outcome].as_u64().unwrap_or(0)).sum()
    };
    assert_eq!((sum("hk", "ok"), sum("hk", "http_geo_blocked")), (80, 40), "{tl}");
    assert_eq!(sum("us", "ok"), 120);
    let one = json(api, &format!("/v1/timeline?target=openai&region=hk&from={from}&step=1h"));
    assert_eq!(one["regions"].as_object().unwrap().len(), 1);

    // Results of one cell, in time order, paged by cursor; by agent.
    let mut got = Vec::new();
    let mut path = "/v1/results?target=openai&region=hk&limit=50".to_string();
    loop {
        let (status, head, body) = get(api, &path);
        assert_eq!(status, 200, "{body}");
        got.extend(body.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
        match header(&head, "x-next-cursor") {
            Some(c) => path = format!("/v1/results?target=openai&region=hk&limit=50&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(got.len(), 120);
    assert!(got.iter().all(|r| r["region"] == "hk" && r["target"] == "openai"));
    let times: Vec<&str> = got.iter().map(|r| r["started_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    let (_, _, body) = get(api, "/v1/results?target=openai&region=hk&agent=hk-1&limit=1000");
    assert_eq!(body.lines().count(), 60);
    let (_, _, body) = get(api, "/v1/results?agent=us-2&limit=1000");
    assert_eq!(body.lines().count(), 60, "an agent's results without a target: a scan");

    // A typo or a bad value is a 400 that names it, as JSON.
    for (path, want) in [
        ("/v1/events?kind=block_start", "kind=block_start"),
        ("/v1/status?state=blok", "state=\\\"blok\\\""),
        ("/v1/blocks?from=yesterday", "from=\\\"yesterday\\\""),
        ("/v1/timeline?target=openai&step=0s", "step="),
        ("/v1/results?target=Bad%20Target", "target="),
        ("/v1/results?target=openai&cursor=zzz", "cursor="),
        ("/v1/status?colour=red", "unknown field"),
    ] {
        let (status, body) = http_get(api, path);
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(v["error"].is_string() && body.contains(want), "{path}: {body}");
    }
}

#[test]
fn the_dashboard_shows_the_block_in_a_real_browser() {
    let (dir, collector) = start();
    let (status, head, page) = get(collector.api, "/");
    assert_eq!(status, 200);
    assert!(header(&head, "content-security-policy").is_some_and(|c| c.contains("default-src 'self'")), "{head}");
    assert!(
        page.contains("<script src=\"/dashboard.js\">") && !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED: chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    let url = format!("http://{}/", collector.api);
    let profile = dir.path().join("chromium-profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1440,1000",
        "--virtual-time-budget=15000",
    ];
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let dom = std::process::Command::new(chromium)
        .args(common)
        .arg(&profile_arg)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("data-ready=\"1\""), "the page finished loading:\n{dom}");
    for (t, r, st) in [("openai", "hk", "blocked"), ("openai", "cn", "blocked"), ("openai", "us", "reachable")] {
        let cell = format!("class=\"{st}\" title=\"{t} in {r}: {st}");
        assert!(dom.contains(&cell), "{cell}:\n{dom}");
    }
    assert!(dom.contains("2 blocked"), "the count in the header");
    assert!(dom.contains("class=\"tl-band block\""), "the timeline has the blocks");
    assert!(dom.contains("block_started"), "the event feed");
    assert!(dom.contains("data-agent=\"hk-1\""), "the agents");
    // A screenshot, kept with the test's output.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = std::process::Command::new(chromium)
        .args(common)
        .arg(&profile_arg)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "screenshot {} ({size} bytes): {}", shot.display(), String::from_utf8_lossy(&out.stderr));
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[test]
fn the_api_describes_itself_and_an_independent_fuzzer_holds_it_to_that() {
    let (dir, collector) = start();
    let doc = json(collector.api, "/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in ["/v1/status", "/v1/blocks", "/v1/timeline", "/v1/results", "/v1/events", "/v1/agents", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }
    let ok = std::process::Command::new("schemathesis").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: schemathesis is not installed (tests/run.sh installs it from PyPI)");
        return;
    }
    // Schemathesis (from PyPI) generates requests from the document — valid and invalid — and
    // checks every answer: no 5xx, only documented statuses and content types, bodies that
    // match their schemas.
    let url = format!("http://{}/openapi.json", collector.api);
    let out = std::process::Command::new("schemathesis")
        .current_dir(dir.path())
        .args([
            "run",
            &url,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "10",
            "--workers",
            "1",
            "--seed",
            "1",
            "--max-time",
            "30",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found faults:\n{said}");
    let described = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum::<usize>();
    assert!(
        said.contains(&format!("Tested: {described}")),
        "every one of the {described} operations was exercised:\n{said}"
    );
}
