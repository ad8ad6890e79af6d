use std::time::Duration;

use clap::Parser;

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    let stay =
        cli.stay.unwrap_or(if std::io::stdout().is_terminal() { Duration::from_secs(120) } else { Duration::ZERO });
    blockwatch_proto::process::init_logging("warn");
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
