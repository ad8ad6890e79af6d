//! Slack incoming webhooks: a Block Kit message a person reads at a glance — what, where,
//! since when, how sure, which agents — and one when it ends.

use serde_json::{Value, json};

use super::{EventView, Severity, Sink};

fn headline(e: &EventView) -> String {
    let what = match e.kind.as_str() {
        "block_started" => format!(":no_entry: {} is blocked in {}", e.target, e.region),
        "block_ended" => format!(":white_check_mark: {} reachable again in {}", e.target, e.region),
        "block_stale" => format!(":grey_question: {} in {}: no fresh evidence", e.target, e.region),
        "outage_started" => format!(":rotating_light: {} outage", e.target),
        "outage_ended" => format!(":white_check_mark: {} outage over", e.target),
        "vantage_down" => format!(":satellite_antenna: vantage {} cannot reach its targets", e.agent_id),
        "vantage_up" => format!(":white_check_mark: vantage {} is back", e.agent_id),
        "agent_silent" => format!(":mute: agent {} is silent", e.agent_id),
        "agent_back" => format!(":white_check_mark: agent {} is heard again", e.agent_id),
        other => format!("blockwatch: {other}"),
    };
    if e.raw.get("test").is_some() { format!("[test] {what}") } else { what }
}

/// The body for a group of events: one event in detail, or a wave with a line per event.
pub fn request(sink: &Sink, events: &[EventView]) -> Vec<u8> {
    let e = &events[0];
    let summary = super::group::summary(events);
    let title = if events.len() == 1 { headline(e) } else { wave_headline(events) };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title.chars().take(150).collect::<String>(), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": summary.chars().take(3000).collect::<String>()}}),
    ];
    if events.len() == 1 {
        blocks.push(json!({"type": "section", "fields": fields(e)}));
    } else {
        // Slack takes at most 50 blocks: one line each for the first 45.
        for e in events.iter().take(45) {
            let line = format!("*{}* since {} (detected {}): {}", e.region, e.onset, e.detected_at, e.summary);
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line.chars().take(3000).collect::<String>()}}));
        }
        if events.len() > 45 {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("…and {} more", events.len() - 45)}}));
        }
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{}|event {} in blockwatch>", sink.link(e), e.seq)}]}));
    let body = json!({ "text": format!("{title}: {summary}"), "blocks": blocks });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A wave's header: "openai is blocked in 3 regions".
fn wave_headline(events: &[EventView]) -> String {
    let e = &events[0];
    let n = super::group::places(events).len();
    let what = match e.kind.as_str() {
        "block_started" => format!(":no_entry: {} is blocked in {n} regions", e.target),
        "block_ended" => format!(":white_check_mark: {} reachable again in {n} regions", e.target),
        _ => format!("blockwatch: {} {} events", events.len(), e.kind),
    };
    if e.raw.get("test").is_some() { format!("[test] {what}") } else { what }
}

/// The facts of one event, as Block Kit fields.
fn fields(e: &EventView) -> Vec<Value> {
    let ev = e.raw.get("evidence").cloned().unwrap_or(Value::Null);
    let num = |k: &str| ev.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let agents = ev
        .get("agents")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Target*\n{}", e.target)}),
        json!({"type": "mrkdwn", "text": format!("*Region*\n{}", e.region)}),
        json!({"type": "mrkdwn", "text": format!("*Since*\n{}", e.onset)}),
        json!({"type": "mrkdwn", "text": format!("*Detected*\n{}", e.detected_at)}),
    ];
    if !e.signature.is_empty() {
        let outcome = ev.get("dominant_outcome").and_then(Value::as_str).unwrap_or_default();
        fields.push(json!({"type": "mrkdwn", "text": format!("*Signature*\n{} {outcome}", e.signature)}));
    }
    if Severity::of(&e.kind) != Severity::Info && ev.get("statistic").is_some() {
        fields.push(json!({"type": "mrkdwn", "text": format!(
            "*How sure*\nheld {:.1} probe intervals, {} failing / {} ok, log-likelihood {:.1}",
            num("persisted_intervals"), num("failing"), num("ok"), num("statistic"))}));
    }
    if !agents.is_empty() {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Agents*\n{agents}")}));
    }
    fields
}
