use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::CollectorConfig;
use crate::server::Collector;

/// How long shutdown waits for open streams and the detector.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

pub fn run(config: &Path) -> anyhow::Result<()> {
    super::init_logging("info");
    let cfg = CollectorConfig::load(config)?;
    super::runtime()?.block_on(async {
        let collector = Collector::start(&cfg).await.context("collector failed to start")?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        collector.shutdown(SHUTDOWN_DEADLINE).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
