//! Backlog pacing: how fast agents may send what they spooled while they could not reach the
//! collector.
//!
//! When a whole fleet comes back after an outage, every agent sends its backlog as fast as
//! acks return, and the ingest budget fills: each stream's next message waits its turn, and a
//! result just probed waits behind its own agent's backlog batches already queued (10 000
//! agents × 4 batches of 50 in flight is 2 M results, tens of seconds). So four times a
//! second the collector looks at whether messages had to wait for the budget (agents offer
//! more than it takes) and sets one backlog rate for every agent: on saturation, `SHARE` of
//! what it stored a second (smoothed), split over the open streams; otherwise the rate grows
//! by `GROWTH` a second until it passes the per-agent read cap
//! (`limits.max_results_per_second`) and is lifted. Agents send new results at once, outside
//! the pace, and start each session with one backlog batch in flight, so queues stay short
//! and fresh results are not held behind the backlog.

use std::sync::Weak;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use blockwatch_proto::v1::{Pace, collector_message};

use super::{Ingest, msg};

/// How often the pace is reconsidered: a fleet reconnecting at once floods the collector
/// within a second, so a quarter of one.
pub const TICK: Duration = Duration::from_millis(250);
/// The share of the rate stored that agents' backlogs are given on saturation; the rest is
/// headroom for fresh results and for the queue to drain.
const SHARE: f64 = 0.8;
/// How much the pace grows in a second without saturation.
const GROWTH: f64 = 1.25;
/// How long the stored rate is smoothed over.
const SMOOTHING: Duration = Duration::from_secs(2);
/// The lowest pace: an agent's backlog always moves.
const FLOOR: u32 = 1;

/// The pace in force and what it is computed from.
#[derive(Debug, Default)]
pub struct Pacer {
    /// Backlog results a second per agent; 0: no pace.
    rate: AtomicU32,
    /// Results acked since start.
    acked: AtomicU64,
}

impl Pacer {
    /// The backlog pace in force (results a second per agent), 0 when none.
    pub fn rate(&self) -> u32 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Counts results acked.
    pub fn acked(&self, n: usize) {
        self.acked.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The next pace from the one in force, whether messages waited for the budget during the
/// last `secs`, the results stored a second, the open streams and the per-agent read cap.
pub fn next(current: u32, saturated: bool, stored_per_second: f64, streams: usize, cap: u32, secs: f64) -> u32 {
    if saturated {
        let share = (SHARE * stored_per_second / streams.max(1) as f64).floor() as u32;
        return share.clamp(FLOOR, cap.max(FLOOR));
    }
    if current == 0 {
        return 0;
    }
    let grown = ((f64::from(current) * GROWTH.powf(secs)).ceil() as u32).saturating_add(1);
    if grown >= cap { 0 } else { grown }
}

/// Runs the pacer of `ingest` until it is dropped or its streams are closed for shutdown.
pub async fn run(ingest: Weak<Ingest>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(tokio::time::Instant, u64, u64)> = None;
    // Results stored a second, smoothed over about `SMOOTHING` (a quarter second's count
    // swings with the store's group commits).
    let mut stored: Option<f64> = None;
    // The pace agents were last told.
    let mut told = 0u32;
    loop {
        tick.tick().await;
        let Some(ingest) = ingest.upgrade() else { return };
        if *ingest.stop.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        let waits = ingest.budget.waits();
        let acked = ingest.pacer.acked.load(Ordering::Relaxed);
        if let Some((at, last_waits, last_acked)) = last {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            let current = ingest.pacer.rate();
            let now_rate = acked.wrapping_sub(last_acked) as f64 / secs;
            let smoothed = match stored {
                None => now_rate,
                Some(s) => s + (now_rate - s) * (1.0 - (-secs / SMOOTHING.as_secs_f64()).exp()),
            };
            stored = Some(smoothed);
            let rate = next(
                current,
                waits != last_waits,
                smoothed,
                ingest.streams.count(),
                ingest.limits.max_results_per_second,
                secs,
            );
            ingest.pacer.rate.store(rate, Ordering::Relaxed);
            // Agents are told when it is set, lifted, or has moved a tenth from what they
            // were last all told (not on every step of its growth).
            if rate != told && (rate == 0 || told == 0 || rate.abs_diff(told) * 10 >= told) {
                let (agents, missed) = ingest.streams.broadcast(|| pace(rate));
                tracing::debug!(backlog_per_second = rate, agents, missed, "backlog pace changed");
                // An agent whose queue was full is told again next tick (all are: a pace
                // heard twice is harmless).
                if missed == 0 {
                    told = rate;
                }
            }
        }
        last = Some((now, waits, acked));
    }
}

/// The message that sets an agent's backlog pace.
pub fn pace(rate: u32) -> Result<blockwatch_proto::v1::CollectorMessage, tonic::Status> {
    msg(collector_message::Kind::Pace(Pace { backlog_per_second: rate }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_sets_a_share_of_what_was_stored() {
        // 100 000 stored a second over 10 000 streams: 8 each.
        assert_eq!(next(0, true, 100_000.0, 10_000, 2000, 0.25), 8);
        assert_eq!(next(20, true, 100_000.0, 10_000, 2000, 0.25), 8);
        assert_eq!(next(5, true, 100_000.0, 10_000, 2000, 0.25), 8, "the share follows what is stored");
        assert_eq!(next(0, true, 0.0, 10_000, 2000, 0.25), FLOOR, "a stalled store still lets backlogs move");
        assert_eq!(next(0, true, 1000.0, 0, 2000, 0.25), 800);
    }

    #[test]
    fn without_saturation_it_grows_until_lifted() {
        assert_eq!(next(0, false, 50_000.0, 100, 2000, 0.25), 0, "no pace stays none");
        let mut rate = 8;
        let mut ticks = 0;
        while rate != 0 {
            let grown = next(rate, false, 0.0, 10_000, 2000, 0.25);
            assert!(grown == 0 || grown > rate, "{rate} -> {grown}");
            rate = grown;
            ticks += 1;
        }
        // From 8 to past 2000 at 1.25 a second (and one more a tick).
        assert!((40..=100).contains(&ticks), "lifted after {ticks} ticks");
    }
}
