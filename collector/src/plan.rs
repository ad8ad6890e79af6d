//! The central plan: targets from the collector's config, pushed to agents.

use crate::config::PlanConfig;
use blockwatch_proto::v1::{Plan, PlanTarget};

fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Builds the wire plan of a config, with the given version.
pub fn to_proto(cfg: &PlanConfig, version: u64) -> Plan {
    Plan {
        version,
        interval: Some(proto_duration(cfg.interval)),
        targets: cfg
            .targets
            .iter()
            .map(|t| PlanTarget {
                id: t.id.clone(),
                url: t.url.clone(),
                provider: t.provider.clone(),
                interval: t.interval.map(proto_duration),
            })
            .collect(),
    }
}

/// Checks a configured plan with the same rules agents apply.
pub fn validate(cfg: &PlanConfig) -> Result<(), Vec<String>> {
    let problems = blockwatch_proto::plan::problems(&to_proto(cfg, 1));
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}
