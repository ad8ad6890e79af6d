//! The agent's configuration file (TOML). Every key is documented in the README.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::{Catalogue, CatalogueError, Credential, CredentialError, Provider, ProviderConfig};

/// Target id of the control target in results; no configured or planned target may use it.
pub const CONTROL_ID: &str = "control";

/// `blockwatch-agent run --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Stable, unique id of this agent (`eu-west-1`). Env: `BLOCKWATCH_AGENT_ID`.
    pub agent_id: String,
    /// Region label (`eu-west`). Env: `BLOCKWATCH_REGION`.
    pub region: String,
    /// Collector gRPC endpoint (`http://collector:7400`). Env: `BLOCKWATCH_COLLECTOR`.
    pub collector: String,
    /// Default probe interval. Default 60s.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest a probe may take, all phases together. Default 10s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Local address probes connect from (per-region egress on a multi-homed host).
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// Spool directory. Default `./blockwatch-spool`. Env: `BLOCKWATCH_SPOOL_DIR`.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Spool bound in MiB; past it the oldest results are dropped (and reported). Default 64.
    #[serde(default = "default_spool_mb")]
    pub spool_max_mb: u64,
    /// Most probes running at once. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most results per second sent to the collector: after a long disconnection the
    /// backlog drains at this pace, fresh results riding along in every batch. Default 200.
    #[serde(default = "default_upload_rate")]
    pub upload_rate: u32,
    /// Quick re-probes after a failure.
    #[serde(default)]
    pub confirm: ConfirmConfig,
    /// DNS servers (`ip` or `ip:port`); empty uses the system resolver.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Extra CA certificates (PEM) trusted besides the built-in web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Addresses that mark a DNS answer as forged.
    #[serde(default)]
    pub poison: Vec<IpAddr>,
    /// Targets to probe. A plan from the collector replaces those not marked `pin`.
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// Provider entries (`[[provider]]`) added to the built-in catalogue; one with a built-in
    /// id replaces that entry whole. Default: none.
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    /// The control target, probed like a target (id `control`) so the collector can tell a
    /// dead vantage from a block: `tcp://host:port` (connect only) or an `https://` URL.
    /// Default: the collector endpoint's host and port as `tcp://`.
    #[serde(default)]
    pub control: Option<String>,
    /// An `https://` endpoint that answers the caller's IP address as plain text (like
    /// `https://api.ipify.org`), looked up hourly into every result's `egress_address`.
    /// Default: none (results carry no egress address).
    #[serde(default)]
    pub egress_echo_url: Option<String>,
}

/// Confirm-on-failure.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmConfig {
    /// Re-probes after a failure, at most. 0 turns confirmation off. Default 2.
    pub count: u32,
    /// Earliest re-probe after the failure. Default 5s.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Latest re-probe after the failure. Default 15s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for ConfirmConfig {
    fn default() -> Self {
        ConfirmConfig { count: 2, min_delay: Duration::from_secs(5), max_delay: Duration::from_secs(15) }
    }
}

/// One target.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Target id (`openai`), unique within the agent.
    pub id: String,
    /// URL to probe (`https://api.openai.com/v1/models`).
    pub url: String,
    /// Catalogue provider id; default: the entry matching the URL's host, else `generic`.
    #[serde(default)]
    pub provider: String,
    /// Probe interval; default: the agent's `interval`.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Statuses that mean reachable, overriding the catalogue (e.g. `[200]`).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// The target is on a private network (tests, internal gateways): private or loopback DNS
    /// answers are not treated as forged.
    #[serde(default)]
    pub local: bool,
    /// Keep this target when the collector pushes a plan.
    #[serde(default)]
    pub pin: bool,
    /// Environment variable holding this target's API key (the key itself never goes in
    /// the config). Excludes `credential_file`.
    #[serde(default)]
    pub credential_env: Option<String>,
    /// File holding this target's API key (its whole content, trimmed). Excludes
    /// `credential_env`.
    #[serde(default)]
    pub credential_file: Option<PathBuf>,
}

/// Where a target's API key is read from: names only, so printing it reveals nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// An environment variable.
    Env(String),
    /// A file.
    File(PathBuf),
}

