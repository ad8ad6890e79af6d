use std::time::Duration;

use clap::{Parser, Subcommand};

/// blockwatch demo: a collector, simulated providers and agents in a few regions, all on
/// loopback; one region gets blocked part-way through and the detector has to notice.
#[derive(Debug, Parser)]
#[command(name = "blockwatch-demo", version, about)]
struct Cli {
    /// How long to run.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between probes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long everything stays up after the run, for the dashboard. Default: 2m on a
    /// terminal, 0s otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    stay: Option<Duration>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve only the simulated provider (OpenAI's keyless 401; its geo refusal to the
    /// `--block` addresses after `--block-after`), for a compose stack or a lab.
    Provider {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Where to write the CA certificate (PEM) agents must trust (`ca_file`).
        #[arg(long)]
        ca_out: std::path::PathBuf,
        /// Names on the server certificate.
        #[arg(long = "name", default_value = "localhost")]
        names: Vec<String>,
        /// Source addresses to refuse, once `--block-after` has passed.
        #[arg(long)]
        block: Vec<std::net::IpAddr>,
        /// When, after start, the refusal begins.
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        block_after: Duration,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Provider { listen, ca_out, names, block, block_after }) = cli.command {
        let served = blockwatch_proto::process::runtime(Some(1)).map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(blockwatch_demo::provider::serve_standalone(listen, &names, &ca_out, block, block_after))
        });
        return match served {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("blockwatch-demo provider: {}", blockwatch_proto::error::chain(e.as_ref()));
                std::process::ExitCode::FAILURE
            }
        };
    }
    use std::io::IsTerminal;
    let stay =
        cli.stay.unwrap_or(if std::io::stdout().is_terminal() { Duration::from_secs(120) } else { Duration::ZERO });
    blockwatch_proto::process::init_logging("warn", blockwatch_proto::process::LogFormat::Text);
    let report = blockwatch_proto::process::runtime(None).map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async { blockwatch_demo::run(cli.duration, cli.interval, stay, &mut std::io::stdout()).await })
    });
    match report {
        Ok(r) if r.detected.is_some() => std::process::ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("blockwatch-demo: the demo's block was not detected");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("blockwatch-demo: {}", blockwatch_proto::error::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
