//! Command-line interface: one file per command.

mod probe;
mod run;

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

/// blockwatch agent: probes API providers and reports to a collector.
#[derive(Debug, Parser)]
#[command(name = "blockwatch-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as `text` (human-readable) or `json` (one object per line); levels come from
    /// `RUST_LOG`.
    #[arg(long, global = true, env = "BLOCKWATCH_LOG_FORMAT", default_value = "text",
          value_parser = clap::builder::PossibleValuesParser::new(["text", "json"])
              .map(|s| s.parse::<blockwatch_proto::process::LogFormat>().unwrap_or_default()))]
    pub log_format: blockwatch_proto::process::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: probe the targets and report to the collector.
    Run {
        /// Agent config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file and print the targets it would probe.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Probe one URL once and print every phase (exit 0 when reachable as expected).
    Probe(Box<probe::Args>),
    #[command(flatten)]
    Docs(blockwatch_proto::process::DocsCommand),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run { config } => run::run(&config, cli.log_format).map(|()| 0),
        Command::CheckConfig { config } => run::check(&config).map(|()| 0),
        Command::Probe(args) => probe::run(*args),
        Command::Docs(docs) => {
            docs.run(<Cli as clap::CommandFactory>::command(), &crate::config::AgentConfig::env_keys())?;
            Ok(0)
        }
    }
}
