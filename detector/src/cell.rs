//! Decisions for one (target, region) cell: block start and end, weighed across the
//! region's agents, against the other regions (outage) and against each agent's other
//! targets (vantage, see `vantage.rs`).

use blockwatch_proto::Outcome;
use blockwatch_proto::time::Millis;

use super::event::{Event, EventKind, Evidence};
use super::lane::{ChangePoint, NEVER};
use super::sample::{Sample, most_common};
use super::stats::signature;
use super::{Block, Detector, Outage, median};

/// Run failure rates are clamped to this range before they become an alternative
/// hypothesis: a run of ten failures does not prove a rate of exactly one.
const RATE_RANGE: (f64, f64) = (0.5, 0.98);

/// Window, in probe intervals, over which a region must still be failing when a block is
/// declared.
const RECENT_WINDOW: f64 = 1.5;

/// Probe ids an event names as examples.
const SAMPLE_IDS: usize = 5;

/// The other regions of a target, as [`Detector::other_regions`] counts them.
struct Others {
    failing: u32,
    ok: u32,
    regions: Vec<u32>,
    recovered: u32,
    recovered_at: Millis,
}

/// One lane's view of the change being tested.
enum Vote {
    /// Agrees, with this much evidence.
    Agree(f64),
    /// Between the two (a failing lane whose newest result succeeded).
    Undecided,
    Dissent,
}

/// How the agents of one cell currently split.
struct Split {
    /// Lanes that agree with the change being tested.
    agree: Vec<u32>,
    /// Reporting lanes that do not.
    dissent: u32,
    /// Summed statistic of the agreeing lanes.
    stat: f64,
}

impl Split {
    /// Most of the reporting agents agree, at least two when two or more report.
    fn quorum(&self) -> bool {
        let known = self.agree.len() + self.dissent as usize;
        let need = if known >= 2 { 2 } else { 1 };
        self.agree.len() >= need && self.agree.len() > self.dissent as usize
    }
}

impl Detector {
    /// Lanes of cell `c` that count now: they reported within a few intervals, their view
    /// is not still being filled by a spool flush, and their agent is not down (unless the
    /// lane's evidence is a geo signature, which a dead network cannot produce).
    fn split(&self, c: u32, received: Millis, agrees: impl Fn(&super::Lane) -> Vote) -> Split {
        let mut s = Split { agree: Vec::new(), dissent: 0, stat: 0.0 };
        for &l in &self.cells[c as usize].lanes {
            let lane = &self.lanes[l as usize];
            if !self.counts(lane, c, received) {
                continue;
            }
            match agrees(lane) {
                Vote::Agree(stat) => {
                    s.agree.push(l);
                    s.stat += stat;
                }
                Vote::Undecided => {}
                Vote::Dissent => s.dissent += 1,
            }
        }
        s
    }

