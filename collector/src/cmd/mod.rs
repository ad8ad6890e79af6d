//! Command-line interface: one file per command.

mod demo;
mod export;
mod replay;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// blockwatch collector: stores probe results from agents and detects regional blocks.
#[derive(Debug, Parser)]
#[command(name = "blockwatch-collector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector: gRPC ingest, store, live detector.
    Serve {
        /// Collector config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the detector over a JSONL trace and write its events as JSONL.
    Replay {
        /// Trace file (`-` for stdin).
        #[arg(long)]
        input: String,
        /// Events file (`-` for stdout).
        #[arg(long, default_value = "-")]
        output: String,
        /// Collector config whose `[detector]` section to use.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write every stored result.
    Export {
        /// Collector config (for `data_dir`).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// Store directory (instead of --config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::export::Format,
        /// Output file (default stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// A self-contained demo on loopback: a collector, simulated providers and agents in a
    /// few regions; one region gets blocked part-way through.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Seconds between probes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Replay { input, output, config } => replay::run(&input, &output, config.as_deref()),
        Command::Export { config, data_dir, format, output } => {
            export::run(config.as_deref(), data_dir, format, output.as_deref())
        }
        Command::Demo { duration, interval } => demo::run(duration, interval),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
