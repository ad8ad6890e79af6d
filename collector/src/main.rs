use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = blockwatch_collector::cmd::Cli::parse();
    match blockwatch_collector::cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockwatch-collector: {}", blockwatch_proto::error::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
