//! The block detector: a pure function of the result stream, `(state, result) -> (state,
//! events)`, with no clock, I/O or randomness of its own.
//!
//! Results are kept per **lane** (one agent probing one target), in event-time order so late
//! results slot into place. Each lane runs two CUSUM statistics (log-likelihood ratio of
//! "blocked" against the agent's learned baseline, and the reverse for recovery). A
//! **cell** (one target in one region) decides: a block starts when most of its reporting
//! agents lean the same way, with enough summed evidence, for long enough (at once for geo
//! signatures, several probe intervals for network failures), and the failure is neither a
//! vantage problem (the agent fails most of its targets) nor a provider outage (most other
//! regions fail the target at once). Onsets are maximum-likelihood change points per lane,
//! combined by the median.

mod cell;
mod config;
mod event;
mod intern;
mod lane;
mod sample;
mod snapshot;
mod stats;
mod vantage;

#[cfg(test)]
mod tests;

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, from_timestamp};
use blockwatch_proto::trace::TraceLine;
use blockwatch_proto::v1::StoredResult;

pub use config::DetectorConfig;
pub use event::{Event, EventKind, Evidence};
pub use snapshot::SnapshotError;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use intern::{FxHasher, Interner, id_hash};
use lane::{Entry, Insert, Lane, NEVER};
use stats::{Baseline, Class};

/// One probe result, borrowed from wherever it was parsed.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Idempotency key: a result re-sent with the same id is counted once.
    pub probe_id: &'a str,
    pub agent_id: &'a str,
    pub region: &'a str,
    pub target: &'a str,
    /// When the probe started (agent clock): the event time.
    pub started_at: Millis,
    /// When the collector received it: the decision time.
    pub received_at: Millis,
    pub outcome: Outcome,
    /// The target is a control, one that should always answer: it tells about the agent,
    /// never about blocking.
    pub control: bool,
    /// An extra, off-schedule probe the agent ran to confirm a failure.
    pub confirmation: bool,
    /// The HTTP status the provider answered, 0 when there was no answer.
    pub http_status: u16,
    /// The provider's error code from the answer's body, empty when none.
    pub provider_code: &'a str,
}

impl<'a> Observation<'a> {
    /// The detector's view of a line of a trace.
    pub fn from_line(l: &'a TraceLine<'a>) -> Observation<'a> {
        Observation {
            probe_id: &l.probe_id,
            agent_id: &l.agent_id,
            region: &l.region,
            target: &l.target,
            started_at: l.started_at,
            received_at: l.received_at,
            outcome: l.outcome,
            control: l.control,
            confirmation: l.confirmation,
            http_status: l.http_status,
            provider_code: &l.provider_code,
        }
    }

    /// The detector's view of a result as the collector stored it: event time from the
    /// result's `started_at`, decision time from the store's `received_at` (the start time
    /// when either is missing). `None` for a stored record without a result.
    pub fn from_stored(stored: &'a StoredResult) -> Option<Observation<'a>> {
        let r = stored.result.as_ref()?;
        let started_at = r.started_at.as_ref().map_or(0, from_timestamp);
        Some(Observation {
            probe_id: &r.probe_id,
            agent_id: &r.agent_id,
            region: &r.region,
            target: &r.target_id,
            started_at,
            received_at: stored.received_at.as_ref().map_or(started_at, from_timestamp),
            outcome: r.outcome(),
            control: r.control,
            confirmation: r.confirmation,
            http_status: u16::try_from(r.http_status).unwrap_or(0),
            provider_code: &r.provider_code,
        })
    }
}

/// A request to the fleet: every agent of `region` should probe `target` now. The detector
/// asks when it suspects a block there (a geo refusal, or one agent failing persistently)
/// and fresh, independent evidence from the region's other agents would decide sooner than
/// their schedules. Requests are advice for the live collector; they change no decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRequest {
    pub target: String,
    pub region: String,
    /// Why, for the agents' logs.
    pub reason: String,
}

/// What the detector did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Used as evidence.
    Accepted,
    /// Already seen (same probe id and start): ignored.
    Duplicate,
    /// Older than the history the detector keeps for its lane: ignored.
    Stale,
    /// Dated more than `FUTURE_LIMIT` (15 minutes) after it was received (a clock far off): ignored, so
    /// one such result cannot hold its (target, region) in the future.
    Future,
}

/// How far after its receipt a result may say it started and still count: agents' clocks are
/// minutes off at worst; beyond this the date is wrong, not the clock a little fast.
pub const FUTURE_LIMIT: Millis = 15 * 60 * 1000;

/// How often (receive time) blocked cells are checked for agents that all went silent.
const STALE_SWEEP: Millis = 30_000;

