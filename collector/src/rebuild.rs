//! Start-up: the detector's state as the previous run left it — its checkpoint, and a replay
//! of the results stored after it — and the events that run decided but did not log.

use blockwatch_detector::{Detector, DetectorConfig, Event, Observation, SnapshotError};

use crate::store::{Reader, StoreError};

/// The detector as the store leaves it.
pub(crate) struct Rebuilt {
    pub(crate) detector: Detector,
    /// The sequence number of the last stored result: what the live detector has handled
    /// once it starts.
    pub(crate) processed: u64,
    /// Events of results the previous run stored but had not yet turned into logged events
    /// (it stopped uncleanly): to be published now.
    pub(crate) recovered: Vec<Event>,
    /// The results the checkpoint the state started from covers (0: replayed from the start).
    pub(crate) checkpointed: u64,
}

/// Restores the detector from its checkpoint (when there is one this version and
/// configuration can take up) and feeds it every result stored after it, so live detection
/// continues where it left off. Events of results up to the log's `detector_processed` mark
/// are in the log already and are dropped; those after it were lost with the previous process
/// and are returned. (A store with events but no mark predates the mark: all its events are
/// logged.) Blocking.
pub(crate) fn rebuild_detector(store: &Reader, cfg: DetectorConfig) -> Result<Rebuilt, StoreError> {
    let logged = match store.detector_processed()? {
        Some(n) => n,
        None if store.no_events()? => 0,
        None => u64::MAX,
    };
    let started = std::time::Instant::now();
    let (mut detector, checkpointed) = match from_checkpoint(store, &cfg) {
        Some((d, at)) => (d, at),
        None => (Detector::new(cfg), 0),
    };
    let mut sink = Vec::new();
    let mut recovered = Vec::new();
    let mut processed = checkpointed;
    let mut replayed = 0u64;
    for stored in store.numbered_results_after(checkpointed) {
        let (seq, stored) = stored?;
        if let Some(o) = Observation::from_stored(&stored) {
            detector.observe(&o, &mut sink);
        }
        processed = seq;
        replayed += 1;
        if seq <= logged {
            sink.clear();
        } else {
            recovered.append(&mut sink);
        }
    }
    if processed > 0 {
        tracing::info!(
            checkpoint = checkpointed,
            replayed,
            recovered = recovered.len(),
            ms = started.elapsed().as_millis() as u64,
            "detector state rebuilt"
        );
    }
    Ok(Rebuilt { detector, processed, recovered, checkpointed })
}

