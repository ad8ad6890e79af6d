//! `export`: stored results out, for researchers.

use std::io::Write;

use blockwatch_proto::trace::TraceRecord;

use crate::store::{Store, StoreError};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One trace-format JSON object per line (replayable).
    Jsonl,
}

/// An export that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes every stored result, in the order received. Returns how many.
pub fn export(store: &Store, format: Format, mut out: impl Write) -> Result<u64, ExportError> {
    let mut n = 0;
    match format {
        Format::Jsonl => {
            for stored in store.results() {
                let rec = TraceRecord::from_stored(&stored?);
                serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
    }
    out.flush()?;
    Ok(n)
}
