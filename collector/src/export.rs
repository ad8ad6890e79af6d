//! `export`: stored results out, for researchers.

use std::io::Write;

use blockwatch_proto::trace::TraceRecord;

use crate::store::{Reader, StoreError};

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
    #[error("writing export")]
    Write(#[from] std::io::Error),
}

/// Writes every stored result, in the order received. Returns how many.
pub fn export(store: &Reader, format: Format, out: impl Write) -> Result<u64, ExportError> {
    export_range(store, format, 0, u64::MAX, out)
}

/// Writes up to `limit` stored results, in the order received, skipping the first `after`
/// (results are numbered 1, 2, 3, … as stored). Returns how many.
pub fn export_range(
    store: &Reader,
    format: Format,
    after: u64,
    limit: u64,
    mut out: impl Write,
) -> Result<u64, ExportError> {
    let mut n = 0;
    match format {
        Format::Jsonl => {
            for stored in store.results_after(after) {
                if n == limit {
                    break;
                }
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
