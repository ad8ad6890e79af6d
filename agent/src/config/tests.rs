//! Config parsing and validation, on plain text and values.

use std::time::Duration;

use super::*;

const GOOD: &str = r#"
    agent_id = "eu-west-1"
    region = "eu-west"
    collector = "http://127.0.0.1:7400"
    insecure = true
    interval = "30s"
    [[target]]
    id = "openai"
    url = "https://api.openai.com/v1/models"
"#;

#[test]
fn good_config_parses_with_defaults() {
    let c = AgentConfig::parse(GOOD).unwrap();
    assert_eq!(c.interval, Duration::from_secs(30));
    assert_eq!(c.timeout, Duration::from_secs(10));
    assert_eq!(c.confirm, ConfirmConfig::default());
    c.validate().unwrap();
}

#[test]
fn unknown_key_is_named() {
    let e = AgentConfig::parse(&format!("{GOOD}\nintervall = \"1s\"")).unwrap_err();
    assert!(e.contains("intervall"), "{e}");
    let e = AgentConfig::parse("agent_id = 1").unwrap_err();
    assert!(e.contains("agent_id"), "{e}");
}

#[test]
fn every_problem_is_reported() {
    let mut c = AgentConfig::parse(GOOD).unwrap();
    c.agent_id = "bad id".into();
    c.collector = "ftp://x".into();
    c.nameservers = vec!["nope".into()];
    c.targets[0].url = "http://plain".into();
    let p = c.validate().unwrap_err();
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("agent_id")));
    assert!(p.iter().any(|m| m.contains("https://")));
}

#[test]
fn providers_extend_and_override_the_catalogue() {
    let c = AgentConfig::parse(&format!(
        r#"{GOOD}
        [[provider]]
        id = "acme"
        hosts = ["api.acme.test"]
        endpoint = "/v1/models"
        reachable = [401]
        geo = [{{ status = 451, code = "region_blocked", provider_code = "region_blocked" }}]
        [[provider]]
        id = "openai"
        hosts = ["api.openai.com", "openai.internal.test"]
        endpoint = "/v1/models"
        reachable = [401, 404]
        "#
    ))
    .unwrap();
    c.validate().unwrap();
    let cat = c.catalogue().unwrap();
    assert_eq!(cat.for_host("api.acme.test").id(), "acme");
    assert_eq!(cat.get("openai").unwrap().config().reachable, vec![401, 404]);
    assert_eq!(cat.for_host("openai.internal.test").id(), "openai");
}

#[test]
fn bad_providers_are_named() {
    let e = AgentConfig::parse(&format!(
        "{GOOD}\n[[provider]]\nid = \"x\"\nendpoint = \"/\"\nreachable = []\nrechable = [1]"
    ))
    .unwrap_err();
    assert!(e.contains("rechable"), "{e}");
    let mut c = AgentConfig::parse(GOOD).unwrap();
    let entry = c.catalogue().unwrap().get("mistral").unwrap().config().clone();
    let mut bad = entry.clone();
    bad.endpoint = "v1/models".into();
    c.providers = vec![entry.clone(), entry, bad];
    let p = c.validate().unwrap_err();
    assert!(p.iter().any(|m| m == "provider[1] \"mistral\": duplicate id"), "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("provider[2]: provider \"mistral\": endpoint")), "{p:?}");
}

fn keyed(key_lines: &str) -> AgentConfig {
    AgentConfig::parse(&format!("{GOOD}{key_lines}")).unwrap()
}

