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

/// How log lines are written: `--log-format` of the binaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `spans`), for log
    /// shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log format {s:?}: must be text or json")),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG`, or by `default` when it is not set.
pub fn init_logging(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// The commands both binaries have for their own documentation.
#[derive(Debug, clap::Subcommand)]
pub enum DocsCommand {
    /// List every config key with the `BLOCKWATCH_…` variable that sets it (Markdown table).
    ConfigKeys,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (one per command) into a directory.
    Man {
        /// Directory for the `.1` files.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
}

impl DocsCommand {
    /// Runs it for the binary whose command line is `cmd` and config keys are `keys`.
    pub fn run(self, cmd: clap::Command, keys: &[crate::config_env::Key]) -> std::io::Result<()> {
        match self {
            DocsCommand::ConfigKeys => print!("{}", crate::config_env::markdown(keys)),
            DocsCommand::Completions { shell } => completions(cmd, shell),
            DocsCommand::Man { dir } => {
                for path in man_pages(cmd, &dir)? {
                    println!("{}", path.display());
                }
            }
        }
        Ok(())
    }
}

/// Prints `shell`'s completion script for the command line `cmd` to stdout.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// Writes man pages for the command line `cmd` into `dir`: `NAME.1`, and `NAME-SUB.1` for
/// each subcommand (and theirs). Returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    fn write(cmd: clap::Command, dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        let path = dir.join(format!("{}.1", cmd.get_name()));
        let mut file = std::fs::File::create(&path)?;
        clap_mangen::Man::new(cmd.clone()).render(&mut file)?;
        out.push(path);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{}-{}", cmd.get_name(), sub.get_name());
            write(sub.clone().name(name), dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let mut out = Vec::new();
    write(cmd, dir, &mut out)?;
    Ok(out)
}
