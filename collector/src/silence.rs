//! The silence watcher: an agent the collector has heard nothing from for a few heartbeat
//! intervals is silent, and back when it speaks again; both are events in the log.

use std::sync::{Arc, Mutex};

use blockwatch_detector::{Event, EventKind, Evidence};
use tokio::sync::broadcast;

use crate::detect::publish;
use crate::ingest::Ingest;
use crate::store::EventLog;

/// Marks agents silent when the collector has heard nothing from them for
/// `SILENT_AFTER_HEARTBEATS` heartbeat intervals (`Ingest::is_silent`), and back when they speak again; both are
/// events in the log. Ends at shutdown.
/// Agents silent as of the log's end start silent (an `agent_silent` with no `agent_back`
/// after it), so one heard again after a restart gets its `agent_back`.
pub(crate) async fn watch_silence(
    ingest: Arc<Ingest>,
    log: Arc<Mutex<EventLog>>,
    events: broadcast::Sender<Event>,
    store: crate::store::Reader,
) {
    let beat = ingest.heartbeat();
    let mut stop = ingest.stopping();
    let mut tick = tokio::time::interval(beat / 2);
    let mut silent = tokio::task::spawn_blocking(move || silent_in_log(&store)).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // The registry's changes since the last tick go to the store (a restart knows them).
        let saving = Arc::clone(&ingest);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || saving.save_agents(false)).await {
            tracing::warn!(error = %e, "cannot save the agent registry");
        }
        let now = blockwatch_proto::time::now();
        let mut out = Vec::new();
        for (id, a) in ingest.agents() {
            let quiet = ingest.is_silent(&a, now);
            let (kind, onset) = match (quiet, silent.contains(&id)) {
                (true, false) => (EventKind::AgentSilent, a.last_seen),
                // Back only once heard by this process: an agent silent before a restart is
                // not quiet yet in its first intervals, but it has not spoken either.
                (false, true) if a.last_seen >= ingest.started() => (EventKind::AgentBack, a.last_seen),
                _ => continue,
            };
            if quiet {
                silent.insert(id.clone());
            } else {
                silent.remove(&id);
            }
            out.push(Event {
                kind,
                target: "*".into(),
                region: a.region,
                agent_id: Some(id),
                onset,
                detected_at: now,
                evidence: Evidence { interval_ms: beat.as_millis() as i64, ..Default::default() },
            });
        }
        if !out.is_empty() {
            let (log, events) = (Arc::clone(&log), events.clone());
            let _ = tokio::task::spawn_blocking(move || publish(&log, &events, &mut out, None, &mut Vec::new())).await;
        }
    }
}

/// The agents whose last `agent_silent` / `agent_back` in the log is `agent_silent`.
fn silent_in_log(store: &crate::store::Reader) -> std::collections::HashSet<String> {
    let mut silent = std::collections::HashSet::new();
    for (_, line) in store.events().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let Some(agent) = v.get("agent_id").and_then(|a| a.as_str()) else { continue };
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("agent_silent") => {
                silent.insert(agent.to_string());
            }
            Some("agent_back") => {
                silent.remove(agent);
            }
            _ => {}
        }
    }
    silent
}