    /// Whether cell `c` (not blocked) has become blocked; emits `block_started`.
    pub(super) fn evaluate_start(&mut self, c: u32, received: Millis, out: &mut Vec<Event>) {
        let strong = self.cfg.lane_threshold;
        let split = self.split(c, received, |lane| {
            if !lane.ever_answered {
                // Never reached the target: no change to see, whatever it fails with.
                Vote::Undecided
            } else if lane.leaning() && (lane.last_failed() || lane.sf >= strong) {
                Vote::Agree(lane.sf)
            } else if lane.leaning() {
                Vote::Undecided
            } else {
                Vote::Dissent
            }
        });
        if !split.quorum() {
            return;
        }
        let (mut fails, mut geo, mut forged, mut iv, mut weakest) = (0u32, 0u32, 0u32, 0.0, f64::MAX);
        let mut starts = Vec::with_capacity(split.agree.len());
        let mut lasts = Vec::with_capacity(split.agree.len());
        for &l in &split.agree {
            let lane = &self.lanes[l as usize];
            fails += lane.f_fails;
            geo += lane.f_geo;
            forged += lane.f_forged;
            iv += lane.interval;
            weakest = weakest.min(lane.sf);
            lasts.push(lane.f_last);
            starts.push(lane.f_start.max(lane.clean_since).max(self.cells[c as usize].ended));
        }
        let iv = iv / split.agree.len() as f64;
        let is_geo = geo * 2 >= fails;
        // Forged answers are interference too, though seen at the network level.
        let signed = is_geo || (geo + forged) * 2 >= fails;
        // Network failures are what noisy vantages produce too: each agreeing agent must be
        // convinced on its own, and a lone agent more so. A geo refusal or a forged answer
        // says who did it and weighs the same from any number of agents.
        let single = split.agree.len() + split.dissent as usize == 1;
        let threshold = if single && !signed { self.cfg.single_agent_threshold } else { self.cfg.block_threshold };
        if split.stat < threshold || (!signed && weakest < self.cfg.lane_threshold) {
            return;
        }
        let persistence = if is_geo {
            self.cfg.geo_persistence
        } else if signed {
            self.cfg.forgery_persistence
        } else {
            self.cfg.network_persistence
        } * iv;
        // How long the agreeing agents have been failing: the upper median of their latest
        // failures (one agent's stray failure after a blip does not stretch it) minus the
        // onset.
        lasts.sort_unstable();
        let newest = lasts[lasts.len() / 2];
        // Cheap gate on the CUSUM runs before the exact change points. The change point lies
        // between a lane's last success and its first failure, up to an interval before the
        // run starts: the gate allows for that, so it never refuses what the exact test
        // would accept.
        if ((newest - median(&mut starts)) as f64) < persistence - iv {
            return;
        }
        let Some((onset, cps)) = self.change_points(c, &split.agree, received, false, signed, None) else {
            return;
        };
        let persisted = (newest - onset) as f64;
        if persisted < persistence {
            return;
        }
        // A block is one mechanism (a firewall resetting, a black hole, a forging resolver),
        // so its failures share a family; an agent's noise is a mix. A network failure must
        // have lasted in its dominant family: a timeout after a run of resets does not stretch
        // a blip of resets.
        if !signed && !self.persisted_in_family(&split.agree, onset, persistence) {
            return;
        }
        // Still failing now, across the region: not the tail of a blip that one agent's
        // stray failure seems to extend.
        // The run's failure rate: a throttle failing half its probes is still failing when
        // a quarter of the newest results fail; a blip's tail of stray failures is not.
        let run_rate = f64::from(cps.iter().map(|p| p.fails).sum::<u32>())
            / f64::from(cps.iter().map(|p| p.fails + p.oks).sum::<u32>().max(1));
        if !self.failing_now(c, newest - (RECENT_WINDOW * iv) as Millis, received, run_rate) {
            return;
        }
        // Failures among the provider's own error answers are the provider's trouble: an
        // outage when most regions share it, nothing to report when only this one does.
        let busy: u32 = cps.iter().map(|p| p.busy).sum();
        let provider_trouble = busy * 2 >= cps.iter().map(|p| p.fails).sum::<u32>();

        let Others { mut failing, mut ok, regions, recovered, recovered_at } =
            self.other_regions(c, onset, iv, received);
        // Regions that were in an outage with this one and are fine again do not make this
        // region's failure the outage's once it has outlived them: a block that began under
        // the outage shows when it is over.
        if recovered > 0 && self.outlived(&split.agree, c, recovered_at, received, run_rate, iv) {
            failing -= recovered;
            ok += recovered;
        }
        let cell = &self.cells[c as usize];
        let t = cell.target;
        let window = self.cfg.outage_window * iv;
        // The provider's own location refusal is specific to where it is sent, however the
        // provider fares elsewhere: an outage in other regions, or the same refusal in many
        // at once (an enforcement wave), does not make it an outage.
        if !is_geo && failing > 0 && f64::from(failing) >= self.cfg.outage_fraction * f64::from(failing + ok) {
            self.cells[c as usize].outage_seen = cell.now_t;
            self.open_outage(t, c, onset, received, regions, iv, out);
            return;
        }
        if provider_trouble {
            return;
        }
        // A failure that was part of an outage a moment ago is the tail of that outage,
        // unless it outlives it by a full persistence.
        if !is_geo
            && cell.outage_seen != NEVER
            && cell.outage_seen as f64 >= onset as f64 - window
            && ((cell.now_t - cell.outage_seen) as f64) < self.cfg.network_persistence * iv
        {
            return;
        }

        let rate = (f64::from(cps.iter().map(|p| p.fails).sum::<u32>())
            / f64::from(cps.iter().map(|p| p.fails + p.oks).sum::<u32>().max(1)))
        .clamp(RATE_RANGE.0, RATE_RANGE.1);
        self.cells[c as usize].block = Some(Block { onset, rate, stale: false });
        self.set_block_rate(c, Some(rate));
        let mut ev = self.cell_evidence(&split, &cps, onset, persisted / iv, iv);
        ev.regions_failing = failing;
        ev.regions_ok = ok;
        self.add_samples(&split.agree, onset, &mut ev);
        out.push(self.cell_event(c, EventKind::BlockStarted, onset, received, ev));
    }

