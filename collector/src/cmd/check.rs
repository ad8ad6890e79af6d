//! `blockwatch-collector check-config`: a config checked as `serve` would use it.

use std::path::Path;

use blockwatch_proto::config_file::{local_address, writable_dir};

use crate::config::{ApiAuth, CollectorConfig};

pub fn run(config: &Path) -> anyhow::Result<()> {
    let cfg = CollectorConfig::load(config)?;
    let problems = preflight(&cfg);
    if !problems.is_empty() {
        anyhow::bail!("config {}: {}", config.display(), problems.join("; "));
    }
    let tls = if cfg.tls.is_some() { "mutual TLS" } else { "plaintext (insecure = true)" };
    println!(
        "config ok: agents on {} ({tls}), API on {}, store in {}",
        cfg.listen,
        cfg.api_listen,
        cfg.data_dir.display()
    );
    let auth = match cfg.api_auth() {
        ApiAuth::Token => "bearer tokens",
        ApiAuth::None => "no authentication",
    };
    println!(
        "  API: {auth}; {} notification sinks; retention {}",
        cfg.sinks.len(),
        match cfg.retention {
            Some(r) => humantime::format_duration(r).to_string(),
            None => "none (results kept)".into(),
        }
    );
    if let (ApiAuth::Token, Some(file)) = (cfg.api_auth(), &cfg.api.tokens_file)
        && crate::api_auth::read(file).is_ok_and(|t| t.is_empty())
    {
        println!(
            "  note: {} holds no token yet, so no client can use the API: `blockwatch-collector token create`",
            file.display()
        );
    }
    Ok(())
}

/// What a start would fail on that parsing cannot see, each problem naming its key: the
/// store directory writable, both listen addresses on this host, the fleet CA directory, the
/// API's certificate and key, and the token file when tokens are required.
pub fn preflight(cfg: &CollectorConfig) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(writable_dir("data_dir", &cfg.data_dir).err());
    if let Some(b) = &cfg.backup_dir {
        problems.extend(writable_dir("backup_dir", b).err());
    }
    problems.extend(local_address("listen", cfg.listen.ip()).err());
    problems.extend(local_address("api_listen", cfg.api_listen.ip()).err());
    if let Some(t) = &cfg.tls
        && let Err(e) = crate::tls::load(&t.ca_dir)
    {
        problems.push(format!("tls.ca_dir {}: {e}", t.ca_dir.display()));
    }
    if let (Some(cert), Some(key)) = (&cfg.api.tls_cert_file, &cfg.api.tls_key_file)
        && let Err(e) = crate::tls::load_api(cert, key)
    {
        problems.push(format!("api.tls_cert_file / api.tls_key_file: {e}"));
    }
    // Token auth without a tokens file is refused by `CollectorConfig::validate` already.
    if let (ApiAuth::Token, Some(file)) = (cfg.api_auth(), &cfg.api.tokens_file)
        && let Err(e) = crate::api_auth::read(file)
    {
        problems.push(format!("api.tokens_file {}: {e}", file.display()));
    }
    problems
}
