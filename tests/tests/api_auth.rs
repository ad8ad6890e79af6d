//! The HTTP API with bearer tokens and TLS, as a collector facing a network runs it: tokens
//! made with the real `token create`, checked per role, revoked without a restart.

use blockwatch_tests::*;

#[test]
fn api_tokens_and_roles_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fleet_ca(dir.path());
    let tokens = dir.path().join("api-tokens.json");
    let collector_bin = bin("blockwatch-collector");
    let create = |name: &str, role: &str| {
        let out = run(
            &collector_bin,
            &["token", "create", "--file", tokens.to_str().unwrap(), "--name", name, "--role", role],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let reader = create("grafana", "read");
    let admin = create("ops", "admin");
    assert!(reader.starts_with("bw_") && reader.len() == 67, "{reader}");
    assert!(!std::fs::read_to_string(&tokens).unwrap().contains(&reader), "the token itself was stored");
    // The API serves HTTPS with the certificate `ca init` made for the collector.
    let extra = format!(
        "[api]\nauth = \"token\"\ntokens_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        tokens.display().to_string(),
        ca.join("collector.crt").display().to_string(),
        ca.join("collector.key").display().to_string(),
    );
    let collector = CollectorProc::start(dir.path(), None, &extra);
    let ca_crt = ca.join("ca.crt");
    let call =
        |method: &str, path: &str, token: Option<&str>| http_request(collector.api, method, path, token, Some(&ca_crt));

    assert_eq!(call("GET", "/healthz", None).0, 200, "health checks need no token");
    let (status, body) = call("GET", "/v1/agents", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(call("GET", "/v1/agents", Some("bw_0000")).0, 401);
    assert_eq!(call("GET", "/v1/agents", Some(&reader)).0, 200);
    assert_eq!(call("GET", "/v1/events", Some(&reader)).0, 200);
    let (status, body) = call("POST", "/v1/probe?target=openai&region=eu", Some(&reader));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs an admin token"), "{body}");
    let (status, body) = call("POST", "/v1/probe?target=openai&region=eu", Some(&admin));
    assert_eq!((status, body.trim()), (200, "{\"asked\":0}"));
    let (status, body) = call("POST", "/v1/probe?target=no%20such&region=eu", Some(&admin));
    assert_eq!(status, 400, "{body}");

    // Plaintext to the HTTPS port gets no answer worth the name.
    let plain = std::panic::catch_unwind(|| http_get(collector.api, "/healthz"));
    assert!(plain.map_or(true, |(status, _)| status != 200), "the API answered plaintext");

    // Revoking a token takes effect without a restart.
    let out = run(&collector_bin, &["token", "revoke", "--file", tokens.to_str().unwrap(), "--name", "grafana"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(call("GET", "/v1/agents", Some(&reader)).0, 401);
    assert_eq!(call("GET", "/v1/agents", Some(&admin)).0, 200);
}

/// A collector whose API listens beyond loopback refuses to start open unless told.
#[test]
fn a_public_api_needs_tokens_or_an_explicit_choice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "insecure = true\napi_listen = \"0.0.0.0:0\"\n").unwrap();
    let out = run(&bin("blockwatch-collector"), &["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.tokens_file"), "{err}");
}
