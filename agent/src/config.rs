//! The agent's configuration file (TOML). Every key is documented in the README.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
        ConfirmConfig {
            count: 2,
            min_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(15),
        }
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

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {}", problems.join("; "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

impl AgentConfig {
    /// Reads, parses, applies environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(cfg)
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
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
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// Configured nameservers as socket addresses (port 53 when none is given).
    pub fn nameserver_addrs(&self) -> Vec<SocketAddr> {
        self.nameservers.iter().filter_map(|s| parse_nameserver(s)).collect()
    }
}

fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
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
    fn nameservers_take_optional_ports() {
        let mut c = AgentConfig::parse(GOOD).unwrap();
        c.nameservers = vec!["127.0.0.1:5353".into(), "9.9.9.9".into()];
        assert_eq!(c.nameserver_addrs()[1].port(), 53);
    }
}
