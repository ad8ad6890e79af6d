//! One (agent, target) lane: its recent results in event-time order and two CUSUM
//! statistics over them, one that rises when the lane starts failing and one that rises when
//! it recovers.

use std::collections::VecDeque;

use blockwatch_proto::time::Millis;

use super::sample::Samples;
use super::stats::{Class, Llr};

/// One result as the lane keeps it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    /// `started_at` (event time).
    pub t: Millis,
    /// Hash of the probe id, to recognise re-sent results.
    pub id: u32,
    /// The outcome, as its protobuf number.
    pub outcome: u8,
    pub class: Class,
}

/// What happened to a result offered to a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Newest result of the lane.
    Appended,
    /// Slotted in among older results (a late result).
    Inserted,
    /// Already seen (same started_at and probe id).
    Duplicate,
    /// Older than everything the lane keeps.
    Stale,
}

/// No time: the statistic is at zero.
pub(crate) const NEVER: Millis = Millis::MIN;
/// Beyond any time a result can carry (year 9999 is 2.5e14 ms).
pub(crate) const MAX_TIME: Millis = 1 << 50;

/// Caps keep the statistics quick to turn around when the state changes, and make the
/// statistics a function of the recent window only (so a recomputation after a late result
/// agrees with the incremental one).
const ONSET_CAP: f64 = 24.0;
/// The recovery statistic's cap, in multiples of the end threshold (a lone agent needs twice
/// the threshold).
const SR_CAP: f64 = 3.0;

/// Among change points whose likelihood is within this many nats of the best, the latest is
/// taken: they form the change point's 95 % likelihood-ratio confidence set (χ²₁ = 3.84, over
/// two), and an onset pulled early by the agent's noise just before the change is worse than
/// one a probe late.
const ONSET_SLACK: f64 = 1.92;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Lane {
    pub agent: u32,
    pub cell: u32,
    pub control: bool,
    /// The provider has answered this lane at least once (ok, its own error, or its own
    /// location refusal, which is a block however long it has been there): without that, a
    /// failing lane has no "before" and its failures are no change (a vantage that never
    /// worked, such as an agent missing the CA its targets need).
    pub ever_answered: bool,
    /// While its cell is blocked: the block's failure rate, which recovery is tested
    /// against (a throttled target failing half its probes shows runs of successes that
    /// are no recovery).
    pub block_rate: Option<f64>,
    /// The newest failing results, whole, for the evidence.
    pub samples: Samples,
    buf: VecDeque<Entry>,
    cap: usize,
    /// Inferred probe interval (ms).
    pub interval: f64,
    gaps: u32,
    /// Typical `received_at - started_at` of fresh results (ms).
    pub lag: f64,
    lags: u32,
    /// Newest `started_at` kept.
    pub last_t: Millis,

    /// CUSUM of "blocked" against "as usual", and the run it covers.
    pub sf: f64,
    pub f_start: Millis,
    pub f_last: Millis,
    pub f_fails: u32,
    pub f_oks: u32,
    pub f_geo: u32,
    /// Forged answers during the run.
    pub f_forged: u32,
    /// Provider-noise answers during the run.
    pub f_busy: u32,

    /// CUSUM of "recovered" against "blocked", its run and latest success.
    pub sr: f64,
    pub r_start: Millis,
    pub r_last: Millis,
    sr_cap: f64,

    /// Last eight non-neutral results, newest in bit 0, 1 = failure.
    recent: u8,
    /// Last eight non-neutral results, newest in bit 0, 1 = provider noise (5xx, 429).
    recent_busy: u8,
    /// Counted as failing in its agent's vantage check.
    pub vantage_flag: bool,
    /// `received_at` of the latest result that arrived out of order.
    pub late_received: Millis,
    /// Results before this time are explained by the agent's own vantage problem and are
    /// no evidence of a block.
    pub clean_since: Millis,
}

impl Lane {
    /// What a lane read back from a snapshot must hold for its methods to be sound: results
    /// in time order, within the history it keeps.
    pub(crate) fn check(&self, cap: usize) -> Result<(), String> {
        if self.cap != cap.max(8) || self.buf.len() > self.cap {
            return Err(format!(
                "{} results kept of at most {} (the configuration keeps {cap})",
                self.buf.len(),
                self.cap
            ));
        }
        // Times are milliseconds of years 1..=9999 or NEVER, so differences of them cannot
        // overflow.
        let time = |t: Millis| t == NEVER || t.abs() <= MAX_TIME;
        if ![self.last_t, self.f_start, self.f_last, self.r_start, self.r_last, self.late_received, self.clean_since]
            .into_iter()
            .chain(self.buf.iter().map(|e| e.t))
            .all(time)
        {
            return Err("a time out of range".to_string());
        }
        if self.buf.iter().zip(self.buf.iter().skip(1)).any(|(a, b)| a.t > b.t) {
            return Err("results out of time order".to_string());
        }
        Ok(())
    }

