//! Checks on a probe plan, shared by the collector (before pushing one) and the agent (before
//! running one), so both sides refuse the same plans for the same reasons.

use std::collections::HashSet;
use std::time::Duration;

use crate::v1::Plan;

/// Shortest probe interval a plan may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest probe interval a plan may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Most targets in one plan.
pub const MAX_TARGETS: usize = 1000;
/// Target id of every agent's control target; no configured or planned target may use it.
pub const CONTROL_ID: &str = "control";

/// A std duration as a protobuf one.
pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// A protobuf duration as a std one (negative parts clamp to zero).
pub fn from_proto_duration(d: &prost_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// Builds a wire plan from `(id, url, provider, interval)` of each target.
pub fn build<'a>(
    version: u64,
    interval: Duration,
    targets: impl IntoIterator<Item = (&'a str, &'a str, &'a str, Option<Duration>)>,
) -> Plan {
    Plan {
        version,
        withdrawn: false,
        interval: Some(to_proto_duration(interval)),
        targets: targets
            .into_iter()
            .map(|(id, url, provider, interval)| crate::v1::PlanTarget {
                id: id.into(),
                url: url.into(),
                provider: provider.into(),
                interval: interval.map(to_proto_duration),
            })
            .collect(),
    }
}

fn duration(d: &prost_types::Duration) -> Option<Duration> {
    (d.seconds >= 0 && d.nanos >= 0).then(|| Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The problems of a plan, each naming the target and field; empty when the plan is usable.
pub fn problems(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if plan.withdrawn {
        if !plan.targets.is_empty() || plan.interval.is_some() {
            out.push("plan: withdrawn, yet it has targets or an interval".to_string());
        }
        return out;
    }
    let check_interval = |what: &str, d: &prost_types::Duration, out: &mut Vec<String>| match duration(d) {
        Some(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => {}
        _ => out.push(format!("{what}: interval {}s is outside 1s..=24h", d.seconds as f64 + f64::from(d.nanos) / 1e9)),
    };
    match &plan.interval {
        Some(d) => check_interval("plan", d, &mut out),
        None => out.push("plan: no interval".to_string()),
    }
    if plan.targets.is_empty() {
        out.push("plan: no targets".to_string());
    }
    if plan.targets.len() > MAX_TARGETS {
        out.push(format!("plan: {} targets, at most {MAX_TARGETS}", plan.targets.len()));
    }
    let mut ids = HashSet::new();
    for (i, t) in plan.targets.iter().enumerate() {
        let what = format!("target[{i}] {:?}", t.id);
        if let Err(rule) = crate::id::check(&t.id) {
            out.push(format!("{what}: id {rule}"));
        } else if t.id == CONTROL_ID {
            out.push(format!("{what}: id is reserved for the agent's control target"));
        }
        if !ids.insert(t.id.as_str()) {
            out.push(format!("{what}: duplicate id"));
        }
        if let Err(e) = crate::url::target(&t.url) {
            out.push(format!("{what}: url {:?}: {e}", t.url));
        }
        if let Some(d) = &t.interval {
            check_interval(&what, d, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::PlanTarget;

    fn plan(targets: Vec<PlanTarget>) -> Plan {
        Plan { withdrawn: false, version: 1, targets, interval: Some(prost_types::Duration { seconds: 60, nanos: 0 }) }
    }

    fn target(id: &str, url: &str) -> PlanTarget {
        PlanTarget { id: id.into(), url: url.into(), ..Default::default() }
    }

    #[test]
    fn good_plan_passes() {
        assert!(problems(&plan(vec![target("openai", "https://api.openai.com/v1/models")])).is_empty());
    }

    #[test]
    fn every_problem_is_named() {
        let mut p = plan(vec![target("a", "http://x/"), target("a", "https:///"), target("bad id", "https://h/")]);
        p.interval = Some(prost_types::Duration { seconds: 0, nanos: 5 });
        let got = problems(&p);
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.iter().any(|m| m.contains("duplicate id")));
        assert!(got.iter().any(|m| m.contains("https://")));
        assert!(got.iter().any(|m| m == "plan: interval 0.000000005s is outside 1s..=24h"), "{got:?}");
        let reserved = problems(&plan(vec![target("control", "https://h/")]));
        assert_eq!(reserved, ["target[0] \"control\": id is reserved for the agent's control target"]);
        assert!(problems(&plan(vec![])).iter().any(|m| m.contains("no targets")));
    }
}
