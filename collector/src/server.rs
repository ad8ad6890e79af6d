//! The running collector: store, gRPC ingest and the live detector, wired together.
//!
//! Tasks and channels (see ARCHITECTURE.md):
//! - tonic server → one task per Report stream → `Store` writer thread (queue `WRITE_QUEUE`,
//!   block when full) → ack back on the stream (queue `OUTBOUND_QUEUE`).
//! - writer thread → detector thread, in store order (queue `DETECTOR_QUEUE`, the writer
//!   blocks when full) → event log in the store and the `events` broadcast (`EVENT_BROADCAST`,
//!   slow subscribers lose the oldest).
//!
//! Shutdown: stop accepting, let streams end, close the store's writer (which ends the
//! detector's feed), let the detector drain.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use blockwatch_proto::time::from_timestamp;
use blockwatch_proto::v1::fleet_server::FleetServer;
use blockwatch_proto::v1::{Plan, StoredResult};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::config::CollectorConfig;
use crate::ingest::{Ingest, Streams};
use crate::store::{EventLog, Store, StoreError};
use blockwatch_detector::{Detector, DetectorConfig, Event, EventKind, Evidence, Observation};

/// Batches of new results waiting for the detector. When full, the store writer waits.
pub const DETECTOR_QUEUE: usize = 1024;
/// Events buffered per live subscriber; a slow subscriber misses the oldest.
pub const EVENT_BROADCAST: usize = 1024;
/// Result batches buffered per live subscriber (dashboards, the demo); lossy.
pub const RESULT_BROADCAST: usize = 256;
/// Largest gRPC message accepted from an agent.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A collector that is running.
pub struct Collector {
    /// The address agents connect to.
    pub addr: SocketAddr,
    /// The HTTP query API's address.
    pub api_addr: SocketAddr,
    /// Live detector events.
    pub events: broadcast::Sender<Event>,
    /// Live stored results, in batches as they were made durable.
    pub results: broadcast::Sender<Arc<Vec<StoredResult>>>,
    /// The ingest state (agents seen).
    pub ingest: Arc<Ingest>,
    /// Replace the central plan (agents receive it on their open streams).
    pub plan: watch::Sender<Option<Plan>>,
    store: Store,
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    api_stop: tokio::sync::oneshot::Sender<()>,
    api: JoinHandle<std::io::Result<()>>,
    detector: std::thread::JoinHandle<()>,
    silence: JoinHandle<()>,
}

