//! Grouping: an enforcement wave (one provider refusing six regions within a minute) is one
//! notification listing the regions.
//!
//! A sink with a `group_window` gathers the events it admits into groups of one kind and one
//! target whose `detected_at` lie within the window of the group's first event; a group is
//! sent when the window has passed since its first event was read. Membership is decided by
//! the events' own times, so a sink that reads the same log again after a restart forms the
//! same groups. Groups are sent in the order of their first events, and an event never joins
//! a group while a later group holds an event of its cell (target, region, agent), so what
//! happens to one cell always reaches the receiver in log order.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{EventView, pair_of};

/// One notification to be: its events in log order.
#[derive(Debug)]
pub struct Group {
    pub events: Vec<EventView>,
    /// A maintenance window covered it: tracked, not sent.
    pub held: bool,
    /// `detected_at` of the first event (ms), what membership is judged by.
    first_at: i64,
    /// When it goes, at the latest.
    due: Instant,
    /// No event joins it any more (a later event of its kind and target fell outside it).
    closed: bool,
}

impl Group {
    fn cell_of(e: &EventView) -> (&str, &str, &str) {
        (&e.target, &e.region, &e.agent_id)
    }

    fn touches(&self, e: &EventView) -> bool {
        self.events.iter().any(|x| Group::cell_of(x) == Group::cell_of(e))
    }
}

/// The groups a sink has read and not yet finished with, oldest first.
#[derive(Debug)]
pub struct Queue {
    groups: VecDeque<Group>,
    window: Duration,
    /// Most events one notification lists; more start a new group.
    max_events: usize,
}

/// Most events in one notification (a payload must stay a size receivers take).
pub const MAX_GROUP: usize = 100;

impl Queue {
    pub fn new(window: Duration) -> Queue {
        Queue { groups: VecDeque::new(), window, max_events: MAX_GROUP }
    }

    /// Adds an event read at `now`; `held`: a maintenance window covers it.
    pub fn push(&mut self, e: EventView, held: bool, now: Instant) {
        let at = blockwatch_proto::time::parse_rfc3339(&e.detected_at).unwrap_or(i64::MIN);
        let window_ms = self.window.as_millis() as i64;
        if !held && !self.window.is_zero() {
            let last_of_key = self
                .groups
                .iter()
                .rposition(|g| !g.held && g.events[0].kind == e.kind && g.events[0].target == e.target && !g.closed);
            if let Some(i) = last_of_key {
                let later_touch = self.groups.iter().skip(i + 1).any(|g| g.touches(&e));
                let g = &mut self.groups[i];
                let within = at != i64::MIN && g.first_at != i64::MIN && (at - g.first_at).abs() <= window_ms;
                if within && !later_touch && g.events.len() < self.max_events {
                    g.events.push(e);
                    return;
                }
                if !within || g.events.len() >= self.max_events {
                    g.closed = true;
                }
            }
        }
        let alone = held || self.window.is_zero();
        self.groups.push_back(Group { events: vec![e], held, first_at: at, due: now + self.window, closed: alone });
    }

    /// The oldest group, when it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Group> {
        let front = self.groups.front()?;
        (front.closed || front.due <= now).then(|| self.groups.pop_front()).flatten()
    }

    /// When the oldest group falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.groups.front().map(|g| if g.closed { Instant::now() } else { g.due })
    }

    /// The first event not finished with, if any is waiting.
    pub fn first_seq(&self) -> Option<u64> {
        self.groups.front().map(|g| g.events[0].seq)
    }

    /// A start waiting to be sent that `e` ends (so a window must not hold `e` back).
    pub fn opens(&self, e: &EventView) -> bool {
        let Some(start) = pair_of(&e.kind) else { return false };
        self.groups
            .iter()
            .filter(|g| !g.held)
            .flat_map(|g| &g.events)
            .any(|x| x.kind == start && Group::cell_of(x) == Group::cell_of(e))
    }
}

/// What a group is, in a line: the event's own summary for one, else e.g. "openai is blocked
/// in 3 regions: hk, cn, ru".
pub fn summary(events: &[EventView]) -> String {
    let Some(first) = events.first() else { return String::new() };
    if events.len() == 1 {
        return first.summary.clone();
    }
    let places = places(events);
    let n = places.len();
    let list = places.join(", ");
    let t = &first.target;
    match first.kind.as_str() {
        "block_started" => format!("{t} is blocked in {n} regions: {list}"),
        "block_ended" => format!("{t} is reachable again in {n} regions: {list}"),
        "block_stale" => format!("{t}: no fresh evidence in {n} regions: {list}"),
        "outage_started" => format!("{t}: {} outages began", events.len()),
        "outage_ended" => format!("{t}: {} outages ended", events.len()),
        "vantage_down" => format!("{n} vantages cannot reach their targets: {list}"),
        "vantage_up" => format!("{n} vantages are back: {list}"),
        "agent_silent" => format!("{n} agents are silent: {list}"),
        "agent_back" => format!("{n} agents are heard again: {list}"),
        other => format!("{} {other} events: {list}", events.len()),
    }
}

