//! The collector's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use blockwatch_detector::DetectorConfig;

pub use crate::ingest::Limits;
pub use crate::plan::{PlanConfig, PlanTargetConfig};

/// Most results the collector accepts in one batch (larger batches are rejected whole).
pub const DEFAULT_MAX_BATCH: u32 = 500;

/// `blockwatch-collector serve --config FILE`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// gRPC listen address for agents. Default `127.0.0.1:7400`. Env: `BLOCKWATCH_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTP query API listen address (`/v1/events`, `/v1/agents`, `/healthz`). Default
    /// `127.0.0.1:7401`. Env: `BLOCKWATCH_API_LISTEN`.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Directory of the store. Default `/var/lib/blockwatch`. Env: `BLOCKWATCH_DATA_DIR`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where `POST /v1/backup` writes online backups of the store, one directory each, named
    /// by the time; outside `data_dir`. Default: none (the route answers 409).
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// Most results per batch. Default 500.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// How often agents send heartbeats. Default 15s.
    #[schemars(with = "String")]
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Results older than this (by when they were received) are deleted, hourly; blocks,
    /// events and the timelines' index stay. Absent (the default): results are kept
    /// forever. At least `limits.max_age` plus a day, so no deleted result can be stored
    /// again by a late re-send.
    #[schemars(with = "Option<String>")]
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Where closed days of results and events go as Parquet (see `archive`). With
    /// `retention`, results leave the store only once archived. Absent (the default): no
    /// archive.
    #[serde(default)]
    pub archive: Option<crate::archive::ArchiveConfig>,
    /// Clustered mode over NATS JetStream (see `jetstream`). Absent (the default): the
    /// embedded store alone.
    #[serde(default)]
    pub jetstream: Option<crate::jetstream::JetStreamConfig>,
    /// Agents allowed to register. Empty (the default) admits any agent id.
    #[serde(default)]
    pub agents: Vec<String>,
    /// A central plan pushed to every agent; absent means agents run their local targets.
    #[serde(default)]
    pub plan: Option<PlanConfig>,
    /// Detector settings.
    #[serde(default)]
    pub detector: DetectorConfig,
    /// Bounds on what agents send (see `ingest::Limits`).
    #[serde(default)]
    pub limits: Limits,
    /// Mutual TLS for agents: the fleet CA directory made by `blockwatch-collector ca init`.
    /// Required unless `insecure = true`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Plaintext gRPC with agents unauthenticated: any client may claim any agent id. Only for
    /// a loopback demo or a network you trust; logged loudly at start. Default false.
    #[serde(default)]
    pub insecure: bool,
    /// The HTTP API's authentication and TLS.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where people reach this collector's API, for the links in notifications
    /// (`https://blockwatch.example.com`). Default: `http://` and `api_listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Notification sinks (`[[sink]]`): webhooks and Alertmanagers. Default: none.
    #[schemars(with = "Vec<serde_json::Value>")]
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::alert::SinkConfig>,
    /// Maintenance windows (`[[maintenance]]`): no notifications for their targets and
    /// regions while they last; events are still recorded. Default: none.
    #[schemars(with = "Vec<serde_json::Value>")]
    #[serde(default, rename = "maintenance")]
    pub maintenance: Vec<crate::alert::Window>,
}

/// `[api]`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `"token"`: every route but `/healthz`, `/readyz` and the dashboard's page, script and
    /// style needs a bearer token from `tokens_file`; `"none"`: open to anyone who reaches
    /// `api_listen`. Default: `"none"` when `api_listen` is a loopback address, `"token"`
    /// otherwise.
    #[serde(default)]
    pub auth: Option<ApiAuth>,
    /// The tokens file `blockwatch-collector token create` writes (JSON; hashes only).
    /// Required with `auth = "token"`. Env: `BLOCKWATCH_API_TOKENS_FILE`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM) ...
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// ... and this key (PEM).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// How API clients are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    Token,
    None,
}

/// `[tls]`: where the fleet CA lives.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA directory (`ca.crt`, `collector.crt`, `collector.key`, `crl.pem`),
    /// re-read when it changes. Env: `BLOCKWATCH_TLS_CA_DIR`.
    pub ca_dir: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/blockwatch")
}
fn default_max_batch() -> u32 {
    DEFAULT_MAX_BATCH
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: default_listen(),
            api_listen: default_api_listen(),
            data_dir: default_data_dir(),
            backup_dir: None,
            max_batch: DEFAULT_MAX_BATCH,
            heartbeat_interval: default_heartbeat(),
            retention: None,
            archive: None,
            jetstream: None,
            agents: Vec::new(),
            plan: None,
            detector: DetectorConfig::default(),
            limits: Limits::default(),
            tls: None,
            insecure: false,
            api: ApiConfig::default(),
            public_url: None,
            sinks: Vec::new(),
            maintenance: Vec::new(),
        }
    }
}

