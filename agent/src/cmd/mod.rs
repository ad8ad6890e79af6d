//! Command-line interface: one file per command.

mod probe;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// blockwatch agent: probes API providers and reports to a collector.
#[derive(Debug, Parser)]
#[command(name = "blockwatch-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run { config } => run::run(&config).map(|()| 0),
        Command::CheckConfig { config } => run::check(&config).map(|()| 0),
        Command::Probe(args) => probe::run(*args),
    }
}