impl CredentialSource {
    /// Reads the key, variables through `env`.
    pub fn load(&self, env: impl Fn(&str) -> Option<String>) -> Result<Credential, CredentialError> {
        match self {
            CredentialSource::Env(var) => {
                Credential::new(&env(var).ok_or_else(|| CredentialError::MissingEnv(var.clone()))?)
            }
            CredentialSource::File(path) => Credential::from_file(path),
        }
    }
}

/// Every target's key, by where it was read from.
pub type Credentials = HashMap<CredentialSource, Credential>;

impl TargetConfig {
    /// Where this target's key comes from, if it has one.
    pub fn credential_source(&self) -> Option<CredentialSource> {
        match (&self.credential_env, &self.credential_file) {
            (Some(var), _) => Some(CredentialSource::Env(var.clone())),
            (None, Some(path)) => Some(CredentialSource::File(path.clone())),
            (None, None) => None,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("blockwatch-spool")
}
fn default_spool_mb() -> u64 {
    64
}
fn default_concurrency() -> usize {
    16
}
fn default_upload_rate() -> u32 {
    200
}

pub use blockwatch_proto::config_file::ConfigError;

impl AgentConfig {
    /// Reads, parses, applies environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig = blockwatch_proto::config_file::read_toml(path)?;
        cfg.apply_env(|k| std::env::var(k).ok());
        let mut problems = cfg.validate().err().unwrap_or_default();
        problems.extend(cfg.credentials(|k| std::env::var(k).ok()).err().unwrap_or_default());
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems });
        }
        Ok(cfg)
    }

    /// Reads every target's key (variables through `env`). Each problem names the target and
    /// where the key was to come from, never the key.
    pub fn credentials(&self, env: impl Fn(&str) -> Option<String>) -> Result<Credentials, Vec<String>> {
        let mut keys = Credentials::new();
        let mut problems = Vec::new();
        for t in &self.targets {
            let Some(source) = t.credential_source() else { continue };
            match source.load(&env) {
                Ok(key) => {
                    keys.insert(source, key);
                }
                Err(e) => problems.push(format!("target {:?}: credential: {e}", t.id)),
            }
        }
        if problems.is_empty() { Ok(keys) } else { Err(problems) }
    }

    /// The built-in catalogue with the `[[provider]]` entries applied.
    pub fn catalogue(&self) -> Result<Catalogue, CatalogueError> {
        let mut catalogue = Catalogue::builtin();
        catalogue.extend(self.providers.clone())?;
        Ok(catalogue)
    }

    /// The control target's URL: `control`, or else the collector's host and port as
    /// `tcp://` (the collector speaks plaintext gRPC by default, so a connect is the check).
    pub fn control_url(&self) -> Result<String, &'static str> {
        if let Some(url) = &self.control {
            crate::probe::check_url(url)?;
            return Ok(url.clone());
        }
        let uri: http::Uri = self.collector.parse().map_err(|_| "collector is not a URL")?;
        let authority = uri.authority().ok_or("collector has no host")?;
        let port = match (authority.port_u16(), uri.scheme_str()) {
            (Some(port), _) => port,
            (None, Some("https")) => 443,
            (None, _) => 80,
        };
        Ok(format!("tcp://{}:{port}", authority.host()))
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        blockwatch_proto::config_file::parse_toml(text)
    }

    /// Applies `BLOCKWATCH_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("BLOCKWATCH_AGENT_ID") {
            self.agent_id = v;
        }
        if let Some(v) = get("BLOCKWATCH_REGION") {
            self.region = v;
        }
        if let Some(v) = get("BLOCKWATCH_COLLECTOR") {
            self.collector = v;
        }
        if let Some(v) = get("BLOCKWATCH_SPOOL_DIR") {
            self.spool_dir = PathBuf::from(v);
        }
    }

    /// Every problem serde cannot see, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !id_ok(&self.agent_id) {
            p.push(format!("agent_id {:?}: must be 1-64 of [A-Za-z0-9._-]", self.agent_id));
        }
        if !id_ok(&self.region) {
            p.push(format!("region {:?}: must be 1-64 of [A-Za-z0-9._-]", self.region));
        }
        if !(self.collector.starts_with("http://") || self.collector.starts_with("https://")) {
            p.push(format!("collector {:?}: must be an http:// or https:// URL", self.collector));
        }
        if self.interval < Duration::from_secs(1) {
            p.push("interval: must be at least 1s".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(120) {
            p.push("timeout: must be 100ms..=120s".into());
        }
        if self.spool_max_mb == 0 {
            p.push("spool_max_mb: must be at least 1".into());
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            p.push("concurrency: must be 1..=1024".into());
        }
        if self.upload_rate == 0 || self.upload_rate > 100_000 {
            p.push(format!("upload_rate = {}: must be 1..=100000 results per second", self.upload_rate));
        }
        if self.confirm.min_delay > self.confirm.max_delay {
            p.push("confirm.min_delay: must not exceed confirm.max_delay".into());
        }
        for ns in &self.nameservers {
            if parse_nameserver(ns).is_none() {
                p.push(format!("nameservers: {ns:?} is not an ip or ip:port"));
            }
        }
        let plan = crate::plan::local_plan(self, 0);
        if !self.targets.is_empty() {
            p.extend(blockwatch_proto::plan::problems(&plan));
        }
        if let Err(why) = self.control_url() {
            p.push(format!("control {:?}: {why}", self.control.as_deref().unwrap_or(&self.collector)));
        }
        if let Some(url) = &self.egress_echo_url
            && let Err(why) = blockwatch_proto::plan::check_url(url)
        {
            p.push(format!("egress_echo_url {url:?}: {why}"));
        }
        self.provider_problems(&mut p);
        self.credential_problems(&mut p);
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    fn provider_problems(&self, p: &mut Vec<String>) {
        let mut ids = HashSet::new();
        for (i, c) in self.providers.iter().enumerate() {
            if !ids.insert(c.id.as_str()) {
                p.push(format!("provider[{i}] {:?}: duplicate id", c.id));
            }
            if let Err(e) = Provider::new(c.clone()) {
                p.push(format!("provider[{i}]: {e}"));
            }
        }
    }

    fn credential_problems(&self, p: &mut Vec<String>) {
        // With a broken [[provider]] the hosts a key may go to are unknown; that problem is
        // reported above.
        let catalogue = self.catalogue().ok();
        for t in &self.targets {
            let what = format!("target {:?}", t.id);
            if t.id == CONTROL_ID {
                p.push(format!("{what}: id is reserved for the control target"));
            }
            if t.credential_env.is_some() && t.credential_file.is_some() {
                p.push(format!("{what}: credential_env and credential_file exclude each other"));
            }
            if t.credential_env.as_deref().is_some_and(str::is_empty) {
                p.push(format!("{what}: credential_env is empty"));
            }
            let (Some(catalogue), Some(_)) = (&catalogue, t.credential_source()) else { continue };
            // The engine withholds a key from any host its provider does not own; a target
            // that could never use its key is a config mistake, so say so now.
            let provider = crate::targets::provider_for(catalogue, &t.provider, &t.url, &t.expect_status);
            let host = crate::targets::host_of(&t.url);
            if !provider.owns_host(host) {
                p.push(format!(
                    "{what}: credential would never be sent: {host} is not a host of provider {:?}",
                    provider.id()
                ));
            }
        }
    }

    /// Configured nameservers as socket addresses (port 53 when none is given).
    pub fn nameserver_addrs(&self) -> Vec<SocketAddr> {
        self.nameservers.iter().filter_map(|s| parse_nameserver(s)).collect()
    }
}

fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        agent_id = "eu-west-1"
        region = "eu-west"
        collector = "http://127.0.0.1:7400"
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
        assert!(
            p[0].contains("credential would never be sent: 127.0.0.1 is not a host of provider \"openai\""),
            "{p:?}"
        );
        c.targets[0].id = "control".into();
        assert!(c.validate().unwrap_err().iter().any(|m| m.contains("reserved")));
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
}
