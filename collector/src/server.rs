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

use blockwatch_detector::Event;
use blockwatch_proto::v1::{Plan, StoredResult};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::config::{ApiAuth, CollectorConfig};
use crate::detect::{Live, run_detector};
use crate::ingest::{Ingest, Streams};
use crate::rebuild::rebuild_detector;
use crate::silence::watch_silence;
use crate::store::{Store, StoreError};

/// Batches of new results waiting for the detector. When full, the store writer waits.
pub const DETECTOR_QUEUE: usize = 1024;
/// Events buffered per live subscriber; a slow subscriber misses the oldest.
pub const EVENT_BROADCAST: usize = 1024;
/// Result batches buffered per live subscriber (dashboards, the demo); lossy.
pub const RESULT_BROADCAST: usize = 256;
/// Connections the HTTP API holds open at once over TLS (in all, and from one address).
pub const API_CONNECTIONS: usize = 256;
/// Largest gRPC message accepted from an agent.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the detector thread")]
    Thread(#[source] std::io::Error),
    #[error("a start-up task failed: {0}")]
    Task(String),
    #[error("fleet CA: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{}", crate::config::NO_TLS)]
    NoTls,
    #[error("API tokens: {0}")]
    Tokens(#[from] crate::api_auth::TokenError),
    #[error("api.auth is token but no api.tokens_file is set")]
    NoTokens,
    #[error(transparent)]
    Sink(#[from] crate::alert::SinkError),
    #[error("maintenance windows: {0}")]
    Maintenance(String),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    JetStream(#[from] crate::jetstream::JetStreamError),
    #[error("jetstream.api_ca_file {0}")]
    ApiCa(String),
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
    /// Notification sinks, and the signal that stops them.
    sinks: Vec<JoinHandle<()>>,
    stop_sinks: watch::Sender<bool>,
    /// A clustered detector's part in the lease (it hands the lease over as it stops).
    lease: Option<JoinHandle<()>>,
}

impl Collector {
    /// Opens the store, rebuilds the detector's state from it, and starts serving.
    pub async fn start(cfg: &CollectorConfig) -> Result<Collector, StartError> {
        let tls = match (&cfg.tls, cfg.insecure) {
            (Some(t), _) => Some(crate::tls::watch(t.ca_dir.clone())?),
            (None, true) => {
                tracing::warn!(
                    "INSECURE: plaintext gRPC, agents are not authenticated; any client can claim any agent id \
                     (insecure = true)"
                );
                None
            }
            (None, false) => return Err(StartError::NoTls),
        };
        let archive = match &cfg.archive {
            Some(a) => Some(Arc::new(crate::archive::Archive::open(a)?)),
            None => None,
        };
        let dir = cfg.data_dir.clone();
        let (det_tx, det_rx) = std::sync::mpsc::sync_channel(DETECTOR_QUEUE);
        let min_free = cfg.limits.min_free_disk_mb.saturating_mul(1 << 20);
        let store = tokio::task::spawn_blocking(move || Store::open_feeding(&dir, Some(det_tx), min_free))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let rebuilt = {
            let store = store.reader();
            let dcfg = cfg.detector.clone();
            tokio::task::spawn_blocking(move || rebuild_detector(&store, dcfg))
                .await
                .map_err(|e| StartError::Task(e.to_string()))??
        };
        let (events, _) = broadcast::channel(EVENT_BROADCAST);
        let (results, _) = broadcast::channel(RESULT_BROADCAST);
        // Versions start from the clock so that a restarted collector's plan never reuses a
        // version an agent already holds.
        let initial_plan = cfg.plan.as_ref().map(|p| crate::plan::to_proto(p, crate::plan::fresh_version()));
        let (plan, plan_rx) = watch::channel(initial_plan);
        let streams = Arc::new(Streams::default());
        let mut ingest = Ingest::new(store.clone(), cfg, plan_rx, Arc::clone(&streams), tls.clone());
        if let Some(j) = cfg.jetstream.as_ref().filter(|j| j.role == crate::jetstream::Role::Ingest) {
            tracing::info!(servers = %j.servers.join(", "), stream = %j.stream, "clustered ingest: results go to JetStream");
            ingest = ingest.publish_to(crate::jetstream::Publisher::connect(j).await?);
        }
        let ingest = Arc::new(ingest);
        Ingest::spawn_pacer(&ingest);
        let log = Arc::new(Mutex::new(store.event_log()));
        let detector = {
            let (log, events, results) = (Arc::clone(&log), events.clone(), results.clone());
            let space = (cfg.data_dir.clone(), min_free);
            let live = Live { space, log, events, results, streams };
            std::thread::Builder::new()
                .name("detector".into())
                .spawn(move || run_detector(rebuilt, det_rx, live))
                .map_err(StartError::Thread)?
        };

        let (listener, addr) = bind(cfg.listen).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = &cfg.limits;
        let service = crate::ingest::ReportRoute::new(Arc::clone(&ingest), MAX_MESSAGE_BYTES);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::listen::accept(
            listener,
            limits.max_connections,
            limits.max_connections_per_address,
            tls,
        ));
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .max_concurrent_streams(limits.max_streams_per_connection)
                .initial_connection_window_size(limits.receive_window_kib * 1024)
                .initial_stream_window_size(limits.receive_window_kib * 1024)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        let (api_listener, api_addr) = bind(cfg.api_listen).await?;
        let api_listener = match (&cfg.api.tls_cert_file, &cfg.api.tls_key_file) {
            (Some(cert), Some(key)) => {
                // The API's certificate is read once: a channel whose value never changes (its
                // sender may go; receivers keep the value).
                let (_, tls) = watch::channel(crate::tls::load_api(cert, key)?);
                let incoming = crate::listen::accept(api_listener, API_CONNECTIONS, API_CONNECTIONS, Some(tls));
                crate::api::ApiListener::Tls(crate::listen::Incoming(incoming))
            }
            _ => crate::api::ApiListener::Plain(api_listener),
        };
        let tokens = match (cfg.api_auth(), &cfg.api.tokens_file) {
            (ApiAuth::Token, Some(file)) => Some(Arc::new(crate::api_auth::Tokens::open(file)?)),
            (ApiAuth::Token, None) => return Err(StartError::NoTokens),
            (ApiAuth::None, _) => {
                if !cfg.api_listen.ip().is_loopback() {
                    tracing::warn!(api = %cfg.api_listen, "the HTTP API is open to anyone who reaches it (api.auth = \"none\")");
                }
                None
            }
        };
        // Links in notifications: `public_url`, else the API's address as bound.
        let scheme = if cfg.api.tls_cert_file.is_some() { "https" } else { "http" };
        let link_base = cfg.public_url.clone().unwrap_or_else(|| format!("{scheme}://{api_addr}"));
        let windows = {
            let (config, reader) = (cfg.maintenance.clone(), store.reader());
            tokio::task::spawn_blocking(move || crate::alert::Maintenance::open(config, reader))
                .await
                .map_err(|e| StartError::Maintenance(e.to_string()))?
                .map_err(|e| StartError::Maintenance(e.to_string()))?
        };
        let windows = Arc::new(windows);
        let sinks = cfg
            .sinks
            .iter()
            .map(|c| crate::alert::Sink::new(c.clone(), &link_base, Arc::clone(&windows), |k| std::env::var(k).ok()))
            .collect::<Result<Vec<_>, _>>()?;
        let alert_status = Arc::new(crate::alert::Statuses::default());
        let (stop_sinks, sinks_stopped) = watch::channel(false);
        // A clustered detector alerts (and archives) only while it holds the lease.
        let detector_role = cfg.jetstream.as_ref().filter(|j| j.role == crate::jetstream::Role::Detector);
        let mut lease_task = None;
        let lease = detector_role.map(|j| {
            let (leading_tx, leading) = watch::channel(false);
            let (moved, moved_rx) = tokio::sync::mpsc::unbounded_channel();
            let names = sinks.iter().map(|s: &crate::alert::Sink| s.cfg.name.clone()).collect::<Vec<_>>();
            let holder = serde_json::json!({
                "api": j.advertise_api.clone().unwrap_or_else(|| link_base.clone()),
                "pid": std::process::id(),
                "since": blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now()),
            })
            .to_string();
            lease_task = Some(tokio::spawn(crate::jetstream::lead(
                j.clone(),
                store.reader(),
                names,
                holder,
                leading_tx,
                moved_rx,
                ingest.stopping(),
            )));
            crate::alert::Turns { leading, moved }
        });
        let sinks = crate::alert::spawn(
            sinks,
            store.reader(),
            events.clone(),
            Arc::clone(&alert_status),
            sinks_stopped,
            lease.clone(),
        );
        // The live view of every cell: rebuilt from the log and the newest results, then
        // kept current; it stops with the sinks.
        let status = {
            let reader = store.reader();
            let rebuilt = tokio::task::spawn_blocking(move || crate::status::Status::rebuild(&reader)).await;
            Arc::new(rebuilt.map_err(|e| StartError::Maintenance(format!("status view: {e}")))?)
        };
        tokio::spawn(crate::status::follow(
            Arc::clone(&status),
            store.reader(),
            results.subscribe(),
            events.subscribe(),
            stop_sinks.subscribe(),
        ));
        // An ingest front end forwards fleet-wide API requests to the detector holding the lease.
        let upstream = match cfg.jetstream.as_ref().filter(|j| j.role == crate::jetstream::Role::Ingest) {
            Some(j) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                if let Some(path) = &j.api_ca_file {
                    use rustls_pki_types::pem::PemObject;
                    let bad = |e: String| StartError::ApiCa(format!("{}: {e}", path.display()));
                    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
                    }
                }
                let (holder_tx, holder) = watch::channel(None);
                tokio::spawn(crate::jetstream::follow_holder(j.clone(), holder_tx, ingest.stopping()));
                Some(Arc::new(crate::forward::Upstream::new(holder, roots).map_err(StartError::ApiCa)?))
            }
            None => None,
        };
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let parts = crate::api::Parts {
            store: store.reader(),
            ingest: Arc::clone(&ingest),
            alerts: alert_status,
            maintenance: Arc::clone(&windows),
            status,
            data_dir: cfg.data_dir.clone(),
            backup_dir: cfg.backup_dir.clone(),
            backup_reserve: cfg.limits.min_free_disk_mb << 20,
            archive: archive.clone(),
            upstream,
        };
        let api = tokio::spawn(crate::api::serve(api_listener, parts, tokens, async {
            let _ = api_stopped.await;
        }));
        tracing::info!(%addr, api = %api_addr, data_dir = %cfg.data_dir.display(), "collector listening");
        let silence = tokio::spawn(watch_silence(Arc::clone(&ingest), log, events.clone(), store.reader()));
        if let Some(keep) = cfg.retention {
            tokio::spawn(crate::retention::run(store.reader(), keep, archive.is_some(), ingest.stopping()));
        }
        if let Some(j) = detector_role {
            tokio::spawn(crate::jetstream::consume(j.clone(), store.clone(), ingest.stopping()));
        }
        if let (Some(a), Some(c)) = (&archive, &cfg.archive) {
            tokio::spawn(crate::archive::run(
                store.reader(),
                Arc::clone(a),
                cfg.data_dir.join("archive-staging"),
                (cfg.limits.max_age, c.every),
                lease.as_ref().map(|l| l.leading.clone()),
                ingest.stopping(),
            ));
        }
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
            sinks,
            stop_sinks,
            lease: lease_task,
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
        let Collector {
            stop, server, detector, store, ingest, api_stop, api, silence, sinks, stop_sinks, lease, ..
        } = self;
        // Sinks stop where they are: their cursors say where to go on after a restart.
        let _ = stop_sinks.send(true);
        for s in sinks {
            let _ = s.await;
        }
        let _ = api_stop.send(());
        let _ = stop.send(());
        ingest.close_streams();
        if let Some(lease) = lease
            && tokio::time::timeout(deadline, lease).await.is_err()
        {
            tracing::warn!("the detector lease was not handed over by the shutdown deadline; it expires instead");
        }
        let _ = silence.await;
        if tokio::time::timeout(deadline, server).await.is_err() {
            tracing::warn!("streams still open at the shutdown deadline; closing anyway");
        }
        // What was last heard of each agent, kept for the next start.
        let saving = std::sync::Arc::clone(&ingest);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || saving.save_agents(true)).await {
            tracing::warn!(error = %e, "cannot save the agent registry");
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

/// Binds a listener; returns it with the address it got (port 0 picks a free one).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listen = |source| StartError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    Ok((listener, bound))
}