/// An agent: its lanes, learned baseline and vantage state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Agent {
    region: u32,
    /// (target, lane) pairs.
    lanes: Vec<(u32, u32)>,
    baseline: Baseline,
    /// Most of its targets are failing at once: its results say nothing about blocks.
    down: bool,
    down_since: Millis,
    down_reported: bool,
    /// Its clock: when it was first heard from, the least `received_at - started_at` seen,
    /// and the offset applied to its `started_at` (see `learn_clock`).
    first_received: Millis,
    min_lag: Millis,
    skew: Millis,
}

/// An agent's clock is corrected only when it is off by more than this: below it, lags are
/// latency and probe time, not a clock.
pub const SKEW_MIN: Millis = 60_000;
/// How long an agent must have been heard from (receive time) before its clock is judged: a
/// spool flushed at start-up looks like a slow clock for as long as it lasts.
pub const SKEW_SETTLE: Millis = 15 * 60_000;

/// One target in one region, where blocks are decided.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cell {
    target: u32,
    region: u32,
    lanes: Vec<u32>,
    /// Newest `started_at` seen in the cell.
    now_t: Millis,
    block: Option<Block>,
    /// Last event time at which the cell's failure was judged part of an outage.
    outage_seen: Millis,
    /// Onset of the end of the last block: a new block starts after it.
    ended: Millis,
    /// `received_at` of the last confirmation request for the cell.
    confirm_asked: Millis,
}

/// An open block.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Block {
    onset: Millis,
    /// Failure rate during the block (what recovery is weighed against).
    rate: f64,
    /// Its agents all stopped reporting (`block_stale` said so).
    stale: bool,
}

/// A target and the regions probing it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Target {
    cells: Vec<u32>,
    outage: Option<Outage>,
    /// Since when the provider has been answering errors in most regions (`NEVER`: it is
    /// not): an outage once that has lasted.
    troubled_since: Millis,
    /// When the last outage ended: a new one begins after it.
    outage_ended: Millis,
}

/// An open provider outage.
#[derive(serde::Serialize, serde::Deserialize)]
struct Outage {
    regions: Vec<u32>,
}

/// The detector: all state, bounded by the number of (agent, target) lanes.
pub struct Detector {
    cfg: DetectorConfig,
    agent_names: Interner,
    target_names: Interner,
    region_names: Interner,
    agents: Vec<Agent>,
    targets: Vec<Target>,
    lanes: Vec<Lane>,
    cells: Vec<Cell>,
    /// (agent, target) → lane, by one hash of both names (checked against the names): the
    /// common case costs one lookup instead of three.
    lane_index: HashMap<u64, u32, BuildHasherDefault<FxHasher>>,
    /// Confirmation requests not yet taken; `None` when nobody takes them (replay).
    requests: Option<Vec<ConfirmRequest>>,
    /// `received_at` of the last look for blocks whose agents all went silent.
    stale_swept: Millis,
}

impl Detector {
    /// A detector with no history.
    pub fn new(config: DetectorConfig) -> Detector {
        Detector {
            cfg: config,
            agent_names: Interner::default(),
            target_names: Interner::default(),
            region_names: Interner::default(),
            agents: Vec::new(),
            targets: Vec::new(),
            lanes: Vec::new(),
            cells: Vec::new(),
            lane_index: HashMap::default(),
            requests: None,
            stale_swept: NEVER,
        }
    }

    /// From now on, collect [`ConfirmRequest`]s for [`Detector::take_requests`].
    pub fn request_confirmations(&mut self) {
        self.requests.get_or_insert_with(Vec::new);
    }

