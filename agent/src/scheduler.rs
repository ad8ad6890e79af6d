//! The scheduler: each target on its interval, at a stable per-agent phase offset plus jitter
//! (a fleet never probes in lockstep), quick confirmations after a failure, a cap on
//! concurrent probes, and immediate probes on the collector's request.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blockwatch_proto::Outcome;
use blockwatch_proto::v1::ProbeResult;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{AgentConfig, Credentials};
use crate::plan::{ActivePlan, Target};
use crate::probe::{Catalogue, Engine, ProbeSpec};
use crate::spool::Spool;

/// Jitter around each scheduled probe, as a fraction of the interval (±).
const JITTER_FRACTION: f64 = 0.05;
/// Grace beyond a probe's own timeout before it is abandoned.
const PROBE_SLACK: Duration = Duration::from_secs(1);

/// What a target loop needs.
#[derive(Clone)]
pub struct ProbeContext {
    pub cfg: Arc<AgentConfig>,
    pub engine: Engine,
    pub catalogue: Arc<Catalogue>,
    pub spool: Arc<Spool>,
    pub new_results: Arc<Notify>,
    pub permits: Arc<Semaphore>,
    /// Targets' API keys, read once at start (see [`AgentConfig::credentials`]).
    pub credentials: Arc<Credentials>,
    /// The agent's egress address (and its network) as last looked up; empty when unknown.
    pub egress: watch::Receiver<crate::probe::egress::Egress>,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

/// Requests from the collector to probe the same target closer together than this are
/// ignored, so a collector cannot make an agent hammer a provider.
pub const PROBE_NOW_MIN_GAP: Duration = Duration::from_secs(5);

/// Runs the plan until `stop`; in-flight probes finish (each bounded by its timeout).
pub async fn run(
    ctx: ProbeContext,
    mut plan: watch::Receiver<ActivePlan>,
    mut probe_now: mpsc::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    let mut loops: HashMap<String, (Target, tokio::task::AbortHandle)> = HashMap::new();
    let mut set = JoinSet::new();
    let mut one_offs = JoinSet::new();
    let mut requested: HashMap<String, tokio::time::Instant> = HashMap::new();
    let loop_stop = stop.clone();
    let initial = plan.borrow_and_update().clone();
    reconcile(&ctx, &initial, &mut loops, &mut set, &loop_stop);
    loop {
        tokio::select! {
            changed = plan.changed() => {
                if changed.is_err() { break; }
                let current = plan.borrow_and_update().clone();
                reconcile(&ctx, &current, &mut loops, &mut set, &loop_stop);
            }
            Some(id) = probe_now.recv() => {
                let now = tokio::time::Instant::now();
                requested.retain(|_, at| now.duration_since(*at) < PROBE_NOW_MIN_GAP);
                if requested.contains_key(&id) {
                    tracing::debug!(target = %id, "probe request ignored: one ran moments ago");
                } else if let Some((target, _)) = loops.get(&id) {
                    requested.insert(id.clone(), now);
                    tracing::info!(target = %id, "probe requested by the collector");
                    let (ctx, target) = (ctx.clone(), target.clone());
                    one_offs.spawn(async move { probe_once(&ctx, &target, true).await; });
                }
            }
            Some(_) = set.join_next() => {}
            Some(_) = one_offs.join_next() => {}
            _ = crate::stopped(&mut stop) => break,
        }
    }
    // Loops notice `stop` between probes; a probe in progress runs to its timeout.
    while set.join_next().await.is_some() {}
    while one_offs.join_next().await.is_some() {}
}

fn reconcile(
    ctx: &ProbeContext,
    plan: &ActivePlan,
    loops: &mut HashMap<String, (Target, tokio::task::AbortHandle)>,
    set: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) {
    loops.retain(|id, (target, handle)| {
        let keep = plan.targets.iter().any(|t| t == target);
        if !keep {
            tracing::info!(target = %id, "target removed or changed");
            handle.abort();
        }
        keep
    });
    for t in &plan.targets {
        if loops.contains_key(&t.id) {
            continue;
        }
        let (ctx, target, stop) = (ctx.clone(), t.clone(), stop.clone());
        let handle = set.spawn(async move { target_loop(ctx, target, stop).await });
        loops.insert(t.id.clone(), (t.clone(), handle));
    }
}

/// This agent's stable offset for a target within its interval, so agents spread out.
pub fn phase_offset(agent_id: &str, target_id: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (agent_id, target_id).hash(&mut h);
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

/// Time until the next slot `k·interval + offset` of the wall clock.
fn until_first_slot(interval: Duration, offset: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let iv = interval.as_millis().max(1) as u64;
    let slot = (now / iv) * iv + offset.as_millis() as u64;
    let next = if slot > now { slot } else { slot + iv };
    Duration::from_millis(next - now)
}

fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(JITTER_FRACTION * fastrand::f64())
}

async fn target_loop(ctx: ProbeContext, target: Target, mut stop: watch::Receiver<bool>) {
    let offset = phase_offset(&ctx.cfg.agent_id, &target.id, target.interval);
    let mut due = Instant::now() + until_first_slot(target.interval, offset);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due + jitter(target.interval)) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        due += target.interval;
        let mut outcome = probe_once(&ctx, &target, false).await;
        let mut confirms = 0;
        while outcome.is_some_and(|o| o != Outcome::Ok) && confirms < ctx.cfg.confirm.count {
            let c = &ctx.cfg.confirm;
            let span = c.max_delay.saturating_sub(c.min_delay);
            let wait = c.min_delay + span.mul_f64(fastrand::f64());
            if Instant::now() + wait + ctx.cfg.timeout >= due {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::stopped(&mut stop) => return,
            }
            confirms += 1;
            outcome = probe_once(&ctx, &target, true).await;
        }
        if Instant::now() > due {
            // A probe ran long (or the host slept): skip missed slots rather than bursting.
            let behind = Instant::now() - due;
            let missed = (behind.as_millis() / target.interval.as_millis().max(1)) as u32 + 1;
            due += target.interval * missed;
        }
    }
}

