//! Vantage problems: an agent failing most of its targets at once has lost its own network
//! (or its ISP filters everything); its results are then no evidence about any one target.
//! Unless its control target still answers: then the network works and the targets are
//! refused, each a block (a national firewall cutting off every provider at once).

use blockwatch_proto::time::Millis;

use super::event::{Event, EventKind, Evidence};
use super::lane::NEVER;
use super::{Detector, median};

impl Detector {
    /// Re-judges agent `a` when lane `l` changed its vantage flag (or while a down state
    /// waits to be reported), emitting `vantage_down` once the state has persisted and
    /// `vantage_up` when it clears.
    pub(super) fn update_vantage(&mut self, a: u32, l: u32, now: Millis, received: Millis, out: &mut Vec<Event>) {
        let lane = &mut self.lanes[l as usize];
        let flag = lane.flagged(self.cfg.lane_threshold) && !lane.geo_run();
        let changed = flag != lane.vantage_flag;
        lane.vantage_flag = flag;
        let agent = &self.agents[a as usize];
        if !changed && (!agent.down || agent.down_reported) {
            return;
        }

        let newest = agent.lanes.iter().map(|&(_, l)| self.lanes[l as usize].last_t).max().unwrap_or(now);
        let (mut active, mut flagged, mut control_down, mut control_up) = (0u32, 0u32, false, false);
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut control_run = (NEVER, NEVER);
        let mut interval = 0.0;
        for &(_, l) in &agent.lanes {
            let lane = &self.lanes[l as usize];
            if (lane.last_t as f64) < newest as f64 - self.cfg.silent_after * lane.interval {
                continue;
            }
            active += 1;
            interval += lane.interval;
            // A control target still answering says the agent's own network works: its
            // failing targets are refused, whatever else they have in common.
            control_up |= lane.control && !lane.vantage_flag;
            if lane.vantage_flag {
                flagged += 1;
                starts.push(lane.f_start);
                lasts.push(lane.f_last);
                if lane.control {
                    control_down = true;
                    control_run = (lane.f_start, lane.f_last);
                }
            }
        }
        // A failing control says the network is down when the targets fail with it (half of
        // them at least): a control alone failing is its own trouble, or a flaky agent's luck.
        let down = (control_down && f64::from(flagged) >= 0.5 * f64::from(active))
            || (!control_up && flagged >= 2 && f64::from(flagged) >= self.cfg.vantage_fraction * f64::from(active));
        let interval = interval / f64::from(active.max(1));

        let agent = &mut self.agents[a as usize];
        if down && !agent.down {
            agent.down = true;
            // With a control failing, the network went when the control did: the targets
            // may have been refused for long before (a firewall), which is no part of it.
            agent.down_since = if control_down { control_run.0 } else { median(&mut starts) };
            agent.down_reported = false;
        } else if !down && agent.down {
            agent.down = false;
            // What the lanes hold so far happened while the agent was down.
            for &(_, l) in &agent.lanes {
                let lane = &mut self.lanes[l as usize];
                lane.forget_until(lane.last_t);
            }
            if agent.down_reported {
                agent.down_reported = false;
                out.push(self.vantage_event(a, EventKind::VantageUp, now, received, active, flagged, interval));
            }
            return;
        }
        // Reported once the failures themselves have lasted (the upper median of the failing
        // lanes' newest failure), not merely the flags, which outlive a burst by a probe or two.
        lasts.sort_unstable();
        let failing_until =
            if control_down { control_run.1 } else { lasts.get(lasts.len() / 2).copied().unwrap_or(NEVER) };
        if agent.down
            && !agent.down_reported
            && failing_until != NEVER
            && (failing_until - agent.down_since) as f64 >= self.cfg.network_persistence * interval
        {
            agent.down_reported = true;
            let since = agent.down_since;
            out.push(self.vantage_event(a, EventKind::VantageDown, since, received, active, flagged, interval));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn vantage_event(
        &self,
        a: u32,
        kind: EventKind,
        onset: Millis,
        received: Millis,
        active: u32,
        flagged: u32,
        interval: f64,
    ) -> Event {
        let agent = &self.agents[a as usize];
        Event {
            kind,
            target: "*".into(),
            region: self.region_names.name(agent.region).to_string(),
            agent_id: Some(self.agent_names.name(a).to_string()),
            onset,
            detected_at: received,
            evidence: Evidence {
                agents: vec![self.agent_names.name(a).to_string()],
                failing: flagged,
                ok: active - flagged.min(active),
                interval_ms: interval as i64,
                ..Evidence::default()
            },
        }
    }
}
