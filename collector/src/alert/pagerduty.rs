//! PagerDuty Events API v2: `trigger` on a start (and on a `block_stale`, which updates the
//! open incident), `resolve` on its end, with one `dedup_key` per block (outage, vantage
//! problem, silent agent) so PagerDuty pairs them.

use serde_json::{Value, json};

use super::alertmanager::Active;
use super::{EventView, Severity, Sink, pair_of};

/// PagerDuty's endpoint, the default `url` of a `pagerduty` sink.
pub const EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty's severities: `critical`, `error`, `warning`, `info`.
fn severity(kind: &str) -> &'static str {
    match Severity::of(kind) {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// The body for one event.
pub fn request(sink: &Sink, e: &EventView, active: &mut Active, posted: bool) -> Vec<u8> {
    let start = active.block_start(e, &sink.cfg, posted);
    let dedup_key = format!("blockwatch/{}/{}/{start}", e.target, e.region);
    let routing_key = String::from_utf8_lossy(sink.secret.as_deref().unwrap_or_default()).into_owned();
    let is_end = pair_of(&e.kind).is_some() && Severity::of(&e.kind) == Severity::Info;
    let body = if is_end {
        json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key })
    } else {
        let evidence = e.raw.get("evidence").cloned().unwrap_or(Value::Null);
        json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": e.summary.chars().take(1024).collect::<String>(),
                "source": format!("blockwatch region {}", e.region),
                "severity": severity(&e.kind),
                "timestamp": e.onset,
                "component": e.target,
                "group": e.region,
                "class": if e.signature.is_empty() { e.kind.clone() } else { e.signature.clone() },
                "custom_details": {
                    "kind": e.kind,
                    "detected_at": e.detected_at,
                    "agent_id": e.agent_id,
                    "evidence": evidence,
                },
            },
            "links": [{ "href": sink.link(e), "text": "the event in blockwatch" }],
            "client": "blockwatch",
        })
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
