//! The agent's configuration file (TOML). Every key is documented in the README. The checks
//! serde cannot make are in `validate.rs`.

mod validate;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use blockwatch_proto::v1::Plan;

use crate::probe::{Catalogue, CatalogueError, Credential, CredentialError, ProviderConfig};

pub use blockwatch_proto::plan::CONTROL_ID;

/// `blockwatch-agent run --config FILE`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Stable, unique id of this agent (`eu-west-1`). Required, in the file or from the env
    /// `BLOCKWATCH_AGENT_ID`.
    #[serde(default)]
    pub agent_id: String,
    /// Region label (`eu-west`). Required, in the file or from the env `BLOCKWATCH_REGION`.
    #[serde(default)]
    pub region: String,
    /// Collector gRPC endpoint (`https://collector:7400`, with `[tls]`). Required, in the
    /// file or from the env `BLOCKWATCH_COLLECTOR`.
    #[serde(default)]
    pub collector: String,
    /// More endpoints of the same collector (the ingest front ends of a clustered
    /// collector), tried in turn after `collector` when a session cannot start or ends with
    /// an error. Same scheme and `[tls]` as `collector`. Default none.
    #[serde(default)]
    pub failover: Vec<String>,
    /// Mutual TLS with the collector; required for an `https://` collector.
    #[serde(default)]
    pub tls: Option<UplinkTls>,
    /// Plaintext to an `http://` collector: unencrypted, and the collector cannot
    /// authenticate this agent. Only for a loopback demo or a network you trust; logged
    /// loudly at start. Default false.
    #[serde(default)]
    pub insecure: bool,
    /// Default probe interval. Default 60s.
    #[schemars(with = "String")]
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest a probe may take, all phases together. Default 10s.
    #[schemars(with = "String")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Local address probes connect from (per-region egress on a multi-homed host).
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// Spool directory. Default `/var/lib/blockwatch-agent`. Env: `BLOCKWATCH_SPOOL_DIR`.
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
    #[schemars(with = "Vec<serde_json::Value>")]
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// Provider entries (`[[provider]]`) added to the built-in catalogue; one with a built-in
    /// id replaces that entry whole. Default: none.
    #[schemars(with = "Vec<serde_json::Value>")]
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
    /// Where to serve the agent's Prometheus metrics (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`. Default: not served.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// MaxMind-format databases (`.mmdb`: GeoLite2 ASN / Country / City, DB-IP lite, IPinfo
    /// lite), one path or a list, that name the egress address's network — ASN, AS
    /// organisation, country — in every result. Needs `egress_echo_url`. Default: none.
    #[schemars(with = "Vec<PathBuf>")]
    #[serde(default, deserialize_with = "crate::probe::entry::one_or_many")]
    pub geoip_db: Vec<PathBuf>,
}

/// `[tls]`: the files `blockwatch-collector ca issue-agent` writes. They are re-read on every
/// reconnection, so a renewed certificate is used without a restart.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UplinkTls {
    /// The fleet CA certificate (PEM): the only authority the collector's certificate may
    /// come from.
    pub ca_file: PathBuf,
    /// This agent's certificate (PEM).
    pub cert_file: PathBuf,
    /// This agent's private key (PEM).
    pub key_file: PathBuf,
    /// The name to verify the collector's certificate against. Default: the collector URL's
    /// host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Confirm-on-failure.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmConfig {
    /// Re-probes after a failure, at most. 0 turns confirmation off. Default 2.
    pub count: u32,
    /// Earliest re-probe after the failure. Default 5s.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Latest re-probe after the failure. Default 15s.
    #[schemars(with = "String")]
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
    PathBuf::from("/var/lib/blockwatch-agent")
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
        AgentConfig::load_from(path, |k| std::env::var(k).ok())
    }

    /// [`AgentConfig::load`] with the environment read through `env`.
    pub fn load_from(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = blockwatch_proto::config_file::read_toml_env(path, &AgentConfig::env_keys(), &env)?;
        let mut problems = cfg.validate().err().unwrap_or_default();
        problems.extend(cfg.credentials(&env).err().unwrap_or_default());
        if let Err(why) = crate::uplink::tls_config(&cfg) {
            problems.push(why);
        }
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
                Err(e) => {
                    problems.push(format!("target {:?}: credential: {}", t.id, blockwatch_proto::error::chain(&e)))
                }
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
    /// `tcp://` (a connect is the check: the collector's TLS wants a client certificate).
    /// The error names the key it is about.
    pub fn control_url(&self) -> Result<String, String> {
        if let Some(url) = &self.control {
            crate::probe::check_url(url).map_err(|why| format!("control {url:?}: {why}"))?;
            return Ok(url.clone());
        }
        blockwatch_proto::url::endpoint(&self.collector)
            .map(|u| u.connect_url())
            .map_err(|why| format!("collector {:?}: {why}", self.collector))
    }

    /// The local targets as a wire plan, so they are checked by the same rules as a central
    /// one.
    pub fn local_plan(&self, version: u64) -> Plan {
        blockwatch_proto::plan::build(
            version,
            self.interval,
            self.targets.iter().map(|t| (t.id.as_str(), t.url.as_str(), t.provider.as_str(), t.interval)),
        )
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        blockwatch_proto::config_file::parse_toml(text).map_err(|p| p.join("; "))
    }

    /// Every config key, each with the `BLOCKWATCH_…` variable that sets it, from the
    /// config type itself.
    pub fn env_keys() -> Vec<blockwatch_proto::config_env::Key> {
        blockwatch_proto::config_env::keys(schemars::schema_for!(AgentConfig).as_value())
    }

    /// Configured nameservers as socket addresses (port 53 when none is given).
    pub fn nameserver_addrs(&self) -> Vec<SocketAddr> {
        self.nameservers.iter().filter_map(|s| validate::parse_nameserver(s)).collect()
    }
}

#[cfg(test)]
mod tests;