    /// Tests recovery in cell `c`'s lanes against `rate` (the block's failure rate), or
    /// against the agents' usual alternative once the block is over.
    fn set_block_rate(&mut self, c: u32, rate: Option<f64>) {
        for i in 0..self.cells[c as usize].lanes.len() {
            let l = self.cells[c as usize].lanes[i] as usize;
            let agent = self.lanes[l].agent as usize;
            self.lanes[l].block_rate = rate;
            let llr = self.agents[agent].baseline.llr();
            self.lanes[l].recompute(llr);
        }
    }

    /// Whether blocked cell `c` has recovered; emits `block_ended`.
    pub(super) fn evaluate_end(&mut self, c: u32, received: Millis, out: &mut Vec<Event>) {
        let Some(mut block) = self.cells[c as usize].block else { return };
        // The block's failure rate as measured since it began, when it proves lower than
        // the first runs showed (a throttle): recovery is judged against that.
        let (mut fails, mut total) = (0u32, 0u32);
        for &l in &self.cells[c as usize].lanes {
            let lane = &self.lanes[l as usize];
            if lane.f_start != NEVER && lane.f_start <= block.onset + (lane.interval as Millis) {
                fails += lane.f_fails;
                total += lane.f_fails + lane.f_oks;
            }
        }
        if total >= 20 {
            let measured = (f64::from(fails) / f64::from(total)).clamp(RATE_RANGE.0, RATE_RANGE.1);
            if measured < block.rate - 0.1 {
                block.rate = measured;
                self.cells[c as usize].block = Some(block);
                self.set_block_rate(c, Some(measured));
            }
        }
        let threshold = self.cfg.end_threshold;
        let split = self.split(c, received, |lane| {
            if lane.recovered(threshold, block.onset) { Vote::Agree(lane.sr) } else { Vote::Dissent }
        });
        // A lone agent in a partial block sees runs of successes by chance: it needs twice
        // the evidence.
        let single = split.agree.len() + split.dissent as usize == 1;
        if !split.quorum() || split.stat < if single { 2.0 * threshold } else { threshold } {
            return;
        }
        let Some((onset, cps)) = self.change_points(c, &split.agree, received, true, false, Some(block)) else {
            return;
        };
        let mut iv = 0.0;
        let mut lasts = Vec::with_capacity(split.agree.len());
        for &l in &split.agree {
            let lane = &self.lanes[l as usize];
            iv += lane.interval;
            lasts.push(lane.r_last);
        }
        let iv = iv / split.agree.len() as f64;
        let newest = median(&mut lasts);
        let persisted = (newest - onset) as f64;
        if persisted < self.cfg.end_persistence * iv {
            return;
        }
        self.cells[c as usize].block = None;
        self.set_block_rate(c, None);
        self.cells[c as usize].ended = onset;
        for i in 0..self.cells[c as usize].lanes.len() {
            let l = self.cells[c as usize].lanes[i];
            self.lanes[l as usize].forget_until(onset);
        }
        let ev = self.cell_evidence(&split, &cps, onset, persisted / iv, iv);
        out.push(self.cell_event(c, EventKind::BlockEnded, onset, received, ev));
    }

