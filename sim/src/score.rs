//! Scores a detector run against a generated trace's labels: blocks found and missed, false alarms,
//! detection delay and onset error in probe intervals, block ends found and false ones.

use std::collections::HashSet;

use blockwatch_detector::{Event, EventKind};

use super::{Trace, TruthBlock};

/// Results of one or more traces.
#[derive(Debug, Default, Clone)]
pub struct Score {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub delays: Vec<f64>,
    pub onset_err: Vec<f64>,
    pub end_expected: usize,
    pub end_tp: usize,
    pub end_fp: usize,
    /// For each end found: from the true end to the decision, in probe intervals.
    pub end_delays: Vec<f64>,
    /// Provider outages labelled, reported (`outage_started` on the target within its span)
    /// and reported falsely; only for traces that label them.
    pub outages: Span,
    /// The same for vantage problems (`vantage_down` of the agent).
    pub vantages: Span,
    pub notes: Vec<String>,
}

/// Labelled spans of one kind against the events reporting them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Span {
    pub labelled: usize,
    pub found: usize,
    pub false_: usize,
}

impl Span {
    fn add(&mut self, o: &Span) {
        self.labelled += o.labelled;
        self.found += o.found;
        self.false_ += o.false_;
    }
    pub fn recall(&self) -> f64 {
        if self.labelled == 0 { 1.0 } else { self.found as f64 / self.labelled as f64 }
    }
}

impl Score {
    pub fn add(&mut self, o: &Score) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.delays.extend(&o.delays);
        self.onset_err.extend(&o.onset_err);
        self.end_expected += o.end_expected;
        self.end_tp += o.end_tp;
        self.end_fp += o.end_fp;
        self.end_delays.extend(&o.end_delays);
        self.outages.add(&o.outages);
        self.vantages.add(&o.vantages);
        self.notes.extend(o.notes.iter().cloned());
    }
    pub fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fp) as f64 }
    }
    pub fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fn_) as f64 }
    }
    pub fn end_recall(&self) -> f64 {
        if self.end_expected == 0 { 1.0 } else { self.end_tp as f64 / self.end_expected as f64 }
    }
    pub fn delay(&self, q: f64) -> f64 {
        pct(&self.delays, q)
    }
    pub fn onset(&self, q: f64) -> f64 {
        pct(&self.onset_err.iter().map(|x| x.abs()).collect::<Vec<_>>(), q)
    }
    pub fn end_delay(&self, q: f64) -> f64 {
        pct(&self.end_delays, q)
    }
    pub fn summary(&self) -> String {
        let mut line = self.blocks_summary();
        for (name, sp) in [("outages", self.outages), ("vantages", self.vantages)] {
            if sp.labelled > 0 || sp.false_ > 0 {
                line.push_str(&format!(" {name} {}/{} false {}", sp.found, sp.labelled, sp.false_));
            }
        }
        line
    }

    fn blocks_summary(&self) -> String {
        format!(
            "blocks {} tp {} fp {} fn {} precision {:.3} recall {:.3} delay median {:.2} p95 {:.2} onset median {:.2} p95 {:.2} end recall {:.2} ({}/{}) false ends {} end delay median {:.2} p95 {:.2}",
            self.tp + self.fn_,
            self.tp,
            self.fp,
            self.fn_,
            self.precision(),
            self.recall(),
            self.delay(0.5),
            self.delay(0.95),
            self.onset(0.5),
            self.onset(0.95),
            self.end_recall(),
            self.end_tp,
            self.end_expected,
            self.end_fp,
            self.end_delay(0.5),
            self.end_delay(0.95)
        )
    }
}

/// Percentile as score.py takes it (nearest rank, Python rounding of the index).
fn pct(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = (q * (v.len() - 1) as f64).round_ties_even() as usize;
    v[idx.min(v.len() - 1)]
}

/// Scores the events of one trace.
pub fn score(trace: &Trace, events: &[Event]) -> Score {
    score_part(trace, &trace.blocks, events, true)
}

/// Scores the blocks `pick` chooses, with the events of their (target, region) cells, apart
/// from the rest of the trace (every other block and event, outages and vantage problems):
/// `(picked, rest)`.
pub fn score_split(trace: &Trace, events: &[Event], pick: impl Fn(&TruthBlock) -> bool) -> (Score, Score) {
    let (picked, rest): (Vec<TruthBlock>, Vec<TruthBlock>) = trace.blocks.iter().cloned().partition(|b| pick(b));
    let in_picked = |e: &Event| picked.iter().any(|b| b.target == e.target && b.region == e.region);
    let (mine, others): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| in_picked(e));
    (score_part(trace, &picked, &mine, false), score_part(trace, &rest, &others, true))
}