/// Runs one probe, spools its result and wakes the uplink. Returns the outcome, or `None`
/// when the result could not be spooled.
pub async fn probe_once(ctx: &ProbeContext, target: &Target, confirmation: bool) -> Option<Outcome> {
    let _permit = ctx.permits.acquire().await.ok()?;
    let spec = ProbeSpec {
        url: target.url.clone(),
        provider: crate::targets::provider_for(&ctx.catalogue, &target.provider, &target.url, &target.expect_status),
        timeout: ctx.cfg.timeout,
        source_address: ctx.cfg.source_address,
        allow_private: target.local,
        credential: target.credential.as_ref().and_then(|c| ctx.credentials.get(c)).cloned(),
    };
    let started_at = blockwatch_proto::time::now();
    let Ok(report) = tokio::time::timeout(ctx.cfg.timeout + PROBE_SLACK, ctx.engine.probe(&spec)).await else {
        // The engine keeps its own deadline; getting here is a bug worth shouting about, not
        // a result about the target.
        tracing::error!(target = %target.id, timeout = %humantime::format_duration(ctx.cfg.timeout), "probe overran its deadline and was abandoned");
        return None;
    };
    let mut result = ProbeResult {
        agent_id: ctx.cfg.agent_id.clone(),
        region: ctx.cfg.region.clone(),
        target_id: target.id.clone(),
        started_at: Some(blockwatch_proto::time::to_timestamp(started_at)),
        provider: spec.provider.id().to_string(),
        confirmation,
        control: target.control,
        ..Default::default()
    };
    ctx.egress.borrow().fill(&mut result);
    report.fill(&mut result);
    let outcome = result.outcome();
    ctx.metrics.probe(&target.id, &result);
    // Staged for the spool's next group commit, which comes before any send.
    ctx.spool.stage(&ctx.cfg.agent_id, &mut result);
    tracing::debug!(target = %target.id, probe_id = %result.probe_id, outcome = outcome.name(),
        failure = %result.failure, confirmation, "probe finished");
    ctx.new_results.notify_one();
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_and_spread() {
        let iv = Duration::from_secs(60);
        assert_eq!(phase_offset("a", "t", iv), phase_offset("a", "t", iv));
        let offsets: std::collections::HashSet<_> =
            (0..50).map(|i| phase_offset(&format!("agent-{i}"), "openai", iv).as_secs()).collect();
        assert!(offsets.len() > 25, "offsets cluster: {offsets:?}");
        assert!(offsets.iter().all(|s| *s < 60));
    }

    #[test]
    fn first_slot_is_within_one_interval() {
        let iv = Duration::from_secs(10);
        for off in [0, 3_000, 9_999] {
            let d = until_first_slot(iv, Duration::from_millis(off));
            assert!(d <= iv, "{d:?}");
        }
    }
}