/// The detector of the store's checkpoint and the results it covers, or `None` (with the
/// reason logged) when there is none to take up: then the whole store is replayed.
fn from_checkpoint(store: &Reader, cfg: &DetectorConfig) -> Option<(Detector, u64)> {
    let (at, bytes) = match store.detector_checkpoint() {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %blockwatch_proto::error::chain(&e), "detector checkpoint unreadable; replaying the whole store");
            return None;
        }
    };
    let last = store.last_result_seq();
    if at > last {
        tracing::warn!(
            checkpoint = at,
            stored = last,
            "the detector checkpoint covers results the store does not have; replaying the whole store"
        );
        return None;
    }
    match Detector::restore(cfg.clone(), &bytes) {
        Ok(d) => Some((d, at)),
        Err(e @ (SnapshotError::OtherConfig | SnapshotError::OtherVersion { .. })) => {
            tracing::info!(reason = %e, "detector checkpoint not taken up; replaying the whole store");
            None
        }
        Err(e) => {
            tracing::warn!(reason = %e, "detector checkpoint not taken up; replaying the whole store");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use blockwatch_sim as sim;

    use super::*;
    use crate::store::Store;

    /// A store holding a generated trace (the same cell blocked three times),
    /// written in batches of 50 as ingest would.
    async fn stored_trace(dir: &std::path::Path) -> Store {
        let p = sim::Params::new(sim::Family::Curfew, 60, 3, 11);
        let store = Store::open(dir).unwrap();
        let trace = sim::generate(&p);
        let recs: Vec<_> = trace.records.iter().zip(trace.trace_records()).collect();
        for batch in recs.chunks(50) {
            let received = batch.iter().map(|(r, _)| r.received_at).max().unwrap();
            let results = batch.iter().map(|(_, t)| t.to_result().unwrap()).collect();
            store.write_results(results, received).await.unwrap();
        }
        store
    }

    /// A detector fed the stored results `from..=to` (sequence numbers), and their events.
    fn fed(store: &Store, mut d: Detector, from: u64, to: u64) -> (Detector, Vec<Event>) {
        let mut out = Vec::new();
        for r in store.numbered_results_after(from - 1) {
            let (seq, stored) = r.unwrap();
            if seq > to {
                break;
            }
            d.observe(&Observation::from_stored(&stored).unwrap(), &mut out);
        }
        (d, out)
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events.iter().map(Event::to_json_line).collect()
    }

    #[tokio::test]
    async fn a_start_from_the_checkpoint_equals_a_replay_of_the_whole_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = stored_trace(dir.path()).await;
        let last = store.last_result_seq();
        let cfg = DetectorConfig::default();

        // Nothing logged, no checkpoint: every event of the whole store is recovered.
        let whole = rebuild_detector(&store.reader(), cfg.clone()).unwrap();
        assert_eq!((whole.checkpointed, whole.processed), (0, last));
        let all = lines(&whole.recovered);
        assert!(all.len() >= 4, "the trace has blocks and ends: {all:?}");
        let want = whole.detector.snapshot();

        // A previous run: a checkpoint after a third of the results, then events logged up to
        // two thirds, then a crash.
        let (k, m) = (last / 3, 2 * last / 3);
        let (at_k, before_k) = fed(&store, Detector::new(cfg.clone()), 1, k);
        let mut log = store.event_log();
        log.append(&lines(&before_k), Some(k)).unwrap();
        log.checkpoint(k, &at_k.snapshot()).unwrap();
        let (_, k_to_m) = fed(&store, at_k, k + 1, m);
        log.append(&lines(&k_to_m), Some(m)).unwrap();
        let logged = before_k.len() + k_to_m.len();
        assert!(!before_k.is_empty() && !k_to_m.is_empty() && logged < all.len(), "events fall on every side");

        let rebuilt = rebuild_detector(&store.reader(), cfg.clone()).unwrap();
        assert_eq!((rebuilt.checkpointed, rebuilt.processed), (k, last));
        assert!(rebuilt.detector.snapshot() == want, "the state equals the whole replay's");
        assert_eq!(lines(&rebuilt.recovered), all[logged..], "exactly the events after the mark are recovered");

        // The checkpoint is replaced whole, and a shorter one leaves no chunk of the longer.
        log.checkpoint(m, &[7u8; 3]).unwrap();
        assert_eq!(store.detector_checkpoint().unwrap(), Some((m, vec![7u8; 3])));

        // A damaged checkpoint, one of another configuration, and one ahead of the store are
        // not taken up: the whole store is replayed, to the same state.
        let other = DetectorConfig { lane_history: 64, ..cfg.clone() };
        for (label, at, bytes, cfg) in [
            ("damaged", k, b"BWDS\x01\x00\x00\x00junk".to_vec(), cfg.clone()),
            ("ahead of the store", last + 5, at_k_bytes(&store, k), cfg.clone()),
            ("another configuration", k, at_k_bytes(&store, k), other.clone()),
        ] {
            log.checkpoint(at, &bytes).unwrap();
            let rebuilt = rebuild_detector(&store.reader(), cfg.clone()).unwrap();
            assert_eq!(rebuilt.checkpointed, 0, "{label}");
            let reference = rebuild_detector_without_checkpoint(&store, cfg);
            assert!(rebuilt.detector.snapshot() == reference, "{label}: the state of a whole replay");
        }
        store.close();
    }

    fn at_k_bytes(store: &Store, k: u64) -> Vec<u8> {
        fed(store, Detector::new(DetectorConfig::default()), 1, k).0.snapshot()
    }

    fn rebuild_detector_without_checkpoint(store: &Store, cfg: DetectorConfig) -> Vec<u8> {
        fed(store, Detector::new(cfg), 1, u64::MAX).0.snapshot()
    }
}
