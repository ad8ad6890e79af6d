use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = blockwatch_collector::cmd::Cli::parse();
    match blockwatch_collector::cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockwatch-collector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
