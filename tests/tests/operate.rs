//! Running the binaries as an operator does: `check-config` catching what `serve` / `run`
//! would fail on, health and readiness that follow real state, JSON logs, completions and man
//! pages, and the standalone simulated provider of the compose stack.

use std::path::Path;
use std::time::Duration;

use blockwatch_demo::provider::Provider;
use blockwatch_tests::*;

fn check(bin_name: &str, config: &Path) -> (bool, String) {
    let out = run(&bin(bin_name), &["check-config", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_config_catches_what_a_start_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();

    // Collector: a good config passes and says what it will do.
    let ca = fleet_ca(dir.path());
    let good = dir.path().join("collector.toml");
    let store = dir.path().join("store");
    std::fs::write(&good, format!("data_dir = {:?}\n[tls]\nca_dir = {:?}\n", store, ca)).unwrap();
    let (ok, text) = check("blockwatch-collector", &good);
    assert!(ok, "{text}");
    assert!(text.contains("config ok") && text.contains("mutual TLS"), "{text}");

    // Each broken part is named, all at once.
    let bad = dir.path().join("collector-bad.toml");
    std::fs::write(
        &bad,
        format!(
            "listen = \"192.0.2.7:7400\"\ndata_dir = {:?}\n[tls]\nca_dir = {:?}\n",
            file.join("store"),
            dir.path().join("no-ca")
        ),
    )
    .unwrap();
    let (ok, text) = check("blockwatch-collector", &bad);
    assert!(!ok, "{text}");
    for key in ["data_dir", "listen 192.0.2.7", "tls.ca_dir"] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }

    // Agent: a missing and a non-PEM ca_file, an unusable spool_dir, a source_address that is
    // not on this host.
    let agent = |extra: &str| {
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "agent_id = \"a-1\"\nregion = \"eu\"\ncollector = \"http://127.0.0.1:7400\"\ninsecure = true\n{extra}\
                 [[target]]\nid = \"t\"\nurl = \"https://localhost:8443/v1/models\"\nprovider = \"openai\"\nlocal = true\n"
            ),
        )
        .unwrap();
        check("blockwatch-agent", &path)
    };
    let (ok, text) = agent(&format!("spool_dir = {:?}\n", dir.path().join("spool")));
    assert!(ok, "{text}");
    let (ok, text) = agent(&format!(
        "spool_dir = {:?}\nca_file = {:?}\nsource_address = \"192.0.2.7\"\n",
        file.join("spool"),
        not_pem
    ));
    assert!(!ok, "{text}");
    for key in ["spool_dir", "ca_file", "no PEM certificate", "source_address 192.0.2.7"] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    let (ok, text) =
        agent(&format!("spool_dir = {:?}\nca_file = {:?}\n", dir.path().join("spool"), dir.path().join("missing.pem")));
    assert!(!ok && text.contains("ca_file") && text.contains("cannot read"), "{text}");
}

