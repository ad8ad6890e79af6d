use std::path::Path;

use anyhow::Context;

use crate::Agent;
use crate::config::AgentConfig;

pub fn run(config: &Path) -> anyhow::Result<()> {
    blockwatch_proto::process::init_logging("info");
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

pub fn check(config: &Path) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config)?;
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