#[test]
fn credentials_come_from_env_or_file_and_problems_name_the_target() {
    let c = keyed("credential_env = \"OPENAI_API_KEY\"");
    c.validate().unwrap();
    let keys = c.credentials(|k| (k == "OPENAI_API_KEY").then(|| "sk-secret".to_string())).unwrap();
    assert_eq!(keys.len(), 1);
    let e = c.credentials(|_| None).unwrap_err();
    assert_eq!(e, ["target \"openai\": credential: environment variable OPENAI_API_KEY is not set"]);
    // The config holds names only: nothing printed from it can carry the key.
    assert!(!format!("{c:?}{keys:?}").contains("sk-secret"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "sk-from-file\n").unwrap();
    let c = keyed(&format!("credential_file = {:?}", file.display().to_string()));
    assert_eq!(c.credentials(|_| None).unwrap().len(), 1);
    let c = keyed(&format!("credential_file = {:?}", dir.path().join("missing").display().to_string()));
    let e = c.credentials(|_| None).unwrap_err();
    assert!(e[0].starts_with("target \"openai\": credential: reading credential file"), "{e:?}");
}

#[test]
fn credential_mistakes_are_named() {
    let c = keyed("credential_env = \"K\"\ncredential_file = \"/k\"");
    let p = c.validate().unwrap_err();
    assert_eq!(p, ["target \"openai\": credential_env and credential_file exclude each other"]);
    let mut c = keyed("credential_env = \"K\"");
    c.targets[0].url = "https://127.0.0.1:8443/v1/models".into();
    c.targets[0].provider = "openai".into();
    let p = c.validate().unwrap_err();
    assert!(p[0].contains("credential would never be sent: 127.0.0.1 is not a host of provider \"openai\""), "{p:?}");
    c.targets[0].id = "control".into();
    assert!(c.validate().unwrap_err().iter().any(|m| m.contains("reserved")));
}

#[test]
fn a_misspelt_provider_is_an_error_not_the_generic_one() {
    let mut c = keyed("");
    c.targets[0].provider = "opnai".into();
    let p = c.validate().unwrap_err();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("target \"openai\": unknown provider \"opnai\" (known: "), "{p:?}");
    assert!(p[0].contains("openai") && p[0].contains("generic"), "{p:?}");
    c.targets[0].provider = "openai".into();
    assert!(c.validate().is_ok());
}

#[test]
fn control_defaults_to_the_collector_and_is_checked() {
    let mut c = AgentConfig::parse(GOOD).unwrap();
    assert_eq!(c.control_url().unwrap(), "tcp://127.0.0.1:7400");
    c.collector = "https://collector.example".into();
    assert_eq!(c.control_url().unwrap(), "tcp://collector.example:443");
    c.collector = "http://[::1]:7400/".into();
    assert_eq!(c.control_url().unwrap(), "tcp://[::1]:7400");
    c.control = Some("https://www.example.com/".into());
    assert_eq!(c.control_url().unwrap(), "https://www.example.com/");
    c.control = Some("tcp://gateway".into());
    c.egress_echo_url = Some("http://api.ipify.org".into());
    let p = c.validate().unwrap_err();
    assert_eq!(
        p,
        [
            "control \"tcp://gateway\": tcp:// needs a port",
            "egress_echo_url \"http://api.ipify.org\": must start with https://"
        ]
    );
}

#[test]
fn nameservers_take_optional_ports() {
    let mut c = AgentConfig::parse(GOOD).unwrap();
    c.nameservers = vec!["127.0.0.1:5353".into(), "9.9.9.9".into()];
    assert_eq!(c.nameserver_addrs()[1].port(), 53);
}

#[test]
fn urls_are_checked_once_under_their_own_key() {
    let mut c = AgentConfig::parse(GOOD).unwrap();
    c.collector = "http://".into();
    assert_eq!(c.validate().unwrap_err(), ["collector \"http://\": has no host"]);
    let mut c = AgentConfig::parse(GOOD).unwrap();
    c.targets[0].url = "https://api.example.com:99999/v1/models".into();
    assert_eq!(
        c.validate().unwrap_err(),
        ["target[0] \"openai\": url \"https://api.example.com:99999/v1/models\": port must be a number in 1..=65535"]
    );
}

