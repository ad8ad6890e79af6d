//! Process set-up shared by the binaries: the tokio runtime and logging to stderr.

/// A tokio runtime: multi-threaded with `workers` threads (one per core when `None`), or
/// with `Some(1)` everything on the calling thread (a current-thread runtime: no hand-offs
/// between workers, for a process whose work is mostly waiting). Blocking work goes to the
/// blocking pool either way.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == Some(1) {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

/// Logs to stderr, filtered by `RUST_LOG`, or by `default` when it is not set.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