    /// Blocks none of whose agents has reported for `stale_after` probe intervals: each gets
    /// one `block_stale` (onset: the newest result its agents sent).
    pub(super) fn sweep_stale(&mut self, received: Millis, out: &mut Vec<Event>) {
        for c in 0..self.cells.len() {
            let cell = &self.cells[c];
            if cell.block.is_none_or(|b| b.stale) {
                continue;
            }
            let (mut newest, mut iv, mut agents) = (NEVER, 0.0f64, Vec::new());
            for &l in &cell.lanes {
                let lane = &self.lanes[l as usize];
                if lane.control {
                    continue;
                }
                if lane.last_t != NEVER && lane.fresh(received, self.cfg.stale_after) {
                    newest = NEVER;
                    break;
                }
                newest = newest.max(lane.last_t);
                iv = iv.max(lane.interval);
                agents.push(self.agent_names.name(lane.agent).to_string());
            }
            if newest == NEVER {
                continue;
            }
            agents.sort();
            if let Some(b) = self.cells[c].block.as_mut() {
                b.stale = true;
            }
            let ev = Evidence { agents, interval_ms: iv as i64, ..Evidence::default() };
            out.push(self.cell_event(c as u32, EventKind::BlockStale, newest, received, ev));
        }
    }

    /// Failing results after `since` among the reporting lanes of cell `c`, at least half as
    /// often as the run being tested failed.
    fn failing_now(&self, c: u32, since: Millis, received: Millis, run_rate: f64) -> bool {
        let (mut fails, mut oks) = (0, 0);
        for &l in &self.cells[c as usize].lanes {
            let lane = &self.lanes[l as usize];
            if self.counts(lane, c, received) {
                let (f, o) = lane.counts_after(since);
                fails += f;
                oks += o;
            }
        }
        // At least half the run's own rate (for a run failing every probe: half of them).
        f64::from(fails) >= 0.5 * run_rate.min(1.0) * f64::from(fails + oks) && fails > 0
    }

    /// Whether a lane of cell `c` counts now (see [`Detector::split`]).
    fn counts(&self, lane: &super::Lane, c: u32, received: Millis) -> bool {
        let cell = &self.cells[c as usize];
        (lane.last_t as f64) >= cell.now_t as f64 - self.cfg.silent_after * lane.interval
            && lane.fresh(received, self.cfg.max_gap)
            && (!self.agents[lane.agent as usize].down || lane.geo_run())
    }