impl Collector {
    /// Opens the store, rebuilds the detector's state from it, and starts serving.
    pub async fn start(cfg: &CollectorConfig) -> Result<Collector, StartError> {
        let dir = cfg.data_dir.clone();
        let (det_tx, det_rx) = std::sync::mpsc::sync_channel(DETECTOR_QUEUE);
        let store =
            tokio::task::spawn_blocking(move || Store::open_feeding(&dir, Some(det_tx))).await.map_err(|e| {
                StoreError::Open { path: cfg.data_dir.clone(), source: fjall::Error::Io(std::io::Error::other(e)) }
            })??;
        let rebuilt = {
            let store = store.clone();
            let dcfg = cfg.detector.clone();
            tokio::task::spawn_blocking(move || rebuild_detector(&store, dcfg)).await.map_err(|e| {
                StoreError::Open { path: cfg.data_dir.clone(), source: fjall::Error::Io(std::io::Error::other(e)) }
            })??
        };
        let (events, _) = broadcast::channel(EVENT_BROADCAST);
        let (results, _) = broadcast::channel(RESULT_BROADCAST);
        // Versions start from the clock so that a restarted collector's plan never reuses a
        // version an agent already holds.
        let initial_plan = cfg.plan.as_ref().map(|p| crate::plan::to_proto(p, crate::plan::fresh_version()));
        let (plan, plan_rx) = watch::channel(initial_plan);
        let streams = Arc::new(Streams::default());
        let ingest = Arc::new(Ingest::new(store.clone(), cfg, plan_rx, Arc::clone(&streams)));
        let log = Arc::new(Mutex::new(store.event_log()));
        let detector = {
            let (log, events, results) = (Arc::clone(&log), events.clone(), results.clone());
            let live = Live { log, events, results, streams };
            std::thread::Builder::new()
                .name("detector".into())
                .spawn(move || run_detector(rebuilt, det_rx, live))
                .map_err(|e| StoreError::Open { path: cfg.data_dir.clone(), source: fjall::Error::Io(e) })?
        };

        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Listen { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: cfg.listen, source })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = FleetServer::new(crate::ingest::FleetService(Arc::clone(&ingest)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        let api_listener = crate::api::bind(cfg.api_listen).await?;
        let api_addr =
            api_listener.local_addr().map_err(|source| StartError::Listen { addr: cfg.api_listen, source })?;
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(crate::api::serve(api_listener, store.reader(), Arc::clone(&ingest), async {
            let _ = api_stopped.await;
        }));
        tracing::info!(%addr, api = %api_addr, data_dir = %cfg.data_dir.display(), "collector listening");
        let silence = tokio::spawn(watch_silence(Arc::clone(&ingest), log, events.clone()));
        Ok(Collector {
            addr,
            api_addr,
            events,
            results,
            ingest,
            plan,
            store,
            stop,
            server,
            api_stop,
            api,
            detector,
            silence,
        })
    }

    /// Replaces the central plan when it differs from the running one; returns the new plan
    /// version. Agents receive it on their open streams.
    pub fn replace_plan(&self, plan: Option<&crate::config::PlanConfig>) -> Option<u64> {
        let mut version = None;
        self.plan.send_if_modified(|current| {
            let old_version = current.as_ref().map_or(0, |p| p.version);
            // Dropping the plan tells agents to go back to their own targets.
            let next = match plan {
                Some(p) => Some(crate::plan::to_proto(p, old_version + 1)),
                None if current.as_ref().is_some_and(|p| !p.withdrawn) => {
                    Some(Plan { version: old_version + 1, withdrawn: true, ..Default::default() })
                }
                None => current.clone(),
            };
            let same = match (&*current, &next) {
                (Some(a), Some(b)) => a.targets == b.targets && a.interval == b.interval && a.withdrawn == b.withdrawn,
                (None, None) => true,
                _ => false,
            };
            if !same {
                version = Some(next.as_ref().map_or(0, |p| p.version));
                *current = next;
            }
            !same
        });
        version
    }

    /// A handle to the store (for export and queries).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting, waits for streams to end (up to `deadline`), drains the detector and
    /// closes the store.
    pub async fn shutdown(self, deadline: std::time::Duration) {
        let Collector { stop, server, detector, store, ingest, api_stop, api, silence, .. } = self;
        let _ = api_stop.send(());
        let _ = stop.send(());
        ingest.close_streams();
        let _ = silence.await;
        if tokio::time::timeout(deadline, server).await.is_err() {
            tracing::warn!("streams still open at the shutdown deadline; closing anyway");
        }
        drop(ingest);
        if tokio::time::timeout(deadline, api).await.is_err() {
            tracing::warn!("API requests still running at the shutdown deadline");
        }
        // Closing the writer ends the detector's feed; the detector then drains and stops.
        let _ = tokio::task::spawn_blocking(move || {
            store.close();
            let _ = detector.join();
        })
        .await;
    }
}

/// The detector as the store leaves it.
struct Rebuilt {
    detector: Detector,
    /// Results in the store: what the live detector has handled once it starts.
    processed: u64,
    /// Events of results the previous run stored but had not yet turned into logged events
    /// (it stopped uncleanly): to be published now.
    recovered: Vec<Event>,
}

/// Feeds every stored result through a fresh detector so live detection continues where it
/// left off. Events of results up to the log's `detector_processed` mark are in the log
/// already and are dropped; those after it were lost with the previous process and are
/// returned. (A store with events but no mark predates the mark: all its events are logged.)
fn rebuild_detector(store: &Store, cfg: DetectorConfig) -> Result<Rebuilt, StoreError> {
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
        observe(&mut detector, &stored?, &mut sink);
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

/// Feeds one stored result to the detector.
pub fn observe(detector: &mut Detector, stored: &StoredResult, out: &mut Vec<Event>) {
    let Some(r) = &stored.result else { return };
    let started_at = r.started_at.as_ref().map_or(0, from_timestamp);
    detector.observe(
        &Observation {
            probe_id: &r.probe_id,
            agent_id: &r.agent_id,
            region: &r.region,
            target: &r.target_id,
            started_at,
            received_at: stored.received_at.as_ref().map_or(started_at, from_timestamp),
            outcome: r.outcome(),
            control: r.control,
            confirmation: r.confirmation,
        },
        out,
    );
}

/// Where the live detector's output goes. Holds no handle that keeps the store's writer
/// alive, so closing the store ends the detector.
struct Live {
    log: Arc<Mutex<EventLog>>,
    events: broadcast::Sender<Event>,
    results: broadcast::Sender<Arc<Vec<StoredResult>>>,
    streams: Arc<Streams>,
}

/// The live detector, on its own thread: results in store order in, events out, and probe
/// requests to the agents of a region where a block is suspected.
fn run_detector(rebuilt: Rebuilt, rx: std::sync::mpsc::Receiver<Vec<StoredResult>>, live: Live) {
    let Live { log, events, results, streams } = live;
    let Rebuilt { mut detector, mut processed, recovered: mut out } = rebuilt;
    if !out.is_empty() {
        tracing::warn!(events = out.len(), "publishing events the previous run decided but did not log");
        publish(&log, &events, &mut out, Some(processed));
    }
    detector.request_confirmations();
    while let Ok(batch) = rx.recv() {
        for stored in &batch {
            observe(&mut detector, stored, &mut out);
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
fn publish(log: &Mutex<EventLog>, events: &broadcast::Sender<Event>, out: &mut Vec<Event>, processed: Option<u64>) {
    if out.is_empty() {
        return;
    }
    let lines: Vec<String> = out.iter().map(Event::to_json_line).collect();
    match log.lock() {
        Ok(mut log) => {
            if let Err(e) = log.append(&lines, processed) {
                tracing::error!(error = %e, "could not persist events");
            }
        }
        Err(_) => tracing::error!("event log unavailable; events not persisted"),
    }
    for e in out.drain(..) {
        tracing::info!(kind = ?e.kind, target = %e.target, region = %e.region, agent = e.agent_id.as_deref().unwrap_or("-"),
            onset = %blockwatch_proto::time::format_rfc3339(e.onset), "event");
        let _ = events.send(e);
    }
}

/// Marks agents silent when the collector has heard nothing from them for
/// `SILENT_AFTER_HEARTBEATS` heartbeat intervals (`Ingest::is_silent`), and back when they speak again; both are
/// events in the log. Ends at shutdown.
async fn watch_silence(ingest: Arc<Ingest>, log: Arc<Mutex<EventLog>>, events: broadcast::Sender<Event>) {
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
