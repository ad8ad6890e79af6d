use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = blockwatch_agent::cmd::Cli::parse();
    match blockwatch_agent::cmd::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("blockwatch-agent: {}", blockwatch_proto::error::chain(e.as_ref()));
            std::process::ExitCode::from(2)
        }
    }
}
