//! What the agent probes: its local targets, replaced by a central plan from the collector
//! except for pinned ones, and always its control target.

use std::time::Duration;

use blockwatch_proto::plan::from_proto_duration as std_duration;
use blockwatch_proto::v1::Plan;

use crate::config::{AgentConfig, CONTROL_ID, CredentialSource, TargetConfig};

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
    /// Where the key sent with each probe comes from (only ever a local target's own).
    pub credential: Option<CredentialSource>,
}

/// The targets in force and where they came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivePlan {
    /// The central plan's version, 0 for the local config.
    pub version: u64,
    pub targets: Vec<Target>,
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
        credential: t.credential_source(),
    }
}

/// The control target, on the agent's own interval. It counts as local: the default one is
/// the collector, often on a private network, whose private DNS answers are not forgeries.
/// `None` only for a config that failed validation.
fn control(cfg: &AgentConfig) -> Option<Target> {
    cfg.control_url().ok().map(|url| Target {
        id: CONTROL_ID.to_string(),
        url,
        provider: String::new(),
        interval: cfg.interval,
        expect_status: Vec::new(),
        local: true,
        control: true,
        credential: None,
    })
}

/// The plan of the local config alone, with the control target.
pub fn initial(cfg: &AgentConfig) -> ActivePlan {
    let mut targets: Vec<Target> = cfg.targets.iter().map(|t| from_config(t, cfg.interval)).collect();
    targets.extend(control(cfg));
    ActivePlan { version: 0, targets }
}

/// Merges a central plan with the pinned local targets and the control target, or explains
/// why the plan is refused.
pub fn apply(cfg: &AgentConfig, plan: &Plan) -> Result<ActivePlan, Vec<String>> {
    let problems = blockwatch_proto::plan::problems(plan);
    if !problems.is_empty() {
        return Err(problems);
    }
    if plan.withdrawn {
        // Version 0: the local config, as at start.
        return Ok(initial(cfg));
    }
    let default = plan.interval.as_ref().map_or(cfg.interval, std_duration);
    let pinned: Vec<Target> = cfg.targets.iter().filter(|t| t.pin).map(|t| from_config(t, cfg.interval)).collect();
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
            // A key goes only where the local config sent it: same target, same URL.
            credential: cfg
                .targets
                .iter()
                .find(|l| l.id == t.id && l.url == t.url)
                .and_then(TargetConfig::credential_source),
        })
        .collect();
    targets.extend(pinned);
    targets.extend(control(cfg));
    Ok(ActivePlan { version: plan.version, targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockwatch_proto::plan::to_proto_duration as proto_duration;
    use blockwatch_proto::v1::PlanTarget;

    fn cfg() -> AgentConfig {
        AgentConfig::parse(
            r#"
            agent_id = "a"
            region = "r"
            collector = "http://127.0.0.1:1"
            insecure = true
            [[target]]
            id = "mine"
            url = "https://mine.example/"
            pin = true
            [[target]]
            id = "old"
            url = "https://old.example/"
            credential_env = "OLD_KEY"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn central_plan_replaces_unpinned_targets() {
        let c = cfg();
        let plan = Plan {
            withdrawn: false,
            version: 7,
            interval: Some(proto_duration(Duration::from_secs(30))),
            targets: vec![PlanTarget { id: "new".into(), url: "https://new.example/".into(), ..Default::default() }],
        };
        let active = apply(&c, &plan).unwrap();
        assert_eq!(active.version, 7);
        let ids: Vec<_> = active.targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new", "mine", "control"]);
        assert_eq!(active.targets[0].interval, Duration::from_secs(30));
        assert!(active.targets.iter().all(|t| t.control == (t.id == "control")));
    }

    #[test]
    fn control_target_is_always_planned() {
        let c = cfg();
        let initial = initial(&c);
        let ids: Vec<_> = initial.targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["mine", "old", "control"]);
        let ctl = &initial.targets[2];
        assert_eq!(ctl.url, "tcp://127.0.0.1:1", "default: the collector's host and port");
        assert!(ctl.control && ctl.local && ctl.credential.is_none());
        assert_eq!(ctl.interval, c.interval);
        let plan = Plan {
            withdrawn: false,
            version: 3,
            interval: Some(proto_duration(Duration::from_secs(30))),
            targets: vec![PlanTarget { id: "new".into(), url: "https://new.example/".into(), ..Default::default() }],
        };
        let mut configured = c.clone();
        configured.control = Some("https://control.example/".into());
        let active = apply(&configured, &plan).unwrap();
        let last = active.targets.last().unwrap();
        assert_eq!((last.id.as_str(), last.url.as_str(), last.control), ("control", "https://control.example/", true));
        assert_eq!(last.interval, c.interval, "the agent's interval, not the plan's");
    }

    #[test]
    fn plan_may_not_claim_the_control_id() {
        let plan = Plan {
            withdrawn: false,
            version: 4,
            interval: Some(proto_duration(Duration::from_secs(30))),
            targets: vec![PlanTarget { id: "control".into(), url: "https://x.example/".into(), ..Default::default() }],
        };
        let err = apply(&cfg(), &plan).unwrap_err();
        assert!(err.iter().any(|e| e.contains("reserved")), "{err:?}");
    }

    #[test]
    fn credentials_follow_only_the_same_target_and_url() {
        let c = cfg();
        let key = Some(CredentialSource::Env("OLD_KEY".into()));
        assert_eq!(initial(&c).targets[1].credential, key);
        let plan = |url: &str| Plan {
            withdrawn: false,
            version: 5,
            interval: Some(proto_duration(Duration::from_secs(30))),
            targets: vec![PlanTarget { id: "old".into(), url: url.into(), ..Default::default() }],
        };
        assert_eq!(apply(&c, &plan("https://old.example/")).unwrap().targets[0].credential, key);
        assert_eq!(apply(&c, &plan("https://elsewhere.example/")).unwrap().targets[0].credential, None);
    }

    #[test]
    fn a_withdrawn_plan_brings_back_the_local_targets() {
        let c = cfg();
        let back = apply(&c, &Plan { version: 7, withdrawn: true, ..Default::default() }).unwrap();
        assert_eq!(back, initial(&c));
        let odd = Plan { version: 8, withdrawn: true, targets: vec![PlanTarget::default()], ..Default::default() };
        assert!(apply(&c, &odd).unwrap_err()[0].contains("withdrawn"));
    }

    #[test]
    fn bad_plan_is_refused_with_reasons() {
        let plan = Plan { version: 2, interval: None, targets: vec![], withdrawn: false };
        let err = apply(&cfg(), &plan).unwrap_err();
        assert!(err.iter().any(|e| e.contains("no interval")));
        assert!(err.iter().any(|e| e.contains("no targets")));
    }
}
