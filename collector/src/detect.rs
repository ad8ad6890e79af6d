//! The live detector, on its own thread: results in store order from the store's writer,
//! events out to the event log and live subscribers, and probe requests to the agents of a
//! region where a block is suspected.

use std::sync::{Arc, Mutex};

use blockwatch_detector::{Event, Observation};
use blockwatch_proto::v1::StoredResult;
use tokio::sync::broadcast;

use crate::ingest::Streams;
use crate::rebuild::Rebuilt;
use crate::store::EventLog;

/// Where the live detector's output goes. Holds no handle that keeps the store's writer
/// alive, so closing the store ends the detector.
pub(crate) struct Live {
    pub(crate) log: Arc<Mutex<EventLog>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) results: broadcast::Sender<Arc<Vec<StoredResult>>>,
    pub(crate) streams: Arc<Streams>,
}

/// The live detector, on its own thread: results in store order in, events out, and probe
/// requests to the agents of a region where a block is suspected.
pub(crate) fn run_detector(rebuilt: Rebuilt, rx: std::sync::mpsc::Receiver<Vec<StoredResult>>, live: Live) {
    let Live { log, events, results, streams } = live;
    let Rebuilt { mut detector, mut processed, recovered: mut out } = rebuilt;
    if !out.is_empty() {
        tracing::warn!(events = out.len(), "publishing events the previous run decided but did not log");
        publish(&log, &events, &mut out, Some(processed));
    }
    detector.request_confirmations();
    while let Ok(batch) = rx.recv() {
        for stored in &batch {
            if let Some(o) = Observation::from_stored(stored) {
                detector.observe(&o, &mut out);
            }
        }
        processed += batch.len() as u64;
        for req in detector.take_requests() {
            let asked = streams.probe_now(&req.target, &req.region, &req.reason);
            tracing::info!(target = %req.target, region = %req.region, agents = asked, reason = %req.reason, "asked the region's agents to probe now");
        }
        let _ = results.send(Arc::new(batch));
        publish(&log, &events, &mut out, Some(processed));
    }
}

/// Appends events to the event log (durably, with the detector's progress when it is the
/// detector's), logs them and hands them to live subscribers.
pub(crate) fn publish(
    log: &Mutex<EventLog>,
    events: &broadcast::Sender<Event>,
    out: &mut Vec<Event>,
    processed: Option<u64>,
) {
    if out.is_empty() {
        return;
    }
    let lines: Vec<String> = out.iter().map(Event::to_json_line).collect();
    match log.lock() {
        Ok(mut log) => {
            if let Err(e) = log.append(&lines, processed) {
                tracing::error!(error = %blockwatch_proto::error::chain(&e), "could not persist events");
            }
        }
        Err(_) => tracing::error!("event log unavailable; events not persisted"),
    }
    for e in out.drain(..) {
        tracing::info!(kind = e.kind.name(), target = %e.target, region = %e.region, agent = e.agent_id.as_deref().unwrap_or("-"),
            onset = %blockwatch_proto::time::format_rfc3339(e.onset), "event");
        let _ = events.send(e);
    }
}
