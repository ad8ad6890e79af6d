//! Command-line interface: one file per command.

mod alert;
mod ca;
mod export;
mod replay;
mod serve;
mod token;

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
    /// Manage the fleet CA: agent certificates, revocation.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Notification sinks: `alert test --sink NAME` sends a test notification.
    Alert {
        #[command(subcommand)]
        command: alert::AlertCommand,
    },
    /// Manage bearer tokens for the HTTP API.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Ca { command } => ca::run(command),
        Command::Token { command } => token::run(command),
        Command::Alert { command } => alert::run(command),
        Command::Replay { input, output, config } => replay::run(&input, &output, config.as_deref()),
        Command::Export { config, data_dir, format, output } => {
            export::run(config.as_deref(), data_dir, format, output.as_deref())
        }
    }
}
