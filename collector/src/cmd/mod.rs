//! Command-line interface: one file per command.

mod alert;
mod ca;
mod check;
mod export;
pub use export::filter as export_filter;
mod replay;
mod serve;
mod token;

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

/// blockwatch collector: stores probe results from agents and detects regional blocks.
#[derive(Debug, Parser)]
#[command(name = "blockwatch-collector", version, about)]
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
    /// Run the collector: gRPC ingest, store, live detector.
    Serve {
        /// Collector config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file as `serve` would use it: keys, values, and the files, directories
    /// and addresses it names.
    CheckConfig {
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
        /// A JSONL trace (`-` for stdin), a Parquet results export, or a directory of them (a
        /// partitioned export, merged back into the order received).
        #[arg(long)]
        input: String,
        /// Events file (`-` for stdout).
        #[arg(long, default_value = "-")]
        output: String,
        /// Collector config whose `[detector]` section to use.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Export stored results, blocks or events (of a stopped collector's store; a running
    /// collector exports through `GET /v1/export`).
    Export {
        /// Collector config (for `data_dir`).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// Store directory (instead of --config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// What to export.
        #[arg(long, value_enum, default_value = "results")]
        what: crate::research::What,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::research::Format,
        /// Only rows at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only rows before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Output file (default stdout), or with --partition-by the tree's directory.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write a Hive-style tree, one level per name: date, target, region.
        #[arg(long, value_enum, value_delimiter = ',')]
        partition_by: Vec<crate::research::Level>,
    },
    /// Back up a stopped collector's store into an empty directory (a running collector backs
    /// up online through `POST /v1/backup`).
    Backup {
        /// Collector config (for `data_dir`).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// Store directory (instead of --config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The backup's directory (created; must be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into an empty store directory, checking it is complete and whole
    /// (the collector stopped).
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
        /// Collector config (for `data_dir`).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// Store directory (instead of --config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Docs(blockwatch_proto::process::DocsCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(&config, cli.log_format),
        Command::CheckConfig { config } => check::run(&config),
        Command::Backup { config, data_dir, to } => {
            let dir = export::store_dir("backup", config.as_deref(), data_dir)?;
            anyhow::ensure!(dir.is_dir(), "no store at {}", dir.display());
            let store = crate::store::Store::open_for_scan(&dir)
                .map_err(|e| anyhow::anyhow!("{e} (a running collector holds it: back up through POST /v1/backup)"))?;
            let reserve = crate::ingest::Limits::default().min_free_disk_mb << 20;
            let never = std::sync::atomic::AtomicBool::new(false);
            let backup = store.reader().backup(&to, crate::metrics::dir_bytes(&dir), reserve, &never)?;
            store.close();
            println!(
                "backed up {} results (last seq {}) to {}",
                backup.entries.get("results").copied().unwrap_or(0),
                backup.last_result,
                to.display()
            );
            Ok(())
        }
        Command::Restore { from, config, data_dir } => {
            let dir = export::store_dir("restore", config.as_deref(), data_dir)?;
            let backup = crate::store::restore(&from, &dir)?;
            println!(
                "restored the backup of {} ({} results, last seq {}) into {}",
                backup.taken_at,
                backup.entries.get("results").copied().unwrap_or(0),
                backup.last_result,
                dir.display()
            );
            Ok(())
        }
        Command::Docs(docs) => {
            Ok(docs.run(<Cli as clap::CommandFactory>::command(), &crate::config::CollectorConfig::env_keys())?)
        }

        Command::Ca { command } => ca::run(command),
        Command::Token { command } => token::run(command),
        Command::Alert { command } => alert::run(command),
        Command::Replay { input, output, config } => replay::run(&input, &output, config.as_deref()),
        Command::Export { config, data_dir, what, format, from, to, target, region, output, partition_by } => {
            let filter = export::filter(from, to, target, region)?;
            export::run(config.as_deref(), data_dir, what, format, &filter, output.as_deref(), &partition_by)
        }
    }
}
