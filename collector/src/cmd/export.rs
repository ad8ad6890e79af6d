use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::CollectorConfig;
use crate::research::{Filter, Format, Level, Output, What};
use crate::store::Store;

/// The filter of the command line, checked.
pub fn filter(
    from: Option<String>,
    to: Option<String>,
    target: Option<String>,
    region: Option<String>,
) -> anyhow::Result<Filter> {
    let t = |name: &str, v: Option<String>| -> anyhow::Result<Option<i64>> {
        match v {
            None => Ok(None),
            Some(s) => match blockwatch_proto::time::parse_rfc3339(&s) {
                Some(t) => Ok(Some(t)),
                None => bail!("--{name} {s:?}: an RFC 3339 time (2026-07-09T00:00:00Z)"),
            },
        }
    };
    for (name, v) in [("target", &target), ("region", &region)] {
        if let Some(v) = v
            && let Err(rule) = blockwatch_proto::id::check(v)
        {
            bail!("--{name} {v:?}: {rule}");
        }
    }
    Ok(Filter { from: t("from", from)?, to: t("to", to)?, target, region })
}

/// The store directory a command names: `--config FILE`'s `data_dir`, or `--data-dir DIR`.
pub(super) fn store_dir(command: &str, config: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match (config, data_dir) {
        (Some(c), _) => CollectorConfig::load(c)?.data_dir,
        (None, Some(d)) => d,
        (None, None) => bail!("{command} needs --config FILE or --data-dir DIR"),
    })
}

pub fn run(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
    what: What,
    format: Format,
    filter: &Filter,
    output: Option<&Path>,
    partition_by: &[Level],
) -> anyhow::Result<()> {
    let loaded = config.map(CollectorConfig::load).transpose()?;
    let dir = match (&loaded, data_dir) {
        (Some(c), _) => c.data_dir.clone(),
        (None, Some(d)) => d,
        (None, None) => bail!("export needs --config FILE or --data-dir DIR"),
    };
    if !dir.is_dir() {
        bail!("no store at {}", dir.display());
    }
    let store = Store::open_for_scan(&dir).with_context(|| {
        format!(
            "cannot open the store at {} (a running collector holds it: export through GET /v1/export)",
            dir.display()
        )
    })?;
    let reader = store.reader();
    // Results of archived days come from the archive (with --config naming one).
    let archive_cfg = loaded.as_ref().and_then(|c| c.archive.clone()).filter(|_| what == What::Results);
    let copies = tempfile::Builder::new().prefix("blockwatch-export-").tempdir()?;
    let archived = match archive_cfg {
        Some(a) => {
            let archive = crate::archive::Archive::open(&a)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(archive.results_for(&reader, filter, copies.path()))
                .with_context(|| format!("cannot read the archive at {}", archive.url()))?
        }
        None => {
            if what == What::Results
                && let Some(day) = reader.archived_through()?
            {
                eprintln!(
                    "warning: this store's results through {} are archived, and retention may have taken them                      from the store; give --config with its [archive] to read them from there",
                    crate::archive::date_text(day)
                );
            }
            crate::research::Archived::none()
        }
    };
    let n = match (output, partition_by.is_empty()) {
        (Some(p), false) => {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
            crate::research::export::<io::Sink>(
                &reader,
                &archived,
                what,
                format,
                filter,
                Output::Tree(p, partition_by),
            )?
        }
        (None, false) => bail!("--partition-by writes a tree: give its directory with --output"),
        (Some(p), true) => {
            let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            crate::research::export(&reader, &archived, what, format, filter, Output::One(BufWriter::new(f)))?
        }
        (None, true) => {
            if format == Format::Parquet && std::io::IsTerminal::is_terminal(&io::stdout()) {
                bail!("Parquet is binary: give --output FILE");
            }
            crate::research::export(
                &reader,
                &archived,
                what,
                format,
                filter,
                Output::One(BufWriter::new(io::stdout())),
            )?
        }
    };
    store.close();
    let noun = match what {
        What::Results => "results",
        What::Blocks => "blocks, outages and vantage problems",
        What::Events => "events",
    };
    eprintln!("exported {n} {noun}");
    Ok(())
}
