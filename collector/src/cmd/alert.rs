//! `alert test`: one test notification through a configured sink.

use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::alert::{Attempt, Sink, send_test};
use crate::config::CollectorConfig;

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send one test notification through a sink (once, no retries) and say what came back.
    Test {
        /// Collector config file (TOML) holding the `[[sink]]`.
        #[arg(long)]
        config: std::path::PathBuf,
        /// The sink's `name`.
        #[arg(long)]
        sink: String,
    },
}

pub fn run(command: AlertCommand) -> anyhow::Result<()> {
    match command {
        AlertCommand::Test { config, sink } => test(&config, &sink),
    }
}

fn test(config: &Path, name: &str) -> anyhow::Result<()> {
    let cfg = CollectorConfig::load(config)?;
    let Some(sc) = cfg.sinks.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
        bail!("no sink named {name:?} in {} (sinks: {})", config.display(), names.join(", "));
    };
    if let Err(p) = cfg.validate() {
        bail!("{}: {}", config.display(), p.join("; "));
    }
    let windows = std::sync::Arc::new(crate::alert::Maintenance::fixed(Vec::new()));
    let sink = Sink::new(sc.clone(), &cfg.link_base(), windows, |k| std::env::var(k).ok())?;
    let attempt = blockwatch_proto::process::runtime(Some(1))?.block_on(send_test(&sink));
    match attempt {
        Attempt::Delivered(status) => {
            println!("sink {name:?}: test notification delivered (status {status})");
            Ok(())
        }
        Attempt::Retry { status, error } => {
            let status = status.map_or("no answer".to_string(), |s| format!("status {s}"));
            Err(anyhow::anyhow!("{error}")).context(format!("sink {name:?}: not delivered ({status})"))
        }
        Attempt::Refused { status, error } => {
            Err(anyhow::anyhow!("{error}")).context(format!("sink {name:?}: refused (status {status})"))
        }
    }
}
