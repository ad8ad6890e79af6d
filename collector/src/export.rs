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

/// A filtered read of the results: by target (through the index), region, agent and time.
#[derive(Debug, Default)]
pub struct Filtered {
    pub target: Option<String>,
    pub region: Option<String>,
    pub agent: Option<String>,
    /// `started_at` in `[from, to)` (ms).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Resume after this result: `(region, started_at, seq)`, as the last page's cursor said.
    pub cursor: Option<(String, i64, u64)>,
    pub limit: usize,
}

/// A cursor as the API spells it: `REGION~STARTED_MS~SEQ`.
pub fn format_cursor(region: &str, at: i64, seq: u64) -> String {
    format!("{region}~{at}~{seq}")
}

pub fn parse_cursor(s: &str) -> Option<(String, i64, u64)> {
    let mut parts = s.rsplitn(3, '~');
    let seq = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    let region = parts.next()?.to_string();
    Some((region, at, seq))
}

/// Writes the results `f` admits as trace-format lines, ordered by region, time and seq with
/// a target (read through the index), else in store order. Returns how many and, when
/// `limit` stopped it, the cursor of the next page. Blocking.
pub fn export_filtered(
    store: &Reader,
    f: &Filtered,
    mut out: impl Write,
) -> Result<(u64, Option<String>), ExportError> {
    let (from, to) = (f.from.unwrap_or(i64::MIN), f.to.unwrap_or(i64::MAX));
    let agent_ok = |r: &blockwatch_proto::v1::ProbeResult| f.agent.as_deref().is_none_or(|a| a == r.agent_id);
    let mut n = 0u64;
    let mut next = None;
    let mut failed: Option<ExportError> = None;
    if let Some(target) = &f.target {
        let start = match &f.cursor {
            Some((_, at, _)) if f.region.is_some() => from.max(*at),
            _ => from,
        };
        store.cell_entries(target, f.region.as_deref(), start, to, |region, at, seq, _| {
            if let Some((cr, cat, cseq)) = &f.cursor
                && (region, at, seq) <= (cr.as_str(), *cat, *cseq)
            {
                return true;
            }
            let stored = match store.result_at(seq) {
                Ok(Some(s)) => s,
                Ok(None) => return true,
                Err(e) => {
                    failed = Some(e.into());
                    return false;
                }
            };
            if !stored.result.as_ref().is_some_and(agent_ok) {
                return true;
            }
            if n as usize == f.limit {
                return false;
            }
            let rec = TraceRecord::from_stored(&stored);
            if let Err(e) =
                serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::from).and_then(|_| out.write_all(b"\n"))
            {
                failed = Some(e.into());
                return false;
            }
            n += 1;
            if n as usize == f.limit {
                next = Some(format_cursor(region, at, seq));
            }
            true
        })?;
    } else {
        let after = f.cursor.as_ref().map_or(0, |c| c.2);
        for stored in store.results_after(after) {
            let stored = stored?;
            let Some(r) = stored.result.as_ref() else { continue };
            let at = r.started_at.as_ref().map_or(0, blockwatch_proto::time::from_timestamp);
            if !(agent_ok(r) && f.region.as_deref().is_none_or(|x| x == r.region) && (from..to).contains(&at)) {
                continue;
            }
            let rec = TraceRecord::from_stored(&stored);
            serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            n += 1;
            if n as usize == f.limit {
                // Store order: the cursor's seq is all that matters.
                next = Some(format_cursor(&r.region, at, store.seq_of(&r.probe_id)?.unwrap_or(0)));
                break;
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()?;
    // A full page may be the last: the next one is then empty, which is fine.
    Ok((n, next))
}
