use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::api_auth::{self, Role};
use crate::config::CollectorConfig;

/// `blockwatch-collector token …`: bearer tokens for the HTTP API.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is kept).
    Create {
        #[command(flatten)]
        file: TokensFile,
        /// A name to tell tokens apart (`grafana`, `oncall-bot`).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List tokens: name, role, created.
    List {
        #[command(flatten)]
        file: TokensFile,
    },
    /// Revoke a token by name; a running collector stops accepting it at once.
    Revoke {
        #[command(flatten)]
        file: TokensFile,
        #[arg(long)]
        name: String,
    },
}

/// Which tokens file: the one a collector config names, or a path.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TokensFile {
    /// Collector config whose `api.tokens_file` to use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The tokens file itself.
    #[arg(long)]
    file: Option<PathBuf>,
}

impl TokensFile {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let config = self.config.as_deref().unwrap_or(Path::new(""));
        let cfg: CollectorConfig = blockwatch_proto::config_file::read_toml(config)?;
        cfg.api.tokens_file.ok_or_else(|| anyhow::anyhow!("{}: sets no api.tokens_file", config.display()))
    }
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { file, name, role } => {
            let path = file.path()?;
            let token = api_auth::create(&path, &name, role)?;
            eprintln!("token {name:?} ({role:?}) added to {}; it is shown only now:", path.display());
            println!("{token}");
        }
        TokenCommand::List { file } => {
            println!("{:<24} {:<6} CREATED", "NAME", "ROLE");
            for t in api_auth::read(&file.path()?)? {
                println!("{:<24} {:<6} {}", t.name, format!("{:?}", t.role).to_lowercase(), t.created);
            }
        }
        TokenCommand::Revoke { file, name } => {
            let path = file.path()?;
            api_auth::revoke(&path, &name)?;
            println!("token {name:?} revoked in {}", path.display());
        }
    }
    Ok(())
}
