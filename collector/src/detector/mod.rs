//! The block detector: a pure state machine over the result stream.
//!
//! `observe(result) -> events`, with no clock, no I/O and no randomness: time comes in with
//! the data (`started_at` is event time, `received_at` is decision time), so the live
//! collector and `replay` over a file produce the same events.
//!
//! This first version decides per (target, region) from each agent's streak of consecutive
//! block-like failures, and refuses to call a block while the same target fails in every
//! region (an outage).

mod event;

use std::collections::HashMap;

use blockwatch_proto::Outcome;
use blockwatch_proto::time::Millis;
use serde::Deserialize;

pub use event::{Event, EventKind, Evidence};

/// Detector settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Consecutive failures per agent before its region counts as failing. Default 2.
    pub streak: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig { streak: 2 }
    }
}

/// One result as the detector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub probe_id: &'a str,
    pub agent_id: &'a str,
    pub region: &'a str,
    pub target: &'a str,
    pub started_at: Millis,
    pub received_at: Millis,
    pub outcome: Outcome,
    pub control: bool,
    pub confirmation: bool,
}

#[derive(Default)]
struct AgentStreak {
    fail_streak: u32,
    ok_streak: u32,
    first_fail: Millis,
    first_ok: Millis,
    last_started: Millis,
    geo: u32,
}

#[derive(Default)]
struct Cell {
    agents: HashMap<String, AgentStreak>,
    blocked: bool,
}

/// All detector state; grows with the number of (agent, target) pairs only.
pub struct Detector {
    config: DetectorConfig,
    cells: HashMap<(String, String), Cell>,
}

fn is_block_evidence(o: Outcome) -> bool {
    o != Outcome::Ok && !o.is_provider_noise()
}

impl Detector {
    /// A detector with no history.
    pub fn new(config: DetectorConfig) -> Detector {
        Detector {
            config,
            cells: HashMap::new(),
        }
    }

    /// Feeds one result; pushes any decisions onto `out`.
    pub fn observe(&mut self, obs: &Observation<'_>, out: &mut Vec<Event>) {
        if obs.control {
            return;
        }
        let key = (obs.target.to_string(), obs.region.to_string());
        let cell = self.cells.entry(key).or_default();
        let a = cell.agents.entry(obs.agent_id.to_string()).or_default();
        if obs.started_at < a.last_started {
            return;
        }
        a.last_started = obs.started_at;
        if is_block_evidence(obs.outcome) {
            if a.fail_streak == 0 {
                a.first_fail = obs.started_at;
                a.geo = 0;
            }
            a.fail_streak += 1;
            a.ok_streak = 0;
            a.geo += u32::from(obs.outcome.is_geo_signature());
        } else if obs.outcome == Outcome::Ok {
            if a.ok_streak == 0 {
                a.first_ok = obs.started_at;
            }
            a.ok_streak += 1;
            a.fail_streak = 0;
        }
        let need = self.config.streak;
        let all_failing = cell.agents.values().all(|a| a.fail_streak >= need);
        let all_ok = cell.agents.values().all(|a| a.ok_streak >= need);
        if !cell.blocked && all_failing {
            let elsewhere_ok = self
                .cells
                .iter()
                .any(|((t, r), c)| t == obs.target && r != obs.region && c.agents.values().any(|a| a.ok_streak > 0));
            let cell = self.cells.get_mut(&(obs.target.to_string(), obs.region.to_string())).expect("cell exists");
            if elsewhere_ok {
                cell.blocked = true;
                out.push(Event::new(EventKind::BlockStarted, obs, cell_onset(cell, |a| a.first_fail), evidence(cell)));
            }
        } else if cell.blocked && all_ok {
            cell.blocked = false;
            out.push(Event::new(EventKind::BlockEnded, obs, cell_onset(cell, |a| a.first_ok), evidence(cell)));
        }
    }
}

fn cell_onset(cell: &Cell, f: impl Fn(&AgentStreak) -> Millis) -> Millis {
    cell.agents.values().map(f).min().unwrap_or_default()
}

fn evidence(cell: &Cell) -> Evidence {
    let mut agents: Vec<String> = cell.agents.keys().cloned().collect();
    agents.sort();
    Evidence {
        agents,
        failing: cell.agents.values().map(|a| a.fail_streak).sum(),
        geo_signatures: cell.agents.values().map(|a| a.geo).sum(),
    }
}
