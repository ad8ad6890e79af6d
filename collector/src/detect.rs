//! The live detector, on its own thread: results in store order from the store's writer,
//! events out to the event log and live subscribers, probe requests to the agents of a
//! region where a block is suspected, and checkpoints of its state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockwatch_detector::{Detector, Event, Observation};
use blockwatch_proto::v1::StoredResult;
use tokio::sync::broadcast;

use crate::ingest::Streams;
use crate::rebuild::Rebuilt;
use crate::store::EventLog;

/// A checkpoint of the detector's state is written once this many results came after the
/// last one, or [`CHECKPOINT_EVERY`] after it if any did, and when the detector stops: a
/// restart replays at most about this many results (plus what was queued) instead of the
/// whole store.
pub const CHECKPOINT_RESULTS: u64 = 500_000;
/// See [`CHECKPOINT_RESULTS`].
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Where the live detector's output goes. Holds no handle that keeps the store's writer
/// alive, so closing the store ends the detector.
pub(crate) struct Live {
    /// The store's directory and the free space kept there (`limits.min_free_disk_mb`, in
    /// bytes; 0: no check): a checkpoint that would reach into it is not written.
    pub(crate) space: (std::path::PathBuf, u64),
    pub(crate) log: Arc<Mutex<EventLog>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) results: broadcast::Sender<Arc<Vec<StoredResult>>>,
    pub(crate) streams: Arc<Streams>,
}

/// The live detector, on its own thread: results in store order in, events out, and probe
/// requests to the agents of a region where a block is suspected.
pub(crate) fn run_detector(rebuilt: Rebuilt, rx: std::sync::mpsc::Receiver<Vec<StoredResult>>, live: Live) {
    let Live { space, log, events, results, streams } = live;
    let Rebuilt { mut detector, mut processed, recovered: mut out, checkpointed, .. } = rebuilt;
    // Event lines whose append failed: retried with the next, so the log never skips them.
    let mut unlogged = Vec::new();
    if !out.is_empty() {
        tracing::warn!(events = out.len(), "publishing events the previous run decided but did not log");
        publish(&log, &events, &mut out, Some(processed), &mut unlogged);
    }
    let mut checkpoint = Checkpoint { at: checkpointed, when: Instant::now(), space };
    // A start that replayed results writes a checkpoint now, so the next does not again.
    if processed > checkpointed {
        checkpoint.write(&detector, processed, &log, &unlogged);
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
        publish(&log, &events, &mut out, Some(processed), &mut unlogged);
        if checkpoint.due(processed) {
            checkpoint.write(&detector, processed, &log, &unlogged);
        }
    }
    if processed > checkpoint.at {
        checkpoint.write(&detector, processed, &log, &unlogged);
    }
}

/// The last checkpoint written.
struct Checkpoint {
    /// The results it covers.
    at: u64,
    when: Instant,
    space: (std::path::PathBuf, u64),
}

impl Checkpoint {
    fn due(&self, processed: u64) -> bool {
        let new = processed.saturating_sub(self.at);
        new >= CHECKPOINT_RESULTS || (new > 0 && self.when.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Writes the detector's state as of `processed` results, unless events of those results
    /// are still unlogged (the mark the checkpoint moves would skip them; the next try comes
    /// after they are logged).
    fn write(&mut self, detector: &Detector, processed: u64, log: &Mutex<EventLog>, unlogged: &[String]) {
        if !unlogged.is_empty() {
            return;
        }
        let started = Instant::now();
        let state = detector.snapshot();
        let (dir, reserve) = &self.space;
        if *reserve > 0
            && let Ok(st) = rustix::fs::statvfs(dir)
            && st.f_bavail.saturating_mul(st.f_frsize) < reserve.saturating_add(state.len() as u64)
        {
            self.when = Instant::now();
            tracing::warn!(
                bytes = state.len(),
                "disk nearly full: detector checkpoint not written (a restart replays more)"
            );
            return;
        }
        let written = match log.lock() {
            Ok(mut log) => log.checkpoint(processed, &state),
            Err(_) => {
                tracing::error!("event log unavailable; detector checkpoint not written");
                return;
            }
        };
        self.when = Instant::now();
        match written {
            Ok(()) => {
                self.at = processed;
                tracing::debug!(
                    results = processed,
                    bytes = state.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "detector checkpoint written"
                );
            }
            Err(e) => {
                tracing::error!(error = %blockwatch_proto::error::chain(&e), "could not write the detector checkpoint")
            }
        }
    }
}

/// Appends events to the event log (durably, with the detector's progress when it is the
/// detector's), logs them and hands them to live subscribers. Lines in `unlogged` (an
/// earlier append that failed) go first; what fails now is left there for the next call.
pub(crate) fn publish(
    log: &Mutex<EventLog>,
    events: &broadcast::Sender<Event>,
    out: &mut Vec<Event>,
    processed: Option<u64>,
    unlogged: &mut Vec<String>,
) {
    if out.is_empty() && unlogged.is_empty() {
        return;
    }
    unlogged.extend(out.iter().map(Event::to_json_line));
    match log.lock() {
        Ok(mut log) => match log.append(unlogged, processed) {
            Ok(()) => unlogged.clear(),
            Err(e) => {
                tracing::error!(error = %blockwatch_proto::error::chain(&e), events = unlogged.len(), "could not persist events; retrying with the next")
            }
        },
        Err(_) => tracing::error!("event log unavailable; events not persisted"),
    }
    for e in out.drain(..) {
        tracing::info!(kind = e.kind.name(), target = %e.target, region = %e.region, agent = e.agent_id.as_deref().unwrap_or("-"),
            onset = %blockwatch_proto::time::format_rfc3339(e.onset), "event");
        let _ = events.send(e);
    }
}
