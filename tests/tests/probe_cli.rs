//! `blockwatch-agent probe`: the real binary against fault-kit servers, in JSON and text.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use blockwatch_tests::faultkit::{self, Canned, DnsAnswer, FaultServer, TestPki, canned};
use common::*;
use serde_json::Value;
use tokio::net::TcpListener;

/// What one run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Map<String, Value> {
        let v: Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not one JSON object ({e}): {}\nstderr: {}", self.stdout, self.stderr)
        });
        v.as_object().cloned().expect("a JSON object")
    }
}

/// Runs the probe command off the runtime, so the fault-kit servers keep serving.
async fn probe(args: Vec<String>, env: &[(&str, &str)]) -> Run {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(blockwatch_tests::bin("blockwatch-agent"))
            .arg("probe")
            .args(&args)
            .env_remove("BLOCKWATCH_AGENT_ID")
            .env_remove("BLOCKWATCH_REGION")
            .envs(env)
            .output()
            .expect("run blockwatch-agent probe")
    })
    .await
    .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn serve(cfg: std::sync::Arc<rustls::ServerConfig>, answer: Canned) -> FaultServer {
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    faultkit::serve_https(listener, cfg, move |_, _| answer.clone()).unwrap()
}

fn ca_file(dir: &Path, pki: &TestPki) -> String {
    let path = dir.join("ca.pem");
    std::fs::write(&path, pki.ca_pem()).unwrap();
    path.display().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The trace format's fields, plus `failure` which the command always prints.
const FORMAT_FIELDS: &[&str] = &[
    "probe_id",
    "agent_id",
    "region",
    "target",
    "started_at",
    "outcome",
    "http_status",
    "provider_code",
    "duration_ms",
    "failure",
];

fn has_ms(j: &serde_json::Map<String, Value>, field: &str) -> bool {
    j.get(field).and_then(Value::as_f64).is_some_and(|ms| ms > 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachable_openai_is_exit_0_with_the_format_fields() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(pki.server_config(NAMES).unwrap(), canned::openai_reachable()).await;
    let url = srv.url("127.0.0.1", "/v1/models");
    let run = probe(
        args(&[&url, "--provider", "openai", "--ca", &ca_file(dir.path(), &pki), "--json"]),
        &[("BLOCKWATCH_REGION", "eu-test")],
    )
    .await;
    assert_eq!(run.code, Some(0), "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    let j = run.json();
    for field in FORMAT_FIELDS {
        assert!(j.contains_key(*field), "missing {field}: {j:?}");
    }
    assert_eq!(j["outcome"], "ok");
    assert_eq!(j["failure"], "");
    assert_eq!(j["http_status"], 401);
    assert_eq!(j["provider_code"], "invalid_request_error");
    assert_eq!(j["target"], url.as_str());
    assert_eq!(j["agent_id"], "probe");
    assert_eq!(j["region"], "eu-test", "BLOCKWATCH_REGION is the default region");
    assert_eq!(j["provider"], "openai");
    assert!(j["probe_id"].as_str().unwrap().starts_with("probe/probe/"));
    assert!(j["started_at"].as_str().unwrap().ends_with('Z'));
    for phase in ["connect_ms", "tls_ms", "ttfb_ms", "http_ms"] {
        assert!(has_ms(&j, phase), "{phase} missing for a phase that ran: {j:?}");
    }
    assert!(!j.contains_key("dns_ms"), "an IP literal needs no DNS: {j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_blocked_is_exit_1_with_the_provider_code() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(pki.server_config(NAMES).unwrap(), canned::openai_geo_blocked()).await;
    let url = srv.url("127.0.0.1", "/v1/models");
    let run = probe(
        args(&[
            &url,
            "--provider",
            "openai",
            "--ca",
            &ca_file(dir.path(), &pki),
            "--json",
            "--agent-id",
            "hk-1",
            "--region",
            "hk",
        ]),
        &[],
    )
    .await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    let j = run.json();
    assert_eq!(j["outcome"], "http_geo_blocked");
    assert_eq!(j["provider_code"], "unsupported_country_region_territory");
    assert_eq!(j["failure"], "http_request_failed");
    assert_eq!(j["http_status"], 403);
    assert_eq!((&j["agent_id"], &j["region"]), (&Value::from("hk-1"), &Value::from("hk")));
    assert!(j["probe_id"].as_str().unwrap().starts_with("hk-1/probe/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_host_is_tls_cert_invalid() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(pki.server_config(&["other.example.test"]).unwrap(), canned::openai_reachable()).await;
    let url = srv.url("127.0.0.1", "/v1/models");
    let run = probe(args(&[&url, "--ca", &ca_file(dir.path(), &pki), "--json"]), &[]).await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    let j = run.json();
    assert_eq!(j["outcome"], "tls_cert_invalid");
    assert_eq!(j["failure"], "ssl_invalid_hostname");
    assert!(has_ms(&j, "connect_ms") && has_ms(&j, "tls_ms"), "{j:?}");
    assert!(!j.contains_key("http_ms"), "no request after a failed handshake: {j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_from_the_given_resolver() {
    let zone = BTreeMap::from([("api.openai.test".to_string(), DnsAnswer::Addresses(vec![LO]))]);
    let dns = faultkit::serve_dns(LO, zone).await.unwrap();
    let resolver = dns.addr().to_string();
    let run = probe(args(&["https://missing.test/v1/models", "--resolver", &resolver, "--json"]), &[]).await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    let j = run.json();
    assert_eq!(j["outcome"], "dns_nxdomain");
    assert_eq!(j["failure"], "dns_nxdomain_error");
    assert!(has_ms(&j, "dns_ms"), "{j:?}");
    assert!(!j.contains_key("connect_ms"), "{j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_shows_every_phase() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(pki.server_config(NAMES).unwrap(), canned::openai_reachable()).await;
    let url = srv.url("127.0.0.1", "/v1/models");
    let run = probe(args(&[&url, "--provider", "openai", "--ca", &ca_file(dir.path(), &pki)]), &[]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let out = &run.stdout;
    let line =
        |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} line:\n{out}"));
    assert_eq!(line("dns "), "dns         -", "DNS did not run for an IP literal");
    assert!(line("connect ").contains(&format!("-> {}", srv.addr())), "{out}");
    assert!(line("tls ").ends_with(" ms"), "{out}");
    assert!(line("http ").starts_with("http        ttfb "), "{out}");
    assert_eq!(line("status "), "status      401");
    assert_eq!(line("outcome "), "outcome     ok");
    assert!(out.contains("header      cf-ray: "), "{out}");

    let closed = faultkit::closed_port(LO).unwrap();
    let run = probe(args(&[&format!("tcp://{closed}")]), &[]).await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("outcome     tcp_refused (failed in connect)"), "{}", run.stdout);
    assert!(run.stdout.contains("failure     connection_refused"), "{}", run.stdout);
}

const ACME: &str = r#"
[[provider]]
id = "acme"
hosts = ["127.0.0.1"]
endpoint = "/v1/models"
reachable = [401]
geo = [{ status = 451, code = "region_blocked", provider_code = "region_blocked" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_file_and_credential_env() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let srv = faultkit::serve_https(listener, pki.server_config(NAMES).unwrap(), |_, req| {
        match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer sk-acme-secret") => Canned::json(200, r#"{"data":[]}"#),
            Some(_) => Canned::json(401, r#"{"error":{"code":"invalid_api_key"}}"#),
            None => Canned::json(451, r#"{"error":{"code":"region_blocked"}}"#),
        }
    })
    .unwrap();
    let catalogue = dir.path().join("catalogue.toml");
    std::fs::write(&catalogue, ACME).unwrap();
    let (url, ca, cat) =
        (srv.url("127.0.0.1", "/v1/models"), ca_file(dir.path(), &pki), catalogue.display().to_string());
    let base = [url.as_str(), "--provider", "acme", "--ca", &ca, "--catalogue", &cat, "--json"];

    let run = probe(args(&base), &[]).await;
    let j = run.json();
    assert_eq!(
        (&j["outcome"], &j["provider_code"]),
        (&Value::from("http_geo_blocked"), &Value::from("region_blocked"))
    );
    assert_eq!(j["keyed"], false);

    let keyed: Vec<&str> = base.iter().copied().chain(["--credential-env", "ACME_TEST_KEY"]).collect();
    let run = probe(args(&keyed), &[("ACME_TEST_KEY", "sk-acme-secret")]).await;
    assert_eq!(run.code, Some(0), "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(
        (&j["outcome"], &j["http_status"], &j["keyed"]),
        (&Value::from("ok"), &Value::from(200), &Value::from(true))
    );
    assert!(!run.stdout.contains("sk-acme") && !run.stderr.contains("sk-acme"), "the key is never printed");

    let run = probe(args(&keyed), &[("ACME_TEST_KEY", "sk-revoked")]).await;
    assert_eq!((run.code, run.json()["outcome"].clone()), (Some(1), Value::from("http_server_error")));
    assert_eq!(run.json()["outcome_detail"], "http_auth_failed");

    let run = probe(args(&keyed), &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("--credential-env ACME_TEST_KEY: environment variable ACME_TEST_KEY is not set"),
        "{}",
        run.stderr
    );

    std::fs::write(&catalogue, ACME.replace("reachable =", "rechable =")).unwrap();
    let run = probe(args(&base), &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains(&format!("--catalogue {cat}")) && run.stderr.contains("rechable"), "{}", run.stderr);
}