    /// Confirmation requests made since the last call.
    pub fn take_requests(&mut self) -> Vec<ConfirmRequest> {
        self.requests.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Takes one result; appends any events it decides to `out`.
    pub fn observe(&mut self, obs: &Observation<'_>, out: &mut Vec<Event>) -> Ingest {
        if obs.started_at.saturating_sub(obs.received_at) > FUTURE_LIMIT {
            return Ingest::Future;
        }
        let (a, t, l) = self.find_lane(obs);
        self.learn_clock(a, obs);
        // Event time on the collector's clock: the agent's `started_at` less its clock's offset.
        let started_at = obs.started_at - self.agents[a as usize].skew;
        let class = Class::of(obs.outcome);
        let entry = Entry {
            t: started_at,
            id: id_hash(obs.probe_id),
            outcome: u8::try_from(obs.outcome as i32).unwrap_or(0),
            class,
        };
        let lane = &mut self.lanes[l as usize];
        lane.control |= obs.control;
        let agent = &mut self.agents[a as usize];
        let late = match lane.insert(entry, obs.received_at, obs.confirmation) {
            Insert::Duplicate => return Ingest::Duplicate,
            Insert::Stale => return Ingest::Stale,
            Insert::Appended => {
                // The baseline learns only from lanes outside a failure episode, so a block
                // or a dead network does not teach the agent that failing is normal.
                if matches!(class, Class::Ok | Class::Net) && lane.sf < self.cfg.lane_threshold {
                    agent.baseline.learn(class == Class::Net);
                }
                lane.step(&entry, agent.baseline.llr());
                false
            }
            Insert::Inserted => {
                lane.recompute(agent.baseline.llr());
                true
            }
        };
        if class.is_failure() {
            lane.samples.keep(started_at, obs.probe_id, obs.http_status, obs.provider_code);
        }
        let cell = lane.cell;
        self.update_vantage(a, l, started_at, obs.received_at, out);
        if self.agents[a as usize].down {
            let lane = &mut self.lanes[l as usize];
            lane.clean_since = lane.clean_since.max(started_at);
        }
        let c = &mut self.cells[cell as usize];
        c.now_t = c.now_t.max(started_at);
        if obs.received_at.saturating_sub(self.stale_swept) >= STALE_SWEEP {
            self.stale_swept = obs.received_at;
            self.sweep_stale(obs.received_at, out);
        }
        if self.lanes[l as usize].control {
            return Ingest::Accepted;
        }
        if let Some(b) = self.cells[cell as usize].block.as_mut() {
            // Evidence again: the block carries on (or ends) as results say.
            b.stale = false;
        }
        // A start needs a failure, an end a success; a late result can change either.
        if self.cells[cell as usize].block.is_some() {
            if class == Class::Ok || late {
                self.evaluate_end(cell, obs.received_at, out);
            }
        } else if class.is_failure() || late {
            self.evaluate_start(cell, obs.received_at, out);
            if class.is_failure() && !late {
                self.maybe_request_confirmation(l, class, obs.received_at);
            }
        }
        if class == Class::Busy && self.targets[t as usize].outage.is_none() {
            self.maybe_troubled_outage(t, cell, started_at, obs.received_at, out);
        }
        if class == Class::Ok && self.targets[t as usize].outage.is_some() {
            self.maybe_end_outage(t, started_at, obs.received_at, out);
        }
        Ingest::Accepted
    }

    /// Learns how far agent `a`'s clock is off. A result cannot be received before it
    /// started, nor does an agent in steady state deliver every result minutes late, so the
    /// least `received_at - started_at` it has shown is its clock's offset plus a latency of
    /// seconds. Past `SKEW_MIN` (and once the agent has been heard from for `SKEW_SETTLE`),
    /// its times are corrected by it, and what its lanes hold already is moved to match.
    fn learn_clock(&mut self, a: u32, obs: &Observation<'_>) {
        let agent = &mut self.agents[a as usize];
        if agent.first_received == NEVER {
            agent.first_received = obs.received_at;
        }
        agent.min_lag = agent.min_lag.min(obs.received_at.saturating_sub(obs.started_at));
        if obs.received_at - agent.first_received < SKEW_SETTLE {
            return;
        }
        let skew = if agent.min_lag.abs() > SKEW_MIN { -agent.min_lag } else { 0 };
        if (skew - agent.skew).abs() <= SKEW_MIN / 2 {
            return;
        }
        let by = agent.skew - skew;
        agent.skew = skew;
        let lanes: Vec<u32> = agent.lanes.iter().map(|&(_, l)| l).collect();
        for l in lanes {
            let llr = self.agents[a as usize].baseline.llr();
            let lane = &mut self.lanes[l as usize];
            lane.shift(by, llr);
            let c = lane.cell as usize;
            let newest = self.cells[c].lanes.iter().map(|&o| self.lanes[o as usize].last_t).max().unwrap_or(NEVER);
            self.cells[c].now_t = newest;
        }
    }

    /// Asks the region's agents to probe a suspected block now: on a geo refusal, or once a
    /// lane's failure statistic crosses the per-lane threshold; at most once per probe
    /// interval per (target, region), and never for an agent whose own network is down.
    fn maybe_request_confirmation(&mut self, l: u32, class: Class, received: Millis) {
        let Some(requests) = self.requests.as_mut() else { return };
        let lane = &self.lanes[l as usize];
        let c = &mut self.cells[lane.cell as usize];
        if c.block.is_some() || self.agents[lane.agent as usize].down {
            return;
        }
        let strong = matches!(class, Class::Geo | Class::Forged);
        if !strong && lane.sf < self.cfg.lane_threshold {
            return;
        }
        if c.confirm_asked != NEVER && ((received - c.confirm_asked) as f64) < lane.interval {
            return;
        }
        c.confirm_asked = received;
        let reason = match class {
            Class::Geo => "geo refusal seen",
            Class::Forged => "forged answer seen",
            _ => "persistent failures seen",
        };
        requests.push(ConfirmRequest {
            target: self.target_names.name(c.target).to_string(),
            region: self.region_names.name(c.region).to_string(),
            reason: format!("{reason} from {}", self.agent_names.name(lane.agent)),
        });
    }

    /// (agent, target, lane) of a result: from the index when the agent, target and region
    /// are as last seen, else by interning the names (and moving the lane if the agent moved).
    #[inline]
    fn find_lane(&mut self, obs: &Observation<'_>) -> (u32, u32, u32) {
        let key = pair_hash(obs.agent_id, obs.target);
        if let Some(&l) = self.lane_index.get(&key) {
            let lane = &self.lanes[l as usize];
            let cell = &self.cells[lane.cell as usize];
            if self.agent_names.name(lane.agent) == obs.agent_id
                && self.target_names.name(cell.target) == obs.target
                && self.region_names.name(cell.region) == obs.region
            {
                return (lane.agent, cell.target, l);
            }
        }
        let (a, t, r) = self.intern(obs);
        let l = self.lane_of(a, t, r);
        // On a hash collision the first pair keeps the slot; the other takes this path.
        self.lane_index.entry(key).or_insert(l);
        (a, t, l)
    }

    fn intern(&mut self, obs: &Observation<'_>) -> (u32, u32, u32) {
        let (r, _) = self.region_names.get_or_insert(obs.region);
        let (t, new_t) = self.target_names.get_or_insert(obs.target);
        if new_t {
            self.targets.push(Target {
                cells: Vec::new(),
                outage: None,
                troubled_since: lane::NEVER,
                outage_ended: lane::NEVER,
            });
        }
        let (a, new_a) = self.agent_names.get_or_insert(obs.agent_id);
        if new_a {
            self.agents.push(Agent {
                region: r,
                lanes: Vec::new(),
                baseline: Baseline::new(&self.cfg),
                down: false,
                down_since: NEVER,
                down_reported: false,
                first_received: NEVER,
                min_lag: Millis::MAX,
                skew: 0,
            });
        }
        (a, t, r)
    }

    /// The lane of (agent, target), created on first use and moved if the agent moved region.
    fn lane_of(&mut self, a: u32, t: u32, r: u32) -> u32 {
        let found = self.agents[a as usize].lanes.iter().find(|(tt, _)| *tt == t).map(|&(_, l)| l);
        if let Some(l) = found {
            let old = self.lanes[l as usize].cell;
            if self.cells[old as usize].region == r {
                return l;
            }
            self.cells[old as usize].lanes.retain(|&x| x != l);
            let c = self.cell_of(t, r);
            self.cells[c as usize].lanes.push(l);
            self.lanes[l as usize].cell = c;
            self.agents[a as usize].region = r;
            return l;
        }
        let c = self.cell_of(t, r);
        let l = self.lanes.len() as u32;
        self.lanes.push(Lane::new(
            a,
            c,
            self.cfg.lane_history,
            self.cfg.default_interval_ms as f64,
            self.cfg.end_threshold,
        ));
        self.cells[c as usize].lanes.push(l);
        let agent = &mut self.agents[a as usize];
        agent.lanes.push((t, l));
        agent.region = r;
        l
    }

    fn cell_of(&mut self, t: u32, r: u32) -> u32 {
        let cells = &self.targets[t as usize].cells;
        if let Some(&c) = cells.iter().find(|&&c| self.cells[c as usize].region == r) {
            return c;
        }
        let c = self.cells.len() as u32;
        self.cells.push(Cell {
            target: t,
            region: r,
            lanes: Vec::new(),
            now_t: NEVER,
            block: None,
            outage_seen: NEVER,
            ended: NEVER,
            confirm_asked: NEVER,
        });
        self.targets[t as usize].cells.push(c);
        c
    }
}

/// One hash of an (agent, target) pair.
fn pair_hash(agent: &str, target: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(agent.as_bytes());
    h.write_u8(0xff);
    h.write(target.as_bytes());
    h.finish()
}

/// Median of a non-empty slice (mean of the middle two for an even count); sorts it.
fn median(xs: &mut [Millis]) -> Millis {
    xs.sort_unstable();
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { xs[n / 2 - 1] + (xs[n / 2] - xs[n / 2 - 1]) / 2 }
}