    pub(crate) fn new(agent: u32, cell: u32, cap: usize, interval: f64, end_threshold: f64) -> Lane {
        Lane {
            agent,
            cell,
            control: false,
            buf: VecDeque::with_capacity(cap.min(32)),
            cap: cap.max(8),
            interval,
            gaps: 0,
            lag: 0.0,
            lags: 0,
            last_t: NEVER,
            sf: 0.0,
            f_start: NEVER,
            f_last: NEVER,
            f_fails: 0,
            f_oks: 0,
            f_geo: 0,
            f_forged: 0,
            f_busy: 0,
            sr: 0.0,
            r_start: NEVER,
            r_last: NEVER,
            sr_cap: end_threshold * SR_CAP,
            recent: 0,
            recent_busy: 0,
            vantage_flag: false,
            late_received: NEVER,
            clean_since: NEVER,
            ever_answered: false,
            block_rate: None,
            samples: Samples::default(),
        }
    }

    /// Slots a result in by `started_at`, recognising re-sends.
    pub(crate) fn insert(&mut self, e: Entry, received: Millis, confirmation: bool) -> Insert {
        self.ever_answered |= matches!(e.class, Class::Ok | Class::Busy | Class::Geo);
        let Some(back) = self.buf.back().copied() else {
            self.buf.push_back(e);
            self.last_t = e.t;
            self.learn_lag(received, e.t);
            return Insert::Appended;
        };
        if e.t > back.t {
            // Confirmation probes are extra, off-schedule results: they would shrink the
            // interval estimate.
            if !confirmation {
                self.learn_gap((e.t - back.t) as f64);
            }
            self.push_back(e);
            self.learn_lag(received, e.t);
            return Insert::Appended;
        }
        let pos = self.buf.partition_point(|x| x.t <= e.t);
        let mut i = pos;
        while i > 0 && self.buf[i - 1].t == e.t {
            if self.buf[i - 1].id == e.id {
                return Insert::Duplicate;
            }
            i -= 1;
        }
        if pos == self.buf.len() {
            self.push_back(e);
            return Insert::Appended;
        }
        if pos == 0 && self.buf.len() >= self.cap {
            return Insert::Stale;
        }
        self.buf.insert(pos, e);
        if self.buf.len() > self.cap {
            self.buf.pop_front();
        }
        self.late_received = received;
        Insert::Inserted
    }

    fn push_back(&mut self, e: Entry) {
        self.buf.push_back(e);
        if self.buf.len() > self.cap {
            self.buf.pop_front();
        }
        self.last_t = e.t;
    }

    /// Interval: mean of the first gaps, then a slow average of gaps clamped around the
    /// current estimate (a missed probe or a pause moves it little; a real change of plan
    /// moves it geometrically).
    fn learn_gap(&mut self, gap: f64) {
        if gap <= 0.0 {
            return;
        }
        self.gaps += 1;
        if self.gaps == 1 {
            self.interval = gap;
            return;
        }
        let g = gap.clamp(self.interval * 0.3, self.interval * 3.0);
        let w = 1.0 / f64::from(self.gaps.min(16));
        self.interval += (g - self.interval) * w;
    }

    /// Typical delivery lag, tracking the low end: a spool flush (huge lags) barely moves
    /// it, a clock step is followed within a few dozen results.
    fn learn_lag(&mut self, received: Millis, started: Millis) {
        let lag = (received - started) as f64;
        if self.lags == 0 {
            self.lag = lag;
        } else {
            self.lag = lag.min(self.lag + self.interval / 16.0);
        }
        self.lags = self.lags.saturating_add(1);
    }

