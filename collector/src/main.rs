use clap::Parser;

/// jemalloc, not the system allocator: with thousands of agent connections glibc's malloc
/// spent about a third of the ingest workers' time in `malloc_consolidate` and free-list
/// walks, stalling acks for hundreds of milliseconds (README, Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
