//! End to end: real collector and agent processes on loopback, a simulated provider with a
//! real certificate, results stored once, surviving restarts, and coming out of `export`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use blockwatch_tests::provider::Provider;
use blockwatch_tests::*;

fn agent_toml(id: &str, region: &str, collector: SocketAddr, provider: &Provider, dir: &Path, source: &str) -> String {
    format!(
        r#"
agent_id = "{id}"
region = "{region}"
{uplink}interval = "1s"
timeout = "900ms"
source_address = "{source}"
spool_dir = "{spool}"
ca_file = "{ca}"
[confirm]
count = 0
[[target]]
id = "openai"
url = "{url}"
provider = "openai"
local = true
"#,
        uplink = uplink(dir, collector, id, region),
        spool = dir.join(format!("spool-{id}")).display(),
        ca = provider.ca_file.display(),
        url = provider.url(),
    )
}

/// Every agent's sequence numbers must be exactly 1..=n: nothing lost, nothing twice.
fn assert_contiguous(seqs: &[u64], agent: &str) {
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want.as_slice(), "agent {agent}: results missing or duplicated");
}

#[test]
fn results_are_stored_once_survive_restart_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let mut collector = CollectorProc::start(dir.path(), None, "");
    let mut agent =
        start_agent(dir.path(), "eu-1", &agent_toml("eu-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2"));

    wait_for("agent to register", Duration::from_secs(20), || {
        collector.proc.log().contains("agent registered").then_some(())
    });
    wait_for("two results to be stored", Duration::from_secs(20), || (stored(collector.api).len() >= 2).then_some(()));
    assert_eq!(collector.proc.terminate(), Some(0), "collector log:\n{}", collector.proc.log());
    let first = export(&collector.data_dir);
    assert!(first.len() >= 2, "only {} results exported after the API showed two", first.len());
    assert!(
        first.iter().filter(|r| !r.control).all(|r| r.outcome == "ok" && r.http_status == 401 && r.region == "eu"),
        "{first:?}"
    );

    // While the collector is down the agent keeps probing into its spool.
    let src = "127.0.0.2".parse().unwrap();
    let before = provider.requests_from(src);
    wait_for("two probes during the outage", Duration::from_secs(20), || {
        (provider.requests_from(src) >= before + 2).then_some(())
    });
    let mut collector = CollectorProc::start(dir.path(), Some(collector.addr.port()), "");
    wait_for("agent to re-register", Duration::from_secs(40), || {
        collector.proc.log().contains("agent registered").then_some(())
    });
    wait_for("three more results to be stored", Duration::from_secs(20), || {
        (stored(collector.api).len() >= first.len() + 3).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    assert_eq!(collector.proc.terminate(), Some(0));

    let all = export(&collector.data_dir);
    let seqs = seqs_by_agent(&all);
    assert_contiguous(&seqs["eu-1"], "eu-1");
    assert!(all.len() >= first.len() + 3, "{} then {}", first.len(), all.len());
    for r in &first {
        assert!(all.iter().any(|a| a.probe_id == r.probe_id), "{} lost across restart", r.probe_id);
    }
    // The export replays.
    let trace = dir.path().join("export.jsonl");
    let mut f = std::fs::File::create(&trace).unwrap();
    for r in &all {
        writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
    }
    let out = run(&bin("blockwatch-collector"), &["replay", "--input", trace.to_str().unwrap(), "--output", "-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn agent_spools_while_the_collector_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    // The agent starts against a collector that is not up yet, so its port is chosen before
    // any process exists; the collector comes up on it later.
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    fleet_ca(dir.path());
    let mut agent =
        start_agent(dir.path(), "hk-1", &agent_toml("hk-1", "hk", addr, &provider, dir.path(), "127.0.0.3"));
    wait_for("agent to report the collector down", Duration::from_secs(20), || {
        agent.log().contains("cannot reach collector").then_some(())
    });
    // It keeps probing into its spool.
    let src = "127.0.0.3".parse().unwrap();
    wait_for("three probes with the collector down", Duration::from_secs(20), || {
        (provider.requests_from(src) >= 3).then_some(())
    });
    assert!(agent.child.try_wait().unwrap().is_none(), "agent exited:\n{}", agent.log());
    assert!(!agent.log().contains("panicked"));

    let mut collector = CollectorProc::start(dir.path(), Some(port), "");
    wait_for("agent to register", Duration::from_secs(40), || {
        collector.proc.log().contains("agent registered").then_some(())
    });
    wait_for("the spooled results to be stored", Duration::from_secs(20), || {
        (stored_seqs(collector.api, "hk-1").len() >= 3).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(collector.proc.terminate(), Some(0));
    let all = export(&collector.data_dir);
    let seqs = seqs_by_agent(&all);
    assert!(seqs["hk-1"].len() >= 3, "{seqs:?}");
    assert_contiguous(&seqs["hk-1"], "hk-1");
}

#[test]
fn bad_configs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let case = |binary: &str, args: &[&str], body: Option<&str>, want: &str| {
        let path = dir.path().join("bad.toml");
        if let Some(b) = body {
            std::fs::write(&path, b).unwrap();
        }
        let mut argv: Vec<&str> = args.to_vec();
        argv.push(path.to_str().unwrap());
        let out = run(&bin(binary), &argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} accepted {body:?}");
        assert!(err.contains(want), "{binary}: wanted {want:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let _ = std::fs::remove_file(&path);
    };
    case("blockwatch-collector", &["serve", "--config"], Some("lisen = \"127.0.0.1:1\""), "lisen");
    case("blockwatch-collector", &["serve", "--config"], Some("max_batch = 0"), "max_batch");
    case("blockwatch-collector", &["serve", "--config"], None, "cannot read config");
    case(
        "blockwatch-agent",
        &["run", "--config"],
        Some("region = \"x\"\ncollector = \"http://127.0.0.1:1\""),
        "agent_id",
    );
    case(
        "blockwatch-agent",
        &["run", "--config"],
        Some(
            "agent_id = \"a\"\nregion = \"r\"\ncollector = \"grpc://x\"\n[[target]]\nid = \"t\"\nurl = \"http://plain\"",
        ),
        "collector \"grpc://x\": must be an http:// or https:// URL; target[0] \"t\": url \"http://plain\": must start with https://",
    );
    case(
        "blockwatch-agent",
        &["check-config", "--config"],
        Some("agent_id = \"a\"\nregion = \"r\"\ncollector = \"http://x\"\ninterval = \"soon\""),
        "interval",
    );
}

#[test]
fn replay_and_export_name_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"probe_id\":\"a/1\",\"agent_id\":\"a\",\"region\":\"r\",\"target\":\"t\",\"started_at\":\"2024-07-24T00:41:10.309Z\",\"outcome\":\"ok\"}\nnot json\n",
    )
    .unwrap();
    let out = run(&bin("blockwatch-collector"), &["replay", "--input", trace.to_str().unwrap(), "--output", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 2"), "{err}");

    let out = run(&bin("blockwatch-collector"), &["export", "--data-dir", dir.path().join("nope").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no store at"), "{err}");
}
