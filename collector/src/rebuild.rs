//! Start-up: the detector's state rebuilt by replaying the store, so live detection goes on
//! where the previous run left it, and the events that run decided but did not log.

use blockwatch_detector::{Detector, DetectorConfig, Event, Observation};

use crate::store::{Store, StoreError};

/// The detector as the store leaves it.
pub(crate) struct Rebuilt {
    pub(crate) detector: Detector,
    /// Results in the store: what the live detector has handled once it starts.
    pub(crate) processed: u64,
    /// Events of results the previous run stored but had not yet turned into logged events
    /// (it stopped uncleanly): to be published now.
    pub(crate) recovered: Vec<Event>,
}

/// Feeds every stored result through a fresh detector so live detection continues where it
/// left off. Events of results up to the log's `detector_processed` mark are in the log
/// already and are dropped; those after it were lost with the previous process and are
/// returned. (A store with events but no mark predates the mark: all its events are logged.)
pub(crate) fn rebuild_detector(store: &Store, cfg: DetectorConfig) -> Result<Rebuilt, StoreError> {
    let logged = match store.detector_processed()? {
        Some(n) => n,
        None if store.no_events()? => 0,
        None => u64::MAX,
    };
    let mut detector = Detector::new(cfg);
    let mut sink = Vec::new();
    let mut recovered = Vec::new();
    let mut n = 0u64;
    for stored in store.results() {
        if let Some(o) = Observation::from_stored(&stored?) {
            detector.observe(&o, &mut sink);
        }
        n += 1;
        if n <= logged {
            sink.clear();
        } else {
            recovered.append(&mut sink);
        }
    }
    if n > 0 {
        tracing::info!(results = n, recovered = recovered.len(), "detector state rebuilt from the store");
    }
    Ok(Rebuilt { detector, processed: n, recovered })
}