/// The regions a group covers (agents, for the kinds about agents), in order, once each.
pub fn places(events: &[EventView]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let about_agent = e.kind.starts_with("vantage_") || e.kind.starts_with("agent_");
        let p = if about_agent && !e.agent_id.is_empty() { &e.agent_id } else { &e.region };
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: &str, target: &str, region: &str, at_s: i64) -> EventView {
        let line = serde_json::json!({"kind": kind, "target": target, "region": region,
            "onset": "2026-01-01T00:00:00Z",
            "detected_at": blockwatch_proto::time::format_rfc3339(1_767_225_600_000 + at_s * 1000),
            "summary": format!("{target} {region}")});
        EventView::parse(seq, &line.to_string()).unwrap()
    }

    fn drain(q: &mut Queue, now: Instant) -> Vec<Vec<u64>> {
        std::iter::from_fn(|| q.pop_due(now)).map(|g| g.events.iter().map(|e| e.seq).collect()).collect()
    }

    #[test]
    fn a_wave_is_one_group_and_groups_go_in_log_order() {
        let now = Instant::now();
        let mut q = Queue::new(Duration::from_secs(30));
        q.push(ev(1, "block_started", "openai", "hk", 0), false, now);
        q.push(ev(2, "block_started", "anthropic", "ru", 1), false, now);
        q.push(ev(3, "block_started", "openai", "cn", 5), false, now);
        q.push(ev(4, "block_started", "openai", "ru", 29), false, now);
        assert_eq!(q.first_seq(), Some(1));
        assert!(q.pop_due(now).is_none(), "not due before its window has passed");
        // Outside the window of the first: a group of its own, and the wave is complete.
        q.push(ev(5, "block_started", "openai", "ir", 31), false, now);
        assert_eq!(drain(&mut q, now), [vec![1, 3, 4]]);
        let later = now + Duration::from_secs(31);
        assert_eq!(drain(&mut q, later), [vec![2], vec![5]]);
        assert_eq!(q.first_seq(), None);
    }

    #[test]
    fn a_cell_keeps_its_order_across_groups() {
        let now = Instant::now();
        let mut q = Queue::new(Duration::from_secs(30));
        q.push(ev(1, "block_ended", "openai", "x", 0), false, now);
        q.push(ev(2, "block_started", "openai", "hk", 1), false, now);
        // hk's end may not join the group before hk's start.
        q.push(ev(3, "block_ended", "openai", "hk", 2), false, now);
        assert!(q.opens(&ev(9, "block_ended", "openai", "hk", 3)), "hk's start waits to be sent");
        assert!(!q.opens(&ev(9, "block_ended", "openai", "cn", 3)));
        assert_eq!(drain(&mut q, now + Duration::from_secs(60)), [vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn without_a_window_or_when_held_each_event_goes_alone_and_at_once() {
        let now = Instant::now();
        let mut q = Queue::new(Duration::ZERO);
        q.push(ev(1, "block_started", "openai", "hk", 0), false, now);
        q.push(ev(2, "block_started", "openai", "cn", 0), false, now);
        assert_eq!(drain(&mut q, now), [vec![1], vec![2]]);
        let mut q = Queue::new(Duration::from_secs(30));
        q.push(ev(1, "block_started", "openai", "hk", 0), true, now);
        q.push(ev(2, "block_started", "openai", "cn", 0), false, now);
        q.push(ev(3, "block_started", "openai", "ru", 0), false, now);
        assert_eq!(drain(&mut q, now), [vec![1]], "a held event does not wait, the next group does");
        assert_eq!(drain(&mut q, now + Duration::from_secs(30)), [vec![2, 3]]);
    }

    #[test]
    fn a_group_has_a_size_limit_and_a_summary() {
        let now = Instant::now();
        let mut q = Queue::new(Duration::from_secs(30));
        for i in 0..(MAX_GROUP as u64 + 5) {
            q.push(ev(i + 1, "block_started", "openai", &format!("r{i}"), 0), false, now);
        }
        let groups = drain(&mut q, now + Duration::from_secs(30));
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [MAX_GROUP, 5]);
        let wave = [ev(1, "block_started", "openai", "hk", 0), ev(2, "block_started", "openai", "cn", 1)];
        assert_eq!(summary(&wave), "openai is blocked in 2 regions: hk, cn");
        assert_eq!(summary(&wave[..1]), "openai hk");
    }
}
