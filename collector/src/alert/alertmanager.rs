//! Prometheus Alertmanager (API v2): one alert per open block (outage, vantage problem,
//! silent agent), labelled so routing, silences and inhibition work as for any alert; posted
//! on its start, re-posted while open (an alert whose `endsAt` passes unrefreshed resolves
//! itself), and posted with `endsAt` when it ends.
//!
//! [`Active`] is also what gives a webhook payload its `block_id`: the open alert's start.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{EventView, Severity, Sink, SinkConfig, pair_of};
use crate::store::Reader;

/// `POST` here.
pub fn url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

/// What an event is about: `block`, `outage`, `vantage`, `agent`.
fn family(kind: &str) -> &'static str {
    match kind {
        k if k.starts_with("block_") => "block",
        k if k.starts_with("outage_") => "outage",
        k if k.starts_with("vantage_") => "vantage",
        _ => "agent",
    }
}

fn alertname(family: &str) -> &'static str {
    match family {
        "block" => "BlockwatchBlock",
        "outage" => "BlockwatchOutage",
        "vantage" => "BlockwatchVantageDown",
        _ => "BlockwatchAgentSilent",
    }
}

fn is_start(kind: &str) -> bool {
    matches!(kind, "block_started" | "outage_started" | "vantage_down" | "agent_silent")
}

type Key = (String, String, String, String);

fn key(e: &EventView) -> Key {
    (family(&e.kind).to_string(), e.target.clone(), e.region.clone(), e.agent_id.clone())
}

/// An open alert: the event that opened it, and the alert as posted.
#[derive(Debug, Clone)]
struct Open {
    start_seq: u64,
    alert: Value,
    /// It reached the receiver (a start a maintenance window held back did not): only
    /// posted alerts are re-posted.
    posted: bool,
}

/// The alerts a sink has open, by (family, target, region, agent).
#[derive(Debug, Clone, Default)]
pub struct Active {
    open: BTreeMap<Key, Open>,
}

impl Active {
    /// The open alerts as of event `upto`, from the log: what a restarted sink holds.
    /// `held(e)`: a window held the event back (its alert was never posted).
    pub fn rebuild(store: &Reader, cfg: &SinkConfig, upto: u64, held: impl Fn(&EventView) -> bool) -> Active {
        let mut a = Active::default();
        for (seq, line) in store.events().map_while(Result::ok) {
            if seq > upto {
                break;
            }
            if let Some(e) = EventView::parse(seq, &line).filter(|e| a.admits(cfg, e)) {
                let posted = !held(&e);
                a.track(&e, String::new(), cfg, posted);
            }
        }
        a
    }

    /// The sink's filters, and for receivers that keep state, the end of anything open
    /// (whatever the filters say: an end must close what its start opened).
    pub fn admits(&self, cfg: &SinkConfig, e: &EventView) -> bool {
        cfg.admits(e) || (cfg.kind.pairs_ends() && self.closes_open(e))
    }

    /// The event ends an alert that is open.
    pub fn closes_open(&self, e: &EventView) -> bool {
        !is_start(&e.kind) && pair_of(&e.kind).is_some() && self.open.contains_key(&key(e))
    }

