//! What the agent probes: its local targets, replaced by a central plan from the collector
//! except for pinned ones.

use std::time::Duration;

use blockwatch_proto::v1::{Plan, PlanTarget};

use crate::config::{AgentConfig, TargetConfig};

/// One target as the scheduler runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub url: String,
    pub provider: String,
    pub interval: Duration,
    pub expect_status: Vec<u16>,
    pub local: bool,
    pub control: bool,
}

/// The targets in force and where they came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivePlan {
    /// The central plan's version, 0 for the local config.
    pub version: u64,
    pub targets: Vec<Target>,
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn std_duration(d: &prost_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// The local config as a wire plan (so it is checked by the same rules as a central one).
pub fn local_plan(cfg: &AgentConfig, version: u64) -> Plan {
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

fn from_config(t: &TargetConfig, default_interval: Duration) -> Target {
    Target {
        id: t.id.clone(),
        url: t.url.clone(),
        provider: t.provider.clone(),
        interval: t.interval.unwrap_or(default_interval),
        expect_status: t.expect_status.clone(),
        local: t.local,
        control: false,
    }
}

/// The plan of the local config alone.
pub fn initial(cfg: &AgentConfig) -> ActivePlan {
    ActivePlan {
        version: 0,
        targets: cfg.targets.iter().map(|t| from_config(t, cfg.interval)).collect(),
    }
}

/// Merges a central plan with the pinned local targets, or explains why the plan is refused.
pub fn apply(cfg: &AgentConfig, plan: &Plan) -> Result<ActivePlan, Vec<String>> {
    let problems = blockwatch_proto::plan::problems(plan);
    if !problems.is_empty() {
        return Err(problems);
    }
    let default = plan.interval.as_ref().map_or(cfg.interval, std_duration);
    let pinned: Vec<Target> = cfg
        .targets
        .iter()
        .filter(|t| t.pin)
        .map(|t| from_config(t, cfg.interval))
        .collect();
    let mut targets: Vec<Target> = plan
        .targets
        .iter()
        .filter(|t| !pinned.iter().any(|p| p.id == t.id))
        .map(|t| Target {
            id: t.id.clone(),
            url: t.url.clone(),
            provider: t.provider.clone(),
            interval: t.interval.as_ref().map_or(default, std_duration),
            expect_status: Vec::new(),
            local: cfg.targets.iter().any(|l| l.id == t.id && l.local),
            control: false,
        })
        .collect();
    targets.extend(pinned);
    Ok(ActivePlan { version: plan.version, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig::parse(
            r#"
            agent_id = "a"
            region = "r"
            collector = "http://127.0.0.1:1"
            [[target]]
            id = "mine"
            url = "https://mine.example/"
            pin = true
            [[target]]
            id = "old"
            url = "https://old.example/"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn central_plan_replaces_unpinned_targets() {
        let c = cfg();
        let plan = Plan {
            version: 7,
            interval: Some(proto_duration(Duration::from_secs(30))),
            targets: vec![PlanTarget { id: "new".into(), url: "https://new.example/".into(), ..Default::default() }],
        };
        let active = apply(&c, &plan).unwrap();
        assert_eq!(active.version, 7);
        let ids: Vec<_> = active.targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new", "mine"]);
        assert_eq!(active.targets[0].interval, Duration::from_secs(30));
    }

    #[test]
    fn bad_plan_is_refused_with_reasons() {
        let plan = Plan { version: 2, interval: None, targets: vec![] };
        let err = apply(&cfg(), &plan).unwrap_err();
        assert!(err.iter().any(|e| e.contains("no interval")));
        assert!(err.iter().any(|e| e.contains("no targets")));
    }
}
