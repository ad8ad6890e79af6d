//! blockwatch agent: probes provider endpoints in phases (DNS → TCP → TLS → HTTP), classifies
//! what happened, spools every result durably and streams it to the collector.

pub mod cmd;
pub mod config;
pub mod metrics;
pub mod plan;
pub mod probe;
pub mod scheduler;
pub mod spool;
pub mod targets;
pub mod uplink;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::config::AgentConfig;
use crate::probe::{Engine, EngineConfig, ProbeSpec, egress};
use crate::scheduler::ProbeContext;
use crate::spool::{Spool, SpoolError};

/// Probe requests from the collector waiting for the scheduler; when full, new ones are
/// dropped (the next regular probe comes soon anyway).
pub const PROBE_NOW_QUEUE: usize = 16;
/// Body read cap for HTTP answers.
pub const BODY_CAP: usize = 64 * 1024;

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("metrics_listen {addr}")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("probe engine")]
    Engine(#[from] crate::probe::EngineError),
    #[error("cannot read ca_file {path}")]
    CaRead { path: std::path::PathBuf, source: std::io::Error },
    #[error("ca_file {path}: {why}")]
    CaFile { path: std::path::PathBuf, why: String },
    #[error("provider catalogue")]
    Catalogue(#[from] crate::probe::CatalogueError),
    #[error("credentials: {}", .0.join("; "))]
    Credentials(Vec<String>),
}

/// A running agent.
pub struct Agent {
    stop_probes: watch::Sender<bool>,
    stop_uplink: watch::Sender<bool>,
    scheduler: tokio::task::JoinHandle<()>,
    uplink: tokio::task::JoinHandle<()>,
    spool: Arc<Spool>,
}

impl Agent {
    /// Opens the spool, builds the probe engine and starts the scheduler and uplink.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, StartError> {
        let cfg = Arc::new(cfg);
        let catalogue = Arc::new(cfg.catalogue()?);
        let credentials = Arc::new(cfg.credentials(|k| std::env::var(k).ok()).map_err(StartError::Credentials)?);
        let spool = {
            let (dir, max) = (cfg.spool_dir.clone(), cfg.spool_max_mb * 1024 * 1024);
            Arc::new(tokio::task::spawn_blocking(move || Spool::open(&dir, max)).await.map_err(|e| {
                SpoolError::Db { path: cfg.spool_dir.clone(), source: redb::Error::Io(std::io::Error::other(e)) }
            })??)
        };
        let extra_ca_pem = match &cfg.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|source| StartError::CaRead { path: p.clone(), source })?),
            None => None,
        };
        let engine = Engine::new(EngineConfig {
            nameservers: cfg.nameserver_addrs(),
            extra_ca_pem,
            poison: cfg.poison.clone(),
            body_cap: BODY_CAP,
            catalogue: Arc::clone(&catalogue),
        })
        .map_err(|e| match (e, &cfg.ca_file) {
            (crate::probe::EngineError::Ca(why), Some(path)) => StartError::CaFile { path: path.clone(), why },
            (e, _) => StartError::Engine(e),
        })?;
        let (stop_probes, probes_rx) = watch::channel(false);
        let (stop_uplink, uplink_rx) = watch::channel(false);
        let (plan_tx, plan_rx) = watch::channel(plan::initial(&cfg));
        let (probe_now_tx, probe_now_rx) = mpsc::channel(PROBE_NOW_QUEUE);
        let new_results = Arc::new(Notify::new());
        let (egress_tx, egress_rx) = watch::channel(egress::Egress::default());
        if let Some(url) = &cfg.egress_echo_url {
            let spec = ProbeSpec {
                url: url.clone(),
                provider: targets::provider_for(&catalogue, probe::catalogue::GENERIC, url, &[]),
                timeout: cfg.timeout,
                source_address: cfg.source_address,
                allow_private: false,
                credential: None,
            };
            // It holds nothing to flush, so it simply ends on `stop`; results wait for nothing
            // from it (they carry no egress address until the first look-up succeeds).
            tokio::spawn(egress::keep_current(
                engine.clone(),
                spec,
                probe::geoip::GeoIp::new(cfg.geoip_db.clone()),
                egress::REFRESH,
                egress::RETRY,
                egress_tx,
                {
                    let mut stop = probes_rx.clone();
                    async move { stopped(&mut stop).await }
                },
            ));
        }
        let metrics = Arc::new(metrics::AgentMetrics::new(&cfg.agent_id, &cfg.region));
        if let Some(addr) = cfg.metrics_listen {
            let listener = metrics::bind(addr).await.map_err(|source| StartError::Metrics { addr, source })?;
            tracing::info!(%addr, "serving metrics at /metrics");
            tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), Arc::clone(&spool), {
                let mut stop = probes_rx.clone();
                async move { stopped(&mut stop).await }
            }));
        }
        let ctx = ProbeContext {
            cfg: Arc::clone(&cfg),
            engine,
            catalogue,
            spool: Arc::clone(&spool),
            new_results: Arc::clone(&new_results),
            permits: Arc::new(Semaphore::new(cfg.concurrency)),
            credentials,
            egress: egress_rx,
            metrics: Arc::clone(&metrics),
        };
        let scheduler = tokio::spawn(scheduler::run(ctx, plan_rx, probe_now_rx, probes_rx.clone()));
        // Shutdown commits what is staged itself, after the last probe.
        tokio::spawn(spool::flusher(Arc::clone(&spool), spool::LINGER, {
            let mut stop = probes_rx;
            async move { stopped(&mut stop).await }
        }));
        let uplink = tokio::spawn(
            uplink::Uplink {
                cfg: Arc::clone(&cfg),
                spool: Arc::clone(&spool),
                new_results,
                plan: plan_tx,
                probe_now: probe_now_tx,
                stop: uplink_rx,
                drain_deadline: Duration::from_secs(5),
                metrics,
            }
            .run(),
        );
        if cfg.insecure {
            tracing::warn!(collector = %cfg.collector,
                "INSECURE: plaintext to the collector (insecure = true); results travel unencrypted and unauthenticated");
        }
        tracing::info!(agent_id = %cfg.agent_id, region = %cfg.region, collector = %cfg.collector,
            pending = spool.stats().pending, "agent started");
        Ok(Agent { stop_probes, stop_uplink, scheduler, uplink, spool })
    }

    /// Spool counters.
    pub fn spool_stats(&self) -> spool::SpoolStats {
        self.spool.stats()
    }

    /// Graceful shutdown: stop scheduling, let in-flight probes finish, flush what the
    /// collector will take before the uplink's deadline, close the stream.
    pub async fn shutdown(self) {
        // Probes first, so the uplink's final flush includes the last results.
        let _ = self.stop_probes.send(true);
        let _ = self.scheduler.await;
        let spool = Arc::clone(&self.spool);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.commit()).await {
            tracing::error!(error = %blockwatch_proto::error::chain(&e), "could not commit the last results to the spool; they are lost");
        }
        let _ = self.stop_uplink.send(true);
        let _ = self.uplink.await;
        // The removals of the last acks were non-durable: persist them.
        let spool = self.spool;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.sync()).await {
            tracing::warn!(error = %blockwatch_proto::error::chain(&e), "could not sync the spool (acked results may be sent again)");
        }
    }
}