    /// Maximum-likelihood change points of the agreeing lanes, and their median. `None` when
    /// a lane has no usable change point, or its change point is not pinned by the result
    /// before it while late results are still arriving (a spool flush in random order: the
    /// run's start may be among what has not arrived yet).
    /// For a start (`block` is `None`) a lane looks back to where its vantage problem, if
    /// any, ended; for an end, to the block's onset. `signed`: the region's failures are geo
    /// refusals or forged answers, so plain network failures say nothing about the onset.
    #[allow(clippy::too_many_arguments)]
    fn change_points(
        &self,
        c: u32,
        lanes: &[u32],
        received: Millis,
        recovery: bool,
        signed: bool,
        block: Option<Block>,
    ) -> Option<(Millis, Vec<ChangePoint>)> {
        let mut cps = Vec::with_capacity(lanes.len());
        let mut onsets = Vec::with_capacity(lanes.len());
        for &l in lanes {
            let lane = &self.lanes[l as usize];
            let (since, rate) = match block {
                Some(b) => (b.onset, b.rate),
                None if lane.geo_run() => (self.cells[c as usize].ended, lane.run_rate()),
                None => (lane.clean_since.max(self.cells[c as usize].ended), lane.run_rate()),
            };
            let rate = rate.clamp(RATE_RANGE.0, RATE_RANGE.1);
            let llr = self.agents[lane.agent as usize].baseline.llr().with_p1(rate);
            let max_gap = self.cfg.max_gap * lane.interval;
            let cp = lane.change_point(recovery, signed, &llr, since, max_gap)?;
            if !cp.pinned && lane.late_received != NEVER && ((received - lane.late_received) as f64) <= max_gap {
                return None;
            }
            onsets.push(cp.onset);
            cps.push(cp);
        }
        Some((median(&mut onsets), cps))
    }

    /// Counts the other regions probing the target of cell `c` that fail at once with it
    /// (their failure began within the outage window of `onset`), and those that are fine.
    /// Regions with an open block of their own count as neither. Regions counted as failing
    /// only because they were part of an outage a moment ago (they are fine now) are also
    /// counted in `recovered`, with the latest moment one of them was in it.
    fn other_regions(&self, c: u32, onset: Millis, iv: f64, received: Millis) -> Others {
        let cell = &self.cells[c as usize];
        let window = self.cfg.outage_window * iv;
        let (mut failing, mut ok, mut regions) = (0, 0, Vec::new());
        let (mut recovered, mut recovered_at) = (0, NEVER);
        for &oc in &self.targets[cell.target as usize].cells {
            let other = &self.cells[oc as usize];
            if oc == c || other.block.is_some() {
                continue;
            }
            let recent_outage = other.outage_seen != NEVER && other.outage_seen as f64 >= onset as f64 - window;
            let threshold = self.cfg.lane_threshold;
            // A region the provider is answering with errors is in the same trouble. One
            // that answers again (its last two probes) is not failing now, however high its
            // statistic still stands.
            let split = self.split(oc, received, |lane| {
                if (lane.flagged(threshold) && lane.leaning() && lane.f_start as f64 >= onset as f64 - window)
                    || lane.provider_troubled()
                {
                    Vote::Agree(lane.sf)
                } else {
                    Vote::Dissent
                }
            });
            let known = split.agree.len() + split.dissent as usize;
            let failing_now = !split.agree.is_empty() && split.agree.len() > split.dissent as usize;
            if recent_outage || failing_now {
                failing += 1;
                regions.push(other.region);
                if !failing_now {
                    recovered += 1;
                    recovered_at = recovered_at.max(other.outage_seen);
                }
            } else if known > 0 {
                ok += 1;
            }
        }
        Others { failing, ok, regions, recovered, recovered_at }
    }

    /// Records cell `c` as part of an outage of target `t`, emitting `outage_started` for a
    /// new one.
    #[allow(clippy::too_many_arguments)]
    fn open_outage(
        &mut self,
        t: u32,
        c: u32,
        onset: Millis,
        received: Millis,
        mut regions: Vec<u32>,
        iv: f64,
        out: &mut Vec<Event>,
    ) {
        let region = self.cells[c as usize].region;
        regions.push(region);
        regions.sort_unstable();
        let target = &mut self.targets[t as usize];
        match &mut target.outage {
            Some(o) => {
                for r in regions {
                    if !o.regions.contains(&r) {
                        o.regions.push(r);
                    }
                }
            }
            // A failure that began before the last outage ended is that outage's tail.
            None if onset <= target.outage_ended => {}
            None => {
                let names = regions.iter().map(|&r| self.region_names.name(r).to_string()).collect();
                target.outage = Some(Outage { regions });
                out.push(Event {
                    kind: EventKind::OutageStarted,
                    target: self.target_names.name(t).to_string(),
                    region: "*".into(),
                    agent_id: None,
                    onset,
                    detected_at: received,
                    evidence: Evidence { regions: names, interval_ms: iv as i64, ..Evidence::default() },
                });
            }
        }
    }