    /// Advances both statistics by the newest result.
    pub(crate) fn step(&mut self, e: &Entry, llr: &Llr) {
        match e.class {
            Class::Neutral => return,
            Class::Busy => {
                self.recent_busy = (self.recent_busy << 1) | 1;
                if self.sf > 0.0 {
                    self.f_busy += 1;
                }
                return;
            }
            _ => self.recent_busy <<= 1,
        }
        let fail = e.class.is_failure();
        self.recent = (self.recent << 1) | u8::from(fail);

        let before = self.sf;
        self.sf = (self.sf + llr.onset(e.class)).min(ONSET_CAP);
        if self.sf <= 0.0 {
            self.reset_onset();
        } else {
            if before <= 0.0 {
                self.f_start = e.t;
            }
            if fail {
                self.f_fails += 1;
                self.f_last = e.t;
                self.f_geo += u32::from(e.class == Class::Geo);
                self.f_forged += u32::from(e.class == Class::Forged);
            } else {
                self.f_oks += 1;
            }
        }

        let before = self.sr;
        let rec = match self.block_rate {
            // Only a block failing less often than "blocked" usually means (a throttle, a
            // partial block) makes a success weaker evidence of recovery.
            Some(rate) if rate < llr.p1 => llr.with_p1(rate).recovery(e.class),
            _ => llr.recovery(e.class),
        };
        self.sr = (self.sr + rec).min(self.sr_cap);
        if self.sr <= 0.0 {
            self.sr = 0.0;
            self.r_start = NEVER;
        } else {
            if before <= 0.0 {
                self.r_start = e.t;
            }
            if !fail {
                self.r_last = e.t;
            }
        }
    }

    /// Recomputes both statistics over the kept window (after a late result); the onset
    /// statistic starts afresh at `clean_since`, as it did when that was set.
    pub(crate) fn recompute(&mut self, llr: &Llr) {
        self.sr = 0.0;
        self.recent = 0;
        self.recent_busy = 0;
        self.r_start = NEVER;
        self.reset_onset();
        let mut fresh = false;
        for i in 0..self.buf.len() {
            let e = self.buf[i];
            if !fresh && e.t >= self.clean_since {
                fresh = true;
                self.reset_onset();
            }
            self.step(&e, llr);
        }
    }

    fn reset_onset(&mut self) {
        self.sf = 0.0;
        self.f_start = NEVER;
        self.f_fails = 0;
        self.f_oks = 0;
        self.f_geo = 0;
        self.f_forged = 0;
        self.f_busy = 0;
    }

    /// Results up to `t` are no evidence for a new block (they belonged to a block that
    /// ended, or to the agent's own outage): the onset statistic starts afresh.
    /// Moves every time the lane holds by `by` (its agent's clock was found to be off) and
    /// recomputes its statistics.
    pub(crate) fn shift(&mut self, by: Millis, llr: &Llr) {
        for e in self.buf.iter_mut() {
            e.t += by;
        }
        if self.last_t != NEVER {
            self.last_t += by;
        }
        if self.clean_since != NEVER {
            self.clean_since += by;
        }
        self.samples.shift(by);
        self.recompute(llr);
    }

    pub(crate) fn forget_until(&mut self, t: Millis) {
        self.clean_since = self.clean_since.max(t);
        self.reset_onset();
    }

    /// The lane leans towards a block: evidence above zero and a failure among the last two.
    pub(crate) fn leaning(&self) -> bool {
        self.sf > 0.0 && self.recent & 0b11 != 0
    }

    /// The provider is answering this lane with errors (5xx, 429): at least two of its last
    /// four answers.
    pub(crate) fn provider_troubled(&self) -> bool {
        (self.recent_busy & 0b1111).count_ones() >= 2
    }

    /// The newest non-neutral result is a failure.
    pub(crate) fn last_failed(&self) -> bool {
        self.recent & 1 != 0
    }

    /// The lane is failing on its own evidence.
    pub(crate) fn flagged(&self, threshold: f64) -> bool {
        self.sf >= threshold && self.recent & 0b11 != 0
    }

    /// The lane has recovered on its own evidence, since `since`.
    pub(crate) fn recovered(&self, threshold: f64, since: Millis) -> bool {
        self.sr >= threshold && self.recent & 1 == 0 && self.r_start > since
    }

    /// Most of the current run's failures are geo signatures.
    pub(crate) fn geo_run(&self) -> bool {
        self.f_fails > 0 && self.f_geo * 2 >= self.f_fails
    }

    /// Failure rate of the current run.
    pub(crate) fn run_rate(&self) -> f64 {
        f64::from(self.f_fails) / f64::from((self.f_fails + self.f_oks).max(1))
    }

    /// Whether the newest kept result is recent, judged by when results of this lane usually
    /// arrive: a lane whose spool is still being flushed is not.
    pub(crate) fn fresh(&self, received: Millis, max_gap: f64) -> bool {
        (received as f64 - self.lag - self.last_t as f64) <= max_gap * self.interval
    }

