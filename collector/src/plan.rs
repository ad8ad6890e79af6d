//! The central plan: targets from the collector's config, pushed to agents.

use crate::config::PlanConfig;
use blockwatch_proto::v1::Plan;

/// Builds the wire plan of a config, with the given version.
pub fn to_proto(cfg: &PlanConfig, version: u64) -> Plan {
    blockwatch_proto::plan::build(
        version,
        cfg.interval,
        cfg.targets.iter().map(|t| (t.id.as_str(), t.url.as_str(), t.provider.as_str(), t.interval)),
    )
}

/// Checks a configured plan with the same rules agents apply.
pub fn validate(cfg: &PlanConfig) -> Result<(), Vec<String>> {
    let problems = blockwatch_proto::plan::problems(&to_proto(cfg, 1));
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}