#[test]
fn every_type_error_at_once_and_required_keys_from_the_environment() {
    let e =
        AgentConfig::parse("agent_id = 1\nregion = 2\ninterval = \"soon\"\ncollector = \"http://c:1\"\n").unwrap_err();
    assert!(e.starts_with("line 1: agent_id: invalid type: integer `1`, expected a string; line 2: region:"), "{e}");
    assert!(e.contains("; line 3: interval: "), "{e}");
    let text = "insecure = true\n[[target]]\nid = \"openai\"\nurl = \"https://api.openai.com/v1/models\"\n";
    let c = AgentConfig::parse(text).unwrap();
    assert_eq!(
        c.validate().unwrap_err(),
        [
            "agent_id: missing (set it in the file or in BLOCKWATCH_AGENT_ID)",
            "region: missing (set it in the file or in BLOCKWATCH_REGION)",
            "collector: missing (set it in the file or in BLOCKWATCH_COLLECTOR)",
        ]
    );
    // From the environment alone, any key: strings as they are, the rest as TOML values.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let env = |k: &str| {
        Some(match k {
            "BLOCKWATCH_AGENT_ID" => "hk-1".into(),
            "BLOCKWATCH_REGION" => "hk".into(),
            "BLOCKWATCH_COLLECTOR" => "http://collector:7400".into(),
            "BLOCKWATCH_CONFIRM_COUNT" => "0".into(),
            "BLOCKWATCH_INTERVAL" => "30s".into(),
            "BLOCKWATCH_NAMESERVERS" => "[\"192.0.2.53\"]".into(),
            _ => return None,
        })
    };
    let c = AgentConfig::load_from(&path, env).unwrap();
    assert_eq!((c.agent_id.as_str(), c.region.as_str(), c.collector.as_str()), ("hk-1", "hk", "http://collector:7400"));
    assert_eq!(
        (c.confirm.count, c.interval, &c.nameservers[..]),
        (0, Duration::from_secs(30), &["192.0.2.53".to_string()][..])
    );
    let e = AgentConfig::load_from(&path, |k| (k == "BLOCKWATCH_CONFIRM_COUNT").then(|| "two".into())).unwrap_err();
    assert!(e.to_string().contains("BLOCKWATCH_CONFIRM_COUNT=\"two\": confirm.count is integer"), "{e}");
    // Every key has its own variable.
    let keys = AgentConfig::env_keys();
    let vars: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.env.as_str()).collect();
    assert_eq!(vars.len(), keys.len());
    assert!(vars.contains("BLOCKWATCH_SPOOL_DIR") && vars.contains("BLOCKWATCH_TLS_CERT_FILE"), "{vars:?}");
}

#[test]
fn the_collector_url_and_tls_must_agree() {
    let mut c = AgentConfig::parse(GOOD).unwrap();
    let tls = UplinkTls { ca_file: "ca".into(), cert_file: "crt".into(), key_file: "key".into(), server_name: None };
    let problem = |c: &AgentConfig| c.validate().unwrap_err().join("; ");
    c.collector = "https://collector.example:7400".into();
    assert!(problem(&c).contains("insecure = true is for http://"), "{}", problem(&c));
    c.insecure = false;
    assert!(problem(&c).contains("needs [tls] ca_file"), "{}", problem(&c));
    c.tls = Some(tls);
    c.validate().unwrap();
    c.collector = "http://collector.example:7400".into();
    assert!(problem(&c).contains("must be https://"), "{}", problem(&c));
    c.tls = None;
    assert!(problem(&c).contains("insecure = true on a network you trust"), "{}", problem(&c));
}

#[test]
fn geoip_db_is_one_path_or_a_list_and_needs_the_echo_url() {
    let one = AgentConfig::parse(&format!("geoip_db = \"/nonexistent/asn.mmdb\"\n{GOOD}")).unwrap();
    assert_eq!(one.geoip_db, [std::path::PathBuf::from("/nonexistent/asn.mmdb")]);
    let two = AgentConfig::parse(&format!("geoip_db = [\"/a.mmdb\", \"/b.mmdb\"]\n{GOOD}")).unwrap();
    assert_eq!(two.geoip_db.len(), 2);
    let p = one.validate().unwrap_err();
    assert_eq!(p[0], "geoip_db: needs egress_echo_url (the address it looks up)");
    assert!(p[1].starts_with("geoip_db /nonexistent/asn.mmdb: "), "{p:?}");
    assert_eq!(p.len(), 2, "{p:?}");
}
