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
pub(crate) async fn watch_silence(ingest: Arc<Ingest>, log: Arc<Mutex<EventLog>>, events: broadcast::Sender<Event>) {
    let beat = ingest.heartbeat();
    let mut stop = ingest.stopping();
    let mut tick = tokio::time::interval(beat / 2);
    let mut silent: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = blockwatch_proto::time::now();
        let mut out = Vec::new();
        for (id, a) in ingest.agents() {
            let quiet = ingest.is_silent(&a, now);
            let (kind, onset) = match (quiet, silent.contains(&id)) {
                (true, false) => (EventKind::AgentSilent, a.last_seen),
                (false, true) => (EventKind::AgentBack, a.last_seen),
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
            let _ = tokio::task::spawn_blocking(move || publish(&log, &events, &mut out, None)).await;
        }
    }
}