fn score_part(trace: &Trace, blocks: &[TruthBlock], events: &[Event], others: bool) -> Score {
    let iv = trace.interval_ms as f64;
    let tol = 2.0 * iv;
    let mut s = Score::default();
    let started: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::BlockStarted).collect();
    let ended: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::BlockEnded).collect();
    let mut used = HashSet::new();
    let mut blocks = blocks.to_vec();
    blocks.sort_by_key(|b| b.start);
    for b in &blocks {
        let e = b.end.unwrap_or(trace.end) as f64;
        let st = b.start as f64;
        let cands: Vec<usize> = (0..started.len())
            .filter(|i| !used.contains(i))
            .filter(|&i| {
                let ev = started[i];
                ev.target == b.target && ev.region == b.region && st - tol <= ev.onset as f64 && (ev.onset as f64) < e
            })
            .collect();
        let Some(&i) = cands.iter().min_by_key(|&&i| started[i].detected_at) else {
            s.fn_ += 1;
            s.notes.push(format!(
                "{}: missed {}@{} from +{:.1}iv",
                trace.name,
                b.target,
                b.region,
                (st - trace.start as f64) / iv
            ));
            continue;
        };
        used.insert(i);
        s.tp += 1;
        let shown = b.visible.unwrap_or(b.start);
        let seen = trace
            .records
            .iter()
            .filter(|r| r.target == b.target && r.region == b.region && r.started_at >= shown)
            .map(|r| r.received_at)
            .min()
            .unwrap_or(shown);
        // Counted from when the block could be seen (an outage may have hidden its start).
        let v = shown as f64;
        let delay = (started[i].detected_at as f64 - v.max(seen as f64)) / iv;
        s.delays.push(delay);
        s.onset_err.push((started[i].onset as f64 - v) / iv);
        if delay > 6.0 {
            s.notes.push(format!("{}: slow {}@{} delay {:.2}", trace.name, b.target, b.region, delay));
        }
    }
    for (i, ev) in started.iter().enumerate() {
        if !used.contains(&i) {
            s.fp += 1;
            s.notes.push(format!(
                "{}: false alarm {}@{} onset +{:.1}iv ({:?})",
                trace.name,
                ev.target,
                ev.region,
                (ev.onset - trace.start) as f64 / iv,
                ev.evidence.agents
            ));
        }
    }
    let mut used_end = HashSet::new();
    for b in &blocks {
        let Some(e) = b.end else { continue };
        s.end_expected += 1;
        let cand = (0..ended.len())
            .filter(|i| !used_end.contains(i))
            .filter(|&i| {
                ended[i].target == b.target && ended[i].region == b.region && ((ended[i].onset - e) as f64).abs() <= tol
            })
            .min_by_key(|&i| ended[i].detected_at);
        match cand {
            Some(i) => {
                used_end.insert(i);
                s.end_tp += 1;
                s.end_delays.push((ended[i].detected_at - e) as f64 / iv);
            }
            None => s.notes.push(format!(
                "{}: missed end {}@{} at +{:.1}iv",
                trace.name,
                b.target,
                b.region,
                (e - trace.start) as f64 / iv
            )),
        }
    }
    if others && (!trace.outages.is_empty() || !trace.vantages.is_empty()) {
        s.outages = spans(trace, events, EventKind::OutageStarted, &trace.outages, |e| &e.target, &mut s.notes);
        s.vantages = spans(
            trace,
            events,
            EventKind::VantageDown,
            &trace.vantages,
            |e| e.agent_id.as_deref().unwrap_or(""),
            &mut s.notes,
        );
    }
    s.end_fp = ended.len() - used_end.len();
    for (i, ev) in ended.iter().enumerate() {
        if !used_end.contains(&i) {
            s.notes.push(format!(
                "{}: false end {}@{} onset +{:.1}iv",
                trace.name,
                ev.target,
                ev.region,
                (ev.onset - trace.start) as f64 / iv
            ));
        }
    }
    s
}

/// Labelled `(key, start, end)` spans against the events of `kind`, matched by `key_of` and an
/// onset from five intervals before the span to its end.
fn spans(
    trace: &Trace,
    events: &[Event],
    kind: EventKind,
    labels: &[(String, i64, i64)],
    key_of: impl Fn(&Event) -> &str,
    notes: &mut Vec<String>,
) -> Span {
    let slack = 5 * trace.interval_ms;
    let evs: Vec<&Event> = events.iter().filter(|e| e.kind == kind).collect();
    let mut used = HashSet::new();
    let mut span = Span { labelled: labels.len(), ..Span::default() };
    for (key, start, end) in labels {
        let hit = (0..evs.len()).find(|&i| {
            !used.contains(&i) && key_of(evs[i]) == key && evs[i].onset >= start - slack && evs[i].onset <= *end
        });
        match hit {
            Some(i) => {
                used.insert(i);
                span.found += 1;
            }
            None => notes.push(format!("{}: missed {} {key}", trace.name, kind.name())),
        }
    }
    for (i, e) in evs.iter().enumerate() {
        if !used.contains(&i) {
            span.false_ += 1;
            notes.push(format!(
                "{}: false {} {}@{} onset +{:.1}iv",
                trace.name,
                kind.name(),
                key_of(e),
                e.region,
                (e.onset - trace.start) as f64 / trace.interval_ms as f64
            ));
        }
    }
    span
}