    /// A provider answering its own errors (5xx) in most regions at once, for a network
    /// persistence, is an outage: reported as one (`outage_started`), never a block.
    pub(super) fn maybe_troubled_outage(
        &mut self,
        t: u32,
        c: u32,
        now: Millis,
        received: Millis,
        out: &mut Vec<Event>,
    ) {
        let (mut troubled, mut fine, mut iv, mut lanes) = (Vec::new(), 0u32, 0.0, 0u32);
        for &oc in &self.targets[t as usize].cells {
            let split = self
                .split(oc, received, |lane| if lane.provider_troubled() { Vote::Agree(1.0) } else { Vote::Dissent });
            for &l in &split.agree {
                iv += self.lanes[l as usize].interval;
                lanes += 1;
            }
            if split.agree.len() > split.dissent as usize {
                troubled.push(self.cells[oc as usize].region);
            } else if !split.agree.is_empty() || split.dissent > 0 {
                fine += 1;
            }
        }
        let widespread = troubled.len() >= 2
            && troubled.len() as f64 >= self.cfg.outage_fraction * (troubled.len() as f64 + f64::from(fine));
        let target = &mut self.targets[t as usize];
        if !widespread {
            target.troubled_since = NEVER;
            return;
        }
        if target.troubled_since == NEVER {
            target.troubled_since = now;
        }
        let iv = iv / f64::from(lanes.max(1));
        let since = target.troubled_since;
        // Two of the last four answers were errors when it first held: the trouble began
        // about a probe interval before.
        if ((now - since) as f64) >= self.cfg.network_persistence * iv {
            let onset = since - iv as Millis;
            self.cells[c as usize].outage_seen = self.cells[c as usize].now_t;
            troubled.retain(|&r| r != self.cells[c as usize].region);
            self.open_outage(t, c, onset, received, troubled, iv, out);
        }
    }

    /// Closes the outage of target `t` once none of its regions has a failing lane.
    pub(super) fn maybe_end_outage(&mut self, t: u32, now: Millis, received: Millis, out: &mut Vec<Event>) {
        let Some(outage) = &self.targets[t as usize].outage else { return };
        let threshold = self.cfg.lane_threshold;
        for &c in &self.targets[t as usize].cells {
            let cell = &self.cells[c as usize];
            if outage.regions.contains(&cell.region)
                && cell.lanes.iter().any(|&l| {
                    let lane = &self.lanes[l as usize];
                    lane.flagged(threshold) || lane.provider_troubled()
                })
            {
                return;
            }
        }
        let names = outage.regions.iter().map(|&r| self.region_names.name(r).to_string()).collect();
        self.targets[t as usize].outage = None;
        self.targets[t as usize].troubled_since = NEVER;
        self.targets[t as usize].outage_ended = now;
        out.push(Event {
            kind: EventKind::OutageEnded,
            target: self.target_names.name(t).to_string(),
            region: "*".into(),
            agent_id: None,
            onset: now,
            detected_at: received,
            evidence: Evidence { regions: names, ..Evidence::default() },
        });
    }

    /// Whether cell `c` has gone on failing on its own since `since` (when the other regions
    /// of an outage were last in it): its failures after that moment last a network
    /// persistence in one family, and fail at least half as often as the run did. A blip
    /// just after the outage is no such failure.
    fn outlived(&self, lanes: &[u32], c: u32, since: Millis, received: Millis, run_rate: f64, iv: f64) -> bool {
        let mut firsts: Vec<Millis> =
            lanes.iter().filter_map(|&l| self.lanes[l as usize].first_failure_after(since)).collect();
        if firsts.len() < lanes.len() || firsts.is_empty() {
            return false;
        }
        let own_start = median(&mut firsts);
        self.persisted_in_family(lanes, own_start, self.cfg.network_persistence * iv)
            && self.failing_now(c, since, received, run_rate)
    }

