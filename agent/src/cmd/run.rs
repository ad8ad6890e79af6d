use std::path::Path;

use anyhow::Context;

use crate::Agent;
use crate::config::AgentConfig;
use blockwatch_proto::config_file::{local_address, writable_dir};

pub fn run(config: &Path, log_format: blockwatch_proto::process::LogFormat) -> anyhow::Result<()> {
    blockwatch_proto::process::init_logging("info", log_format);
    let cfg = AgentConfig::load(config)?;
    // One thread: probes mostly wait on the network, and a single-threaded runtime spends
    // nothing on waking and handing tasks between workers (the spool's disk work runs on the
    // blocking pool). A probe's crypto is tens of microseconds, so it holds up no other
    // probe's timings measurably.
    blockwatch_proto::process::runtime(Some(1))?.block_on(async {
        let agent = Agent::start(cfg).await.context("agent failed to start")?;
        shutdown_signal().await;
        tracing::info!("shutting down: finishing probes and flushing the spool");
        agent.shutdown().await;
        Ok(())
    })
}

/// Checks a config as `run` would use it: parsed and valid, and what it names usable here
/// (the spool directory writable, `ca_file` PEM certificates, `source_address` on this host,
/// `metrics_listen` an address of this host).
pub fn check(config: &Path) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config)?;
    let problems = preflight(&cfg);
    if !problems.is_empty() {
        anyhow::bail!("config {}: {}", config.display(), problems.join("; "));
    }
    println!("config ok: agent {} in region {}, collector {}", cfg.agent_id, cfg.region, cfg.collector);
    for t in crate::plan::initial(&cfg).targets {
        println!("  {:<16} every {:>6}  {}", t.id, humantime::format_duration(t.interval).to_string(), t.url);
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// What a start would fail on that parsing cannot see, each problem naming its key.
pub fn preflight(cfg: &AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(writable_dir("spool_dir", &cfg.spool_dir).err());
    if let Some(path) = &cfg.ca_file {
        match std::fs::read(path) {
            Ok(pem) => {
                if let Err(e) = crate::probe::tls::client_config(Some(&pem)) {
                    problems.push(format!("ca_file {}: {e}", path.display()));
                }
            }
            Err(e) => problems.push(format!("ca_file {}: cannot read: {e}", path.display())),
        }
    }
    if let Some(ip) = cfg.source_address {
        problems.extend(local_address("source_address", ip).err());
    }
    if let Some(addr) = cfg.metrics_listen {
        problems.extend(local_address("metrics_listen", addr.ip()).err());
    }
    problems
}