pub use blockwatch_proto::config_file::ConfigError;

/// Said when neither TLS nor plaintext was chosen.
pub const NO_TLS: &str = "agents are authenticated with mutual TLS: set [tls] ca_dir = DIR (create it with \
     `blockwatch-collector ca init --dir DIR --name HOST`), or insecure = true for plaintext gRPC on a network you trust";

impl CollectorConfig {
    /// Reads, parses, applies environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<CollectorConfig, ConfigError> {
        CollectorConfig::load_from(path, |k| std::env::var(k).ok())
    }

    /// [`CollectorConfig::load`] with the environment read through `env`.
    pub fn load_from(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<CollectorConfig, ConfigError> {
        let cfg: CollectorConfig =
            blockwatch_proto::config_file::read_toml_env(path, &CollectorConfig::env_keys(), env)?;
        let problems = cfg.validate().err().unwrap_or_default();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems });
        }
        Ok(cfg)
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<CollectorConfig, String> {
        blockwatch_proto::config_file::parse_toml(text).map_err(|p| p.join("; "))
    }

    /// Every config key, each with the `BLOCKWATCH_…` variable that sets it, from the
    /// config type itself.
    pub fn env_keys() -> Vec<blockwatch_proto::config_env::Key> {
        blockwatch_proto::config_env::keys(schemars::schema_for!(CollectorConfig).as_value())
    }

    /// The base of links in notifications.
    pub fn link_base(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.api_listen))
    }

    /// How API clients are authenticated: as configured, else open on loopback only.
    pub fn api_auth(&self) -> ApiAuth {
        self.api.auth.unwrap_or(if self.api_listen.ip().is_loopback() { ApiAuth::None } else { ApiAuth::Token })
    }

    /// Checks what serde cannot: every problem is reported, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.max_batch == 0 || self.max_batch > 10_000 {
            problems.push(format!("max_batch = {}: must be 1..=10000", self.max_batch));
        }
        if let Some(b) = &self.backup_dir
            && b.starts_with(&self.data_dir)
        {
            problems.push(format!(
                "backup_dir {}: inside data_dir {}, where backups would be part of the store",
                b.display(),
                self.data_dir.display()
            ));
        }
        if self.heartbeat_interval < Duration::from_secs(1) || self.heartbeat_interval > Duration::from_secs(3600) {
            problems.push("heartbeat_interval: must be 1s..=1h".to_string());
        }
        problems.extend(self.limits.problems());
        if let Some(a) = &self.archive {
            problems.extend(a.problems());
        }
        if let Some(j) = &self.jetstream {
            problems.extend(j.problems());
        }
        if let Some(r) = self.retention {
            let least = self.limits.max_age + Duration::from_secs(86_400);
            if r < least {
                problems.push(format!(
                    "retention = {}: must be at least limits.max_age ({}) plus a day, {} (a result a late agent re-sends \
                     after its deletion would be stored again)",
                    humantime::format_duration(r),
                    humantime::format_duration(self.limits.max_age),
                    humantime::format_duration(least)
                ));
            }
        }
        if self.api_auth() == ApiAuth::Token && self.api.tokens_file.is_none() {
            problems.push(format!(
                "api: auth is token (api_listen {} is not loopback, or auth = \"token\"), so set api.tokens_file \
                 (create tokens with `blockwatch-collector token create`), or api.auth = \"none\" to leave it open",
                self.api_listen
            ));
        }
        if self.api.tls_cert_file.is_some() != self.api.tls_key_file.is_some() {
            problems.push("api: tls_cert_file and tls_key_file go together".to_string());
        }
        match (&self.tls, self.insecure) {
            (None, false) => problems.push(NO_TLS.to_string()),
            (Some(_), true) => problems.push("insecure = true and [tls] exclude each other: pick one".to_string()),
            _ => {}
        }
        for id in &self.agents {
            if let Err(rule) = blockwatch_proto::id::check(id) {
                problems.push(format!("agents: {id:?}: {rule}"));
            }
        }
        if let Some(plan) = &self.plan
            && let Err(p) = plan.validate()
        {
            problems.extend(p);
        }
        let mut names = std::collections::HashSet::new();
        for sink in &self.sinks {
            if !names.insert(sink.name.as_str()) {
                problems.push(format!("sink {:?}: duplicate name", sink.name));
            }
            problems.extend(sink.problems());
        }
        for (i, w) in self.maintenance.iter().enumerate() {
            problems.extend(w.problems(i));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            problems.push(format!("public_url {u:?}: an http:// or https:// URL"));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_full_configs_parse() {
        let c = CollectorConfig::parse("").unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.validate().unwrap_err(), vec![NO_TLS.to_string()], "TLS is not optional by default");
        let c = CollectorConfig::parse("[tls]\nca_dir = \"ca\"").unwrap();
        assert!(c.validate().is_ok());
        let c = CollectorConfig::parse("insecure = true\n[tls]\nca_dir = \"ca\"").unwrap();
        assert!(c.validate().unwrap_err()[0].contains("exclude"));
        let c = CollectorConfig::parse(
            r#"
            listen = "127.0.0.1:9000"
            data_dir = "/tmp/x"
            agents = ["a", "b"]
            [plan]
            interval = "60s"
            [[plan.target]]
            id = "openai"
            url = "https://api.openai.com/v1/models"
            provider = "openai"
            "#,
        )
        .unwrap();
        assert_eq!(c.plan.unwrap().targets[0].id, "openai");
    }

    #[test]
    fn retention_outlasts_the_oldest_result_ingest_accepts() {
        let c = CollectorConfig::parse("insecure = true\nretention = \"90d\"").unwrap();
        assert_eq!(c.retention, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(c.validate(), Ok(()));
        let c = CollectorConfig::parse("insecure = true\nretention = \"7d\"").unwrap();
        let p = c.validate().unwrap_err();
        assert!(
            p.iter().any(|p| p.starts_with("retention = 7days: must be at least limits.max_age (7days) plus a day")),
            "{p:?}"
        );
        assert_eq!(CollectorConfig::parse("insecure = true").unwrap().retention, None);
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let e = CollectorConfig::parse("lisen = \"x\"").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = CollectorConfig::parse("max_batch = \"many\"").unwrap_err();
        assert!(e.contains("max_batch"), "{e}");
    }

    #[test]
    fn all_semantic_problems_are_reported() {
        let c = CollectorConfig::parse("insecure = true\nmax_batch = 0\nheartbeat_interval = \"10ms\"").unwrap();
        let p = c.validate().unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn the_api_is_open_on_loopback_only_unless_said() {
        let c = CollectorConfig::parse("insecure = true").unwrap();
        assert_eq!(c.api_auth(), ApiAuth::None);
        let c = CollectorConfig::parse("insecure = true\napi_listen = \"0.0.0.0:7401\"").unwrap();
        assert_eq!(c.api_auth(), ApiAuth::Token);
        assert!(c.validate().unwrap_err()[0].contains("api.tokens_file"));
        let c =
            CollectorConfig::parse("insecure = true\napi_listen = \"0.0.0.0:7401\"\n[api]\nauth = \"none\"").unwrap();
        assert!(c.validate().is_ok());
        let c = CollectorConfig::parse("insecure = true\n[api]\nauth = \"token\"\ntokens_file = \"t.json\"").unwrap();
        assert_eq!(c.api_auth(), ApiAuth::Token);
        assert!(c.validate().is_ok());
        let c = CollectorConfig::parse("insecure = true\n[api]\ntls_cert_file = \"c.pem\"").unwrap();
        assert!(c.validate().unwrap_err()[0].contains("go together"));
    }

    #[test]
    fn env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, "[limits]\nmax_agents = 5\n").unwrap();
        let env = |k: &str| {
            Some(match k {
                "BLOCKWATCH_LISTEN" => "127.0.0.9:1".to_string(),
                "BLOCKWATCH_LIMITS_MAX_AGENTS" => "50".into(),
                "BLOCKWATCH_DETECTOR_BLOCK_THRESHOLD" => "14.5".into(),
                "BLOCKWATCH_TLS_CA_DIR" => "/etc/blockwatch/ca".into(),
                "BLOCKWATCH_API_AUTH" => "none".into(),
                _ => return None,
            })
        };
        let c = CollectorConfig::load_from(&path, env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.9:1");
        assert_eq!(c.limits.max_agents, 50, "a variable wins over the file");
        assert_eq!(c.detector.block_threshold, 14.5);
        assert_eq!(c.tls.unwrap().ca_dir, PathBuf::from("/etc/blockwatch/ca"));
        assert_eq!(c.api.auth, Some(ApiAuth::None));
        let e = CollectorConfig::load_from(&path, |k| (k == "BLOCKWATCH_LISTEN").then(|| "nope".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BLOCKWATCH_LISTEN") && e.contains("invalid socket address"), "{e}");
        let e = CollectorConfig::load_from(&path, |k| (k == "BLOCKWATCH_API_AUTH").then(|| "maybe".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `maybe`"), "{e}");
        // A file's own mistakes keep their line numbers whatever the environment sets.
        std::fs::write(&path, "insecure = true\nmax_batch = \"many\"\n").unwrap();
        let e = CollectorConfig::load_from(&path, env).unwrap_err().to_string();
        assert!(e.contains("line 2: max_batch"), "{e}");
        // Every key has its own variable.
        let keys = CollectorConfig::env_keys();
        let vars: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.env.as_str()).collect();
        assert_eq!(vars.len(), keys.len());
    }
}