    /// Opens or closes the event's alert; returns it (as posted now) and the seq of the
    /// event that opened it.
    fn track(&mut self, e: &EventView, link: String, cfg: &SinkConfig, posted: bool) -> (Value, u64) {
        let k = key(e);
        let fam = family(&e.kind);
        if is_start(&e.kind) {
            // A second start of what is open keeps the first's identity (its dedup key).
            let start_seq = self.open.get(&k).map_or(e.seq, |o| o.start_seq);
            let alert = build(e, fam, link);
            let was_posted = self.open.get(&k).is_some_and(|o| o.posted);
            self.open.insert(k, Open { start_seq, alert: alert.clone(), posted: posted || was_posted });
            return (with_ends(alert, cfg, None), start_seq);
        }
        let closes = pair_of(&e.kind).is_some();
        let open = if closes { self.open.remove(&k) } else { self.open.get(&k).cloned() };
        let (mut alert, start) = match open {
            Some(o) => (o.alert, o.start_seq),
            // Opened before this sink existed: labelled as its start would have been.
            None => (build(e, fam, link), e.seq),
        };
        if closes {
            return (with_ends(alert, cfg, Some(&e.onset)), start);
        }
        // `block_stale`: the alert stays open, and says its evidence stopped.
        alert["annotations"]["stale"] = json!(e.summary);
        if let Some(o) = self.open.get_mut(&k) {
            o.alert = alert.clone();
        }
        (with_ends(alert, cfg, None), start)
    }

    /// The seq of the event that opened the event's alert (its own, for a start), tracking
    /// it; `posted`: this event reaches the receiver.
    pub fn block_start(&mut self, e: &EventView, cfg: &SinkConfig, posted: bool) -> u64 {
        self.track(e, String::new(), cfg, posted).1
    }

    /// The body to post for one event.
    pub fn apply(&mut self, sink: &Sink, e: &EventView, posted: bool) -> Vec<u8> {
        let (alert, _) = self.track(e, sink.link(e), &sink.cfg, posted);
        serde_json::to_vec(&json!([alert])).unwrap_or_default()
    }

    /// Whether any open alert was posted (and so is to be re-posted).
    pub fn any_posted(&self) -> bool {
        self.open.values().any(|o| o.posted)
    }

    /// Every open alert that was posted, its `endsAt` moved on.
    pub fn repost(&self, sink: &Sink) -> Vec<u8> {
        let all: Vec<Value> =
            self.open.values().filter(|o| o.posted).map(|o| with_ends(o.alert.clone(), &sink.cfg, None)).collect();
        serde_json::to_vec(&all).unwrap_or_default()
    }
}

/// An alert for the event, as its start would label it.
fn build(e: &EventView, fam: &str, link: String) -> Value {
    let start_kind = if is_start(&e.kind) { e.kind.as_str() } else { pair_of(&e.kind).unwrap_or(&e.kind) };
    let ev = e.raw.get("evidence").cloned().unwrap_or(Value::Null);
    let text = |k: &str| ev.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
    let mut labels = json!({
        "alertname": alertname(fam),
        "target": e.target,
        "region": e.region,
        "kind": fam,
        "severity": Severity::of(start_kind).name(),
    });
    if !e.signature.is_empty() {
        labels["signature"] = json!(e.signature);
    }
    if !e.agent_id.is_empty() {
        labels["agent_id"] = json!(e.agent_id);
    }
    let agents = ev
        .get("agents")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
    let mut annotations = json!({
        "summary": e.summary,
        "onset": e.onset,
        "detected_at": e.detected_at,
        "event_seq": e.seq.to_string(),
    });
    for (k, v) in [
        ("dominant_outcome", text("dominant_outcome")),
        ("provider_code", text("provider_code")),
        ("http_status", text("http_status")),
        ("agents", agents.unwrap_or_default()),
        ("failing", text("failing")),
        ("ok", text("ok")),
    ] {
        if !v.is_empty() && v != "null" {
            annotations[k] = json!(v);
        }
    }
    let mut alert = json!({ "labels": labels, "annotations": annotations, "startsAt": e.onset });
    if !link.is_empty() {
        alert["generatorURL"] = json!(link);
    }
    alert
}

/// Sets `endsAt`: the end's time, or (open) three re-post intervals from now.
fn with_ends(mut alert: Value, cfg: &SinkConfig, ended: Option<&str>) -> Value {
    let ends = match ended {
        Some(t) => t.to_string(),
        None => {
            let ahead = i64::try_from(cfg.resend_every.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
            blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now().saturating_add(ahead))
        }
    };
    alert["endsAt"] = json!(ends);
    alert
}
