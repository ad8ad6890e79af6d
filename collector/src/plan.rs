//! The central plan: targets from the collector's config, pushed to agents.

use std::time::Duration;

use blockwatch_proto::v1::Plan;
use serde::Deserialize;

/// The targets the collector hands to agents.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Default probe interval.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Targets to probe.
    #[schemars(with = "Vec<serde_json::Value>")]
    #[serde(rename = "target")]
    pub targets: Vec<PlanTargetConfig>,
}

/// One target of a central plan.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanTargetConfig {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
}

/// Builds the wire plan of a config, with the given version.
pub fn to_proto(cfg: &PlanConfig, version: u64) -> Plan {
    blockwatch_proto::plan::build(
        version,
        cfg.interval,
        cfg.targets.iter().map(|t| (t.id.as_str(), t.url.as_str(), t.provider.as_str(), t.interval)),
    )
}

/// A plan version above any this collector handed out before a restart: the clock in seconds.
pub fn fresh_version() -> u64 {
    u64::try_from(blockwatch_proto::time::now() / 1000).unwrap_or(1).max(1)
}

/// Tells an agent holding a central plan that there is none any more.
pub fn withdrawn() -> Plan {
    Plan { version: fresh_version(), withdrawn: true, ..Default::default() }
}

impl PlanConfig {
    /// Checks a configured plan with the same rules agents apply.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let problems = blockwatch_proto::plan::problems(&to_proto(self, 1));
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}