    /// Whether the agreeing lanes' failures of their dominant family (since `onset`) span
    /// `persistence`, by the upper median of each lane's newest one.
    fn persisted_in_family(&self, lanes: &[u32], onset: Millis, persistence: f64) -> bool {
        let mut counts: Vec<(&'static str, u32)> = Vec::new();
        for &l in lanes {
            for o in self.lanes[l as usize].failures_since(onset) {
                let f = super::lane::outcome_family(o);
                match counts.iter_mut().find(|(name, _)| *name == f) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((f, 1)),
                }
            }
        }
        let Some(&(family, _)) = counts.iter().max_by_key(|&&(_, n)| n) else { return false };
        let mut lasts: Vec<Millis> =
            lanes.iter().filter_map(|&l| self.lanes[l as usize].newest_failure_of(onset, family)).collect();
        if lasts.is_empty() {
            return false;
        }
        lasts.sort_unstable();
        (lasts[lasts.len() / 2] - onset) as f64 >= persistence
    }

    fn cell_evidence(&self, split: &Split, cps: &[ChangePoint], onset: Millis, persisted: f64, iv: f64) -> Evidence {
        let mut counts = [0u32; 128];
        for &l in &split.agree {
            for o in self.lanes[l as usize].failures_since(onset) {
                counts[usize::from(o & 127)] += 1;
            }
        }
        let dominant = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .max_by_key(|&(i, n)| (*n, std::cmp::Reverse(i)))
            .and_then(|(i, _)| Outcome::try_from(i as i32).ok());
        let mut agents: Vec<String> =
            split.agree.iter().map(|&l| self.agent_names.name(self.lanes[l as usize].agent).to_string()).collect();
        agents.sort();
        Evidence {
            agents,
            dissenting_agents: split.dissent,
            failing: cps.iter().map(|p| p.fails).sum(),
            ok: cps.iter().map(|p| p.oks).sum(),
            dominant_outcome: dominant.map(|o| o.name().to_string()).unwrap_or_default(),
            signature: dominant.map(|o| signature(o).to_string()).unwrap_or_default(),
            statistic: (split.stat * 100.0).round() / 100.0,
            persisted_intervals: (persisted * 100.0).round() / 100.0,
            interval_ms: iv as i64,
            ..Evidence::default()
        }
    }

    /// What the agreeing lanes' failing probes since `onset` answered: the commonest HTTP
    /// status and provider code, and a few probe ids, newest first.
    fn add_samples(&self, lanes: &[u32], onset: Millis, ev: &mut Evidence) {
        let mut kept: Vec<&Sample> = lanes.iter().flat_map(|&l| self.lanes[l as usize].samples.since(onset)).collect();
        kept.sort_by(|a, b| b.t.cmp(&a.t).then_with(|| a.probe_id.cmp(&b.probe_id)));
        ev.http_status = most_common(kept.iter().map(|s| s.http_status), &0).unwrap_or(0);
        ev.provider_code = most_common(kept.iter().map(|s| s.provider_code.as_str()), &"").unwrap_or("").to_string();
        ev.sample_probe_ids = kept.iter().take(SAMPLE_IDS).map(|s| s.probe_id.clone()).collect();
    }

    fn cell_event(&self, c: u32, kind: EventKind, onset: Millis, received: Millis, evidence: Evidence) -> Event {
        let cell = &self.cells[c as usize];
        Event {
            kind,
            target: self.target_names.name(cell.target).to_string(),
            region: self.region_names.name(cell.region).to_string(),
            agent_id: None,
            onset,
            detected_at: received,
            evidence,
        }
    }
}
