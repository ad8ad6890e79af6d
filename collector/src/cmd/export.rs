use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::CollectorConfig;
use crate::export::Format;
use crate::store::Store;

pub fn run(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
    format: Format,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let dir = match (config, data_dir) {
        (Some(c), _) => CollectorConfig::load(c)?.data_dir,
        (None, Some(d)) => d,
        (None, None) => bail!("export needs --config FILE or --data-dir DIR"),
    };
    if !dir.is_dir() {
        bail!("no store at {}", dir.display());
    }
    let store = Store::open(&dir)?;
    let n = match output {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            crate::export::export(&store, format, BufWriter::new(f))?
        }
        None => crate::export::export(&store, format, BufWriter::new(io::stdout().lock()))?,
    };
    store.close();
    eprintln!("exported {n} results");
    Ok(())
}
