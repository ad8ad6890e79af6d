//! The agent's own `/metrics` (Prometheus text format, the `prometheus` crate), on the
//! optional `metrics_listen` address: probes by target and outcome, phase durations, the
//! spool, the uplink.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::spool::Spool;

/// Connections the metrics port serves at once; more wait in the kernel's queue.
const MAX_CONNECTIONS: usize = 8;

/// What the agent counts as it runs.
pub struct AgentMetrics {
    pub probes: IntCounterVec,
    pub phases: HistogramVec,
    /// 1 while a Report stream to the collector is open.
    pub connected: IntGauge,
    pub sessions: IntCounterVec,
    /// Results sent and not yet acked.
    pub unacked: IntGauge,
    info: IntGaugeVec,
}

impl AgentMetrics {
    pub fn new(agent_id: &str, region: &str) -> AgentMetrics {
        let m = AgentMetrics {
            probes: IntCounterVec::new(
                Opts::new("blockwatch_agent_probes_total", "Probes finished, by target and outcome."),
                &["target", "outcome"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
            phases: HistogramVec::new(
                HistogramOpts::new("blockwatch_agent_probe_phase_seconds", "How long each phase of a probe took.")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["target", "phase"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
            connected: IntGauge::new("blockwatch_agent_uplink_connected", "1 while a stream to the collector is open.")
                .unwrap_or_else(|e| panic!("{e}")),
            sessions: IntCounterVec::new(
                Opts::new("blockwatch_agent_uplink_sessions_total", "Sessions with the collector, by how they ended."),
                &["end"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
            unacked: IntGauge::new("blockwatch_agent_unacked_results", "Results sent to the collector, not yet acked.")
                .unwrap_or_else(|e| panic!("{e}")),
            info: IntGaugeVec::new(
                Opts::new("blockwatch_agent_info", "The agent: its id, region and version (always 1)."),
                &["agent_id", "region", "version"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        };
        m.info.with_label_values(&[agent_id, region, env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// Counts a finished probe and its phases.
    pub fn probe(&self, target: &str, r: &blockwatch_proto::v1::ProbeResult) {
        self.probes.with_label_values(&[target, r.outcome().name()]).inc();
        if let Some(d) = &r.durations {
            for (phase, us) in
                [("dns", d.dns_us), ("connect", d.connect_us), ("tls", d.tls_us), ("ttfb", d.http_ttfb_us)]
            {
                if us > 0 {
                    self.phases.with_label_values(&[target, phase]).observe(us as f64 / 1e6);
                }
            }
        }
    }

    /// The exposition, with the spool's counters as they are now.
    pub fn render(&self, spool: &Spool) -> String {
        let r = Registry::new();
        let stats = spool.stats();
        let gauge = |name: &str, help: &str, v: i64| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("{e}"));
            g.set(v);
            Box::new(g) as Box<dyn Collector>
        };
        let dropped = IntCounterVec::new(
            Opts::new("blockwatch_agent_spool_dropped_total", "Results dropped because the spool was full."),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        dropped.with_label_values::<&str>(&[]).inc_by(stats.dropped_total);
        let all: Vec<Box<dyn Collector>> = vec![
            Box::new(self.probes.clone()),
            Box::new(self.phases.clone()),
            Box::new(self.connected.clone()),
            Box::new(self.sessions.clone()),
            Box::new(self.unacked.clone()),
            Box::new(self.info.clone()),
            gauge("blockwatch_agent_spool_pending", "Results in the spool waiting for an ack.", stats.pending as i64),
            gauge("blockwatch_agent_spool_bytes", "Their encoded size.", stats.bytes as i64),
            gauge("blockwatch_agent_spool_staged", "Results not yet committed to the spool.", spool.staged() as i64),
            Box::new(dropped),
        ];
        for c in all {
            let _ = r.register(c);
        }
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&r.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Whether the agent does its job now: the spool takes results and a stream to the collector
/// is open. The error says what is wrong.
pub fn readiness(metrics: &AgentMetrics, spool: &Spool) -> Result<(), String> {
    spool.health().map_err(|e| format!("spool: {e}"))?;
    if metrics.connected.get() != 1 {
        return Err("no stream to the collector is open (results are spooled meanwhile)".into());
    }
    Ok(())
}

/// Serves `GET /metrics`, `GET /healthz` (alive) and `GET /readyz` ([`readiness`]) on
/// `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    spool: Arc<Spool>,
    stop: impl std::future::Future<Output = ()>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let Ok((stream, _peer)) = accepted else { continue };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let (metrics, spool) = (Arc::clone(&metrics), Arc::clone(&spool));
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (metrics, spool) = (Arc::clone(&metrics), Arc::clone(&spool));
                async move {
                    let text = hyper::Response::builder().header("content-type", "text/plain; charset=utf-8");
                    match (req.method() == hyper::Method::GET, req.uri().path()) {
                        (true, "/metrics") => hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render(&spool)))),
                        (true, "/healthz") => text.body(Full::new(Bytes::from_static(b"ok\n"))),
                        (true, "/readyz") => match readiness(&metrics, &spool) {
                            Ok(()) => text.body(Full::new(Bytes::from_static(b"ready\n"))),
                            Err(why) => text.status(503).body(Full::new(Bytes::from(format!("not ready: {why}\n")))),
                        },
                        _ => {
                            text.status(404).body(Full::new(Bytes::from_static(b"GET /metrics, /healthz or /readyz\n")))
                        }
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

/// Binds the metrics port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
