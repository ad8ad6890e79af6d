//! `/metrics` on both binaries, scraped by a real Prometheus (Debian's `prometheus`, started
//! on a free loopback port with a generated config), checked by `promtool check metrics`.

use std::path::Path;
use std::time::Duration;

use blockwatch_tests::provider::Provider;
use blockwatch_tests::session::{stream_all, wave};
use blockwatch_tests::*;

fn http_text(addr: std::net::SocketAddr, path: &str) -> String {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// `promtool check metrics` on `text`: its verdict (stdout and stderr), `None` when no promtool.
fn promtool(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let exe = ["/usr/bin/promtool"].into_iter().find(|p| Path::new(p).exists())?;
    let mut child = std::process::Command::new(exe)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}

fn query(prom: std::net::SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let encoded: String = q
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    if !listening(prom) {
        return Vec::new();
    }
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={encoded}"));
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn prometheus_scrapes_the_collector_and_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    // A webhook sink, so the alerting series exist.
    let hook = blockwatch_tests::receiver::Receiver::start();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec-metrics-test").unwrap();
    let sink = format!(
        "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = {:?}\ngroup_window = \"0s\"\n",
        hook.url("/"),
        secret.display().to_string()
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &sink);
    let agent_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "metrics_listen = \"{agent_metrics}\"\n{}",
        agent_toml("eu-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2", 2)
    );
    let _agent = start_agent(dir.path(), "eu-1", &config);
    // A block, from results streamed in; and a result refused for its target id.
    stream_all(collector.addr, wave("openai", &["hk", "cn"], &["us"]));
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = blockwatch_tests::session::plain_client(collector.addr).await;
        let mut s = blockwatch_tests::session::Session::open(client, "zz-1", "zz").await.unwrap();
        let now = blockwatch_proto::time::now();
        let bad = blockwatch_tests::session::result("zz-1", "zz", 1, "no spaces", now, blockwatch_proto::Outcome::Ok);
        let answer = s.send(vec![bad]).await;
        assert_eq!(answer.refused.len(), 1, "{}", answer.reason);
    });
    wait_for("the blocks", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, "/v1/status?state=blocked");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["counts"]["blocked"] == 2).then_some(())
    });
    let agent_text = wait_for("the agent's probes counted", Duration::from_secs(30), || {
        if !listening(agent_metrics) {
            return None;
        }
        let (status, body) = http_get(agent_metrics, "/metrics");
        (status == 200 && body.contains("blockwatch_agent_probes_total{outcome=\"ok\",target=\"t0\"}")).then_some(body)
    });
    for want in [
        "blockwatch_agent_probe_phase_seconds_bucket{phase=\"tls\",target=\"t0\"",
        "blockwatch_agent_uplink_connected 1",
        "blockwatch_agent_spool_pending ",
        "blockwatch_agent_info{agent_id=\"eu-1\",region=\"eu\"",
    ] {
        assert!(agent_text.contains(want), "{want}:\n{agent_text}");
    }
    let text = http_text(collector.api, "/metrics");
    for want in [
        "blockwatch_cell_state{region=\"hk\",state=\"blocked\",target=\"openai\"} 1",
        "blockwatch_cell_state{region=\"us\",state=\"reachable\",target=\"openai\"} 1",
        "blockwatch_cells{state=\"blocked\"} 2",
        "blockwatch_results_ingested_total{outcome=\"http_geo_blocked\"}",
        "blockwatch_events_total{kind=\"block_started\"} 2",
        "blockwatch_agents{state=\"connected\"}",
        "blockwatch_ingest_durable_seconds_bucket",
        "blockwatch_store_bytes ",
        "blockwatch_detector_lag_seconds ",
        "blockwatch_results_rejected_total{reason=\"target_id\"} 1",
        "blockwatch_alert_delivered_total{sink=\"hook\"}",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    let (status, _) = http_get(agent_metrics, "/other");
    assert_eq!(status, 404);

    let Some((ok, said)) = promtool(&text) else {
        eprintln!("SKIPPED: promtool and prometheus are not installed (tests/run.sh installs Debian's prometheus)");
        return;
    };
    assert!(ok, "collector: {said}");
    let (ok, said) = promtool(&agent_text).unwrap();
    assert!(ok, "agent: {said}");

    // A real Prometheus scraping both.
    let prom_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: collector\n    static_configs:\n      - targets: ['{}']\n  - job_name: agent\n    static_configs:\n      - targets: ['{agent_metrics}']\n",
            collector.api
        ),
    )
    .unwrap();
    let args = [
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        format!("--web.listen-address={prom_addr}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _prom = Proc::start(Path::new("/usr/bin/prometheus"), &args, dir.path().join("prometheus.log"));
    let blocked = wait_for("Prometheus to see the blocks", Duration::from_secs(60), || {
        let r = query(prom_addr, "blockwatch_cell_state{state=\"blocked\"} == 1");
        (r.len() == 2).then_some(r)
    });
    let mut regions: Vec<&str> = blocked.iter().map(|r| r["metric"]["region"].as_str().unwrap()).collect();
    regions.sort();
    assert_eq!(regions, ["cn", "hk"]);
    let probes = wait_for("Prometheus to see the agent's probes", Duration::from_secs(60), || {
        let r = query(prom_addr, "sum(blockwatch_agent_probes_total{job=\"agent\"})");
        r.first().and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok()).filter(|n| *n > 0.0)
    });
    assert!(probes > 0.0);
    let up = query(prom_addr, "up");
    assert!(up.iter().all(|r| r["value"][1] == "1"), "{up:?}");

    // The shipped Grafana dashboard asks only for what the binaries expose, in queries
    // Prometheus accepts.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana/blockwatch.json"))
            .unwrap(),
    )
    .unwrap();
    let both = format!("{text}{agent_text}");
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("blockwatch_"))
            {
                assert!(
                    both.contains(&format!("# TYPE {name} "))
                        || both.contains(&format!("\n{name}{{"))
                        || both.contains(&format!("\n{name} ")),
                    "{}: {name} is not exposed",
                    panel["title"]
                );
            }
            let encoded: String =
                expr.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b == b'_' {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
            let (status, body) = http_get(prom_addr, &format!("/api/v1/query?query={encoded}"));
            assert_eq!(status, 200, "{}: {expr}: {body}", panel["title"]);
        }
    }
}
