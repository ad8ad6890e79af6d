//! The webhook: a versioned JSON payload, signed.
//!
//! Headers: `X-Blockwatch-Signature: t=UNIX_SECONDS,v1=HEX` where HEX is
//! HMAC-SHA256(secret, "UNIX_SECONDS.BODY") — the scheme Stripe and Slack use, so a receiver
//! checks the body is ours and unaltered, and refuses an old timestamp (a replay);
//! `X-Blockwatch-Event-Id`, the idempotency key (the same on every retry).

use serde_json::json;

use super::alertmanager::Active;
use super::{EventView, Severity, Sink};

/// The payload's schema name; a change that breaks a reader gets a new one.
pub const SCHEMA: &str = "blockwatch.alert.v1";

/// The signature header's value for `body` at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The payload for a group of events (one, or an enforcement wave): what a template renders
/// and, without one, the body.
pub fn payload(sink: &Sink, events: &[EventView], active: &mut Active, posted: bool) -> serde_json::Value {
    let first = &events[0];
    let listed: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let start = active.block_start(e, &sink.cfg, posted);
            json!({
                "id": e.seq.to_string(),
                "block_id": format!("{}/{}/{}", e.target, e.region, start),
                "region": e.region,
                "agent_id": if e.agent_id.is_empty() { serde_json::Value::Null } else { json!(e.agent_id) },
                "onset": e.onset,
                "detected_at": e.detected_at,
                "summary": e.summary,
                "evidence": e.raw.get("evidence").cloned().unwrap_or(serde_json::Value::Null),
                "link": sink.link(e),
            })
        })
        .collect();
    let onset = events.iter().map(|e| e.onset.as_str()).min().unwrap_or_default();
    json!({
        "schema": SCHEMA,
        "id": first.seq.to_string(),
        "kind": first.kind,
        "severity": Severity::of(&first.kind).name(),
        "target": first.target,
        "regions": super::group::places(events),
        "onset": onset,
        "detected_at": first.detected_at,
        "summary": super::group::summary(events),
        "link": sink.link(first),
        "test": first.raw.get("test").is_some(),
        "events": listed,
    })
}

/// The body for a group: the payload as JSON, or rendered through the sink's template.
pub fn request(sink: &Sink, events: &[EventView], active: &mut Active, posted: bool) -> Result<Vec<u8>, String> {
    let p = payload(sink, events, active, posted);
    match &sink.template {
        None => Ok(serde_json::to_vec(&p).unwrap_or_default()),
        Some(t) => t.render(&p),
    }
}

/// The headers of one attempt: signed now, so a retry hours later is not taken for a replay.
/// The id is the group's first event's sequence number, the same on every retry.
pub fn headers(sink: &Sink, events: &[EventView], body: &[u8]) -> Vec<(&'static str, String)> {
    let t = blockwatch_proto::time::now() / 1000;
    let sig = signature(sink.secret.as_deref().unwrap_or_default(), t, body);
    vec![("x-blockwatch-signature", sig), ("x-blockwatch-notification-id", events[0].seq.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 key and data, split as "t.body": "what do ya want for nothing?".
        let s = signature(b"Jefe", 0, b"");
        assert!(s.starts_with("t=0,v1="), "{s}");
        // HMAC-SHA256("Jefe", "what do ya want for nothing?") from RFC 4231.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let want = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // The same scheme: the timestamp, a dot, the body.
        let manual = ring::hmac::sign(&key, b"1700000000.{}");
        let manual: String = manual.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature(b"Jefe", 1_700_000_000, b"{}"), format!("t=1700000000,v1={manual}"));
    }
}