#[test]
fn readiness_follows_the_collector_an_agent_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(dir.path());
    let port = free_port();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let collector_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The agent starts first: alive, not ready (nothing to report to), and says why.
    let mut cfg = agent_toml("r-1", "eu", collector_addr, &provider, dir.path(), "127.0.0.3", 1);
    cfg = format!("metrics_listen = \"{metrics}\"\n{cfg}");
    let config = dir.path().join("r-1.toml");
    std::fs::write(&config, &cfg).unwrap();
    let mut agent = Proc::start(
        &bin("blockwatch-agent"),
        &["--log-format", "json", "run", "--config", config.to_str().unwrap()],
        dir.path().join("r-1.log"),
    );
    wait_for("the agent's health endpoint", Duration::from_secs(20), || {
        std::panic::catch_unwind(|| http_get(metrics, "/healthz")).ok().filter(|(s, _)| *s == 200)
    });
    let (status, body) = http_get(metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no stream to the collector"), "{body}");

    // The collector comes: both ready.
    let mut collector = CollectorProc::start_insecure(dir.path(), Some(port), "");
    assert_eq!(http_get(collector.api, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(collector.api, "/healthz").0, 200);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        (http_get(metrics, "/readyz").0 == 200).then_some(())
    });
    // It goes: the agent is not ready again, but still alive.
    assert_eq!(collector.proc.terminate(), Some(0));
    wait_for("the agent to notice", Duration::from_secs(30), || (http_get(metrics, "/readyz").0 == 503).then_some(()));
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());

    // `--log-format json`: every line is one JSON object with a level and a message.
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
    // Text logs to a file carry no colour codes.
    let text = collector.proc.log();
    assert!(text.contains("INFO") && !text.contains('\u{1b}'), "{text}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["blockwatch-collector", "blockwatch-agent"] {
        let out = run(&bin(name), &["completions", "bash"]);
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(&format!("_{}", name.replace('-', "__"))) && script.contains("check-config"),
            "{script}"
        );
        let out = run(&bin(name), &["man", "--dir", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let page = std::fs::read_to_string(dir.path().join(format!("{name}-check-config.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("config"), "{page}");
    }
    assert!(dir.path().join("blockwatch-collector-ca-issue-agent.1").exists());
}

#[test]
fn the_standalone_provider_refuses_the_blocked_address_after_its_delay() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca = dir.path().join("provider-ca.pem");
    let mut provider = Proc::start(
        &bin("blockwatch-demo"),
        &[
            "provider",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ca-out",
            ca.to_str().unwrap(),
            "--name",
            "127.0.0.1",
            "--block",
            "127.0.0.5",
            "--block-after",
            "2s",
        ],
        dir.path().join("provider.log"),
    );
    let url = format!("https://127.0.0.1:{port}/v1/models");
    let probe = |source: &str| {
        let out = run(
            &bin("blockwatch-agent"),
            &[
                "probe",
                &url,
                "--provider",
                "openai",
                "--ca",
                ca.to_str().unwrap(),
                "--source",
                source,
                "--local",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["outcome"].as_str().unwrap_or_default().to_string()
    };
    wait_for("the provider to answer", Duration::from_secs(20), || (probe("127.0.0.5") == "ok").then_some(()));
    wait_for("the block to begin", Duration::from_secs(20), || {
        (probe("127.0.0.5") == "http_geo_blocked").then_some(())
    });
    assert_eq!(probe("127.0.0.6"), "ok", "an address not listed was refused");
    assert_eq!(provider.terminate(), Some(0), "{}", provider.log());
}

/// `docs/environment.md` is generated from the config types; this fails when it is stale.
/// `BLOCKWATCH_BLESS=1 cargo test -p blockwatch-tests --test operate` rewrites it.
#[test]
fn the_environment_table_is_generated_from_the_config_types() {
    use blockwatch_proto::config_env::markdown;
    let doc = format!(
        "# Configuration from the environment\n\n\
         Generated from the config types by `blockwatch-agent config-keys` and \
         `blockwatch-collector config-keys`; do not edit by hand (the test suite checks it).\n\n\
         Every key of a config file can be set by its variable, which wins over the file. String keys \
         take the value as it is; any other key takes a TOML value (`500`, `true`, `[\"a\", \"b\"]`, \
         `[{{ id = \"x\", url = \"https://…\" }}]` for an array of tables). A variable can supply a key \
         the file leaves out, required ones included.\n\n\
         ## Agent (`blockwatch-agent run --config FILE`)\n\n{}\n\
         ## Collector (`blockwatch-collector serve --config FILE`)\n\n{}",
        markdown(&blockwatch_agent::config::AgentConfig::env_keys()),
        markdown(&blockwatch_collector::config::CollectorConfig::env_keys())
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/environment.md");
    if std::env::var_os("BLOCKWATCH_BLESS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == doc,
        "docs/environment.md is stale: BLOCKWATCH_BLESS=1 cargo test -p blockwatch-tests --test operate"
    );
    // The binaries print the same tables.
    let out = run(&bin("blockwatch-collector"), &["config-keys"]);
    assert!(doc.contains(&*String::from_utf8_lossy(&out.stdout)));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("| `limits.max_agents` | `BLOCKWATCH_LIMITS_MAX_AGENTS` | integer |")
    );
}
