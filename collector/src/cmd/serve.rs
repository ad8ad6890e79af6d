use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::CollectorConfig;
use crate::server::Collector;

/// How long shutdown waits for open streams and the detector.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

pub fn run(config: &Path, log_format: blockwatch_proto::process::LogFormat) -> anyhow::Result<()> {
    blockwatch_proto::process::init_logging("info", log_format);
    let cfg = CollectorConfig::load(config)?;
    blockwatch_proto::process::runtime(None)?.block_on(async {
        let collector = Collector::start(&cfg).await.context("collector failed to start")?;
        announce(&collector);
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => reload(&collector, config),
            }
        }
        tracing::info!("shutting down");
        collector.shutdown(SHUTDOWN_DEADLINE).await;
        Ok(())
    })
}

/// Prints the bound addresses on stdout, one line, once both listeners are up: with port 0 in
/// the config this is how a supervisor or a test learns the ports the collector got. A closed
/// stdout is not a reason to stop serving.
fn announce(collector: &Collector) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening grpc={} api={}", collector.addr, collector.api_addr);
    let _ = out.flush();
}

/// SIGHUP: re-reads the config and pushes a changed plan to every connected agent. A config
/// that does not load is refused whole and the running plan stays.
fn reload(collector: &Collector, path: &Path) {
    match CollectorConfig::load(path) {
        Ok(cfg) => match collector.replace_plan(cfg.plan.as_ref()) {
            Some(version) => tracing::info!(version, "plan reloaded and pushed to agents"),
            None => tracing::info!("config reloaded; plan unchanged"),
        },
        Err(e) => {
            tracing::error!(error = %blockwatch_proto::error::chain(&e), "config reload refused; keeping the running plan")
        }
    }
}