    /// Maximum-likelihood change point over the kept window: the start of the suffix with
    /// the largest summed log-likelihood ratio, looking no further back than `since` and not
    /// across a gap wider than `max_gap_ms` (data beyond it may still be arriving). Returns
    /// the onset (half-way to the previous result, at most half an interval before the
    /// change), whether it is pinned by a result just before, and the suffix's counts of
    /// failing and succeeding results.
    ///
    /// For an onset of a `signed` run (geo refusals, forged answers), plain network failures
    /// are the agent's usual noise under either hypothesis and weigh nothing: a timeout just
    /// before a geo block is not its start.
    pub(crate) fn change_point(
        &self,
        recovery: bool,
        signed: bool,
        llr: &Llr,
        since: Millis,
        max_gap_ms: f64,
    ) -> Option<ChangePoint> {
        let mut sum = 0.0;
        let mut best = 0.0;
        let mut best_i = None;
        // (index, suffix sum) of every candidate, newest first, to apply the onset slack.
        let mut cands: Vec<(usize, f64)> = Vec::new();
        let mut newer: Option<Millis> = None;
        let mut floor = 0;
        for (i, e) in self.buf.iter().enumerate().rev() {
            if e.t < since || newer.is_some_and(|n| (n - e.t) as f64 > max_gap_ms) {
                floor = i + 1;
                break;
            }
            newer = Some(e.t);
            let l = if recovery {
                llr.recovery(e.class)
            } else if signed && e.class == Class::Net {
                0.0
            } else {
                llr.onset(e.class)
            };
            if l == 0.0 {
                continue;
            }
            sum += l;
            if !recovery && l > 0.0 {
                cands.push((i, sum));
            }
            if sum > best {
                best = sum;
                best_i = Some(i);
            }
        }
        let mut i = best_i?;
        if let Some(&(late, _)) = cands.iter().find(|&&(_, s)| s >= best - ONSET_SLACK) {
            i = i.max(late);
        }
        let t = self.buf[i].t;
        let pinned = i > floor;
        let step = if pinned { (t - self.buf[i - 1].t) as f64 } else { self.interval };
        let onset = t - (step.min(self.interval) / 2.0) as Millis;
        let (mut fails, mut oks, mut busy) = (0, 0, 0);
        for e in self.buf.range(i..) {
            match e.class {
                Class::Ok => oks += 1,
                Class::Net | Class::Geo | Class::Forged => fails += 1,
                Class::Busy => busy += 1,
                Class::Neutral => {}
            }
        }
        Some(ChangePoint { onset, pinned, fails, oks, busy })
    }

    /// Failing and succeeding results after `since` (newest few; a backwards scan).
    pub(crate) fn counts_after(&self, since: Millis) -> (u32, u32) {
        let (mut fails, mut oks) = (0, 0);
        for e in self.buf.iter().rev().take_while(|e| e.t > since) {
            match e.class {
                Class::Ok => oks += 1,
                Class::Net | Class::Geo | Class::Forged => fails += 1,
                Class::Neutral | Class::Busy => {}
            }
        }
        (fails, oks)
    }

    /// Start of the newest failure at or after `since` whose family (`signature`) is
    /// `family`.
    pub(crate) fn newest_failure_of(&self, since: Millis, family: &str) -> Option<Millis> {
        self.buf
            .iter()
            .rev()
            .take_while(|e| e.t >= since)
            .find(|e| e.class.is_failure() && outcome_family(e.outcome) == family)
            .map(|e| e.t)
    }

    /// Start of the first failure after `since`.
    pub(crate) fn first_failure_after(&self, since: Millis) -> Option<Millis> {
        let from = self.buf.partition_point(|e| e.t <= since);
        self.buf.range(from..).find(|e| e.class.is_failure()).map(|e| e.t)
    }

    /// Failure outcomes at or after `since`, for the evidence.
    pub(crate) fn failures_since(&self, since: Millis) -> impl Iterator<Item = u8> + '_ {
        let from = self.buf.partition_point(|e| e.t < since);
        self.buf.range(from..).filter(|e| e.class.is_failure()).map(|e| e.outcome)
    }
}

/// A lane's estimated change point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChangePoint {
    pub onset: Millis,
    /// The result before the change is at most the gap limit earlier, so the change lies
    /// between two known results.
    pub pinned: bool,
    pub fails: u32,
    pub oks: u32,
    /// Provider-noise answers in the same stretch.
    pub busy: u32,
}

/// The signature family of a stored outcome number.
pub(crate) fn outcome_family(outcome: u8) -> &'static str {
    blockwatch_proto::Outcome::try_from(i32::from(outcome)).map_or("other", super::stats::signature)
}
