//! Replay of a Parquet results export: one file, replayed in its row order, or a partitioned
//! tree (every `*.parquet` under a directory), merged back into the order received by the
//! `seq` column. Only the columns the detector needs are read; one file's decoding runs on a
//! thread of its own, beside the detector.
//!
//! A tree's files are opened as the merge reaches them (the first `seq` of each comes from
//! its footer's statistics), so a year of daily partitions holds about one day's files open
//! at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, BooleanArray, DictionaryArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use blockwatch_detector::{DetectorConfig, Observation};
use blockwatch_proto::time;
use blockwatch_proto::trace::outcome_named;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::statistics::Statistics;

use super::{ReplayError, ReplayStats, Sink};

/// The columns read: what the detector needs, and `seq` to merge a tree by.
pub const COLUMNS: [&str; 13] = [
    "seq",
    "probe_id",
    "agent_id",
    "region",
    "target",
    "started_at",
    "received_at",
    "outcome",
    "outcome_detail",
    "http_status",
    "provider_code",
    "confirmation",
    "control",
];

/// Rows decoded at a time.
const BATCH: usize = 8192;

/// True when `path` starts with Parquet's magic bytes.
pub fn is_parquet(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"PAR1"
}

fn err(file: &Path, message: impl std::fmt::Display) -> ReplayError {
    ReplayError::Parquet { file: file.display().to_string(), message: message.to_string() }
}

/// A string column, dictionary-encoded (as the export writes names) or plain.
pub(crate) enum Strs {
    Dict(PrimitiveArray<Int32Type>, StringArray),
    Plain(StringArray),
}

impl Strs {
    /// The column `name` of a batch as strings; `None` when the batch has no such column.
    pub(crate) fn of(b: &RecordBatch, name: &str) -> Result<Option<Strs>, String> {
        let Some(a) = b.column_by_name(name) else { return Ok(None) };
        Ok(Some(match a.data_type() {
            DataType::Utf8 => Strs::Plain(a.as_string::<i32>().clone()),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d: &DictionaryArray<Int32Type> = a.as_dictionary();
                Strs::Dict(d.keys().clone(), d.values().as_string::<i32>().clone())
            }
            other => return Err(want(name, other, "string or dictionary<int32, string>")),
        }))
    }

    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        match self {
            Strs::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            Strs::Dict(keys, values) => {
                if !keys.is_valid(i) {
                    return None;
                }
                let k = usize::try_from(keys.value(i)).ok()?;
                (k < values.len() && values.is_valid(k)).then(|| values.value(k))
            }
        }
    }
}

/// One decoded batch, its columns typed.
struct Batch {
    rows: usize,
    seq: Option<PrimitiveArray<UInt64Type>>,
    probe_id: Strs,
    agent_id: Strs,
    region: Strs,
    target: Strs,
    started_at: PrimitiveArray<TimestampMillisecondType>,
    received_at: Option<PrimitiveArray<TimestampMillisecondType>>,
    outcome: Strs,
    outcome_detail: Option<Strs>,
    http_status: Option<PrimitiveArray<UInt32Type>>,
    provider_code: Option<Strs>,
    confirmation: Option<BooleanArray>,
    control: Option<BooleanArray>,
}

pub(crate) fn want(name: &str, got: &DataType, wanted: &str) -> String {
    format!("column {name} is {got}, want {wanted}")
}

impl Batch {
    fn new(b: &RecordBatch) -> Result<Batch, String> {
        let col = |name: &str| b.column_by_name(name);
        let strs = |name: &str| Strs::of(b, name);
        let required = |name: &str| strs(name)?.ok_or_else(|| format!("no column {name}"));
        let ts = |name: &str| -> Result<Option<PrimitiveArray<TimestampMillisecondType>>, String> {
            let Some(a) = col(name) else { return Ok(None) };
            match a.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    Ok(Some(a.as_primitive::<TimestampMillisecondType>().clone()))
                }
                other => Err(want(name, other, "timestamp[ms]")),
            }
        };
        let bools = |name: &str| -> Result<Option<BooleanArray>, String> {
            let Some(a) = col(name) else { return Ok(None) };
            match a.data_type() {
                DataType::Boolean => Ok(Some(a.as_boolean().clone())),
                other => Err(want(name, other, "boolean")),
            }
        };
        let seq = match col("seq") {
            None => None,
            Some(a) if *a.data_type() == DataType::UInt64 => Some(a.as_primitive::<UInt64Type>().clone()),
            Some(a) => return Err(want("seq", a.data_type(), "uint64")),
        };
        let http_status = match col("http_status") {
            None => None,
            Some(a) if *a.data_type() == DataType::UInt32 => Some(a.as_primitive::<UInt32Type>().clone()),
            Some(a) => return Err(want("http_status", a.data_type(), "uint32")),
        };
        Ok(Batch {
            rows: b.num_rows(),
            seq,
            probe_id: required("probe_id")?,
            agent_id: required("agent_id")?,
            region: required("region")?,
            target: required("target")?,
            started_at: ts("started_at")?.ok_or("no column started_at")?,
            received_at: ts("received_at")?,
            outcome: required("outcome")?,
            outcome_detail: strs("outcome_detail")?,
            http_status,
            provider_code: strs("provider_code")?,
            confirmation: bools("confirmation")?,
            control: bools("control")?,
        })
    }

    fn seq(&self, i: usize) -> Option<u64> {
        self.seq.as_ref().and_then(|s| s.is_valid(i).then(|| s.value(i)))
    }

    /// Row `i` as the detector sees it, or why it cannot be.
    fn observation(&self, i: usize) -> Result<Observation<'_>, String> {
        fn need<'s>(v: Option<&'s str>, name: &str) -> Result<&'s str, String> {
            v.ok_or_else(|| format!("{name} is null"))
        }
        let in_range = |name: &str, t: i64| {
            if (time::MIN..=time::MAX).contains(&t) {
                Ok(t)
            } else {
                Err(format!("{name} {t} ms is outside years 1-9999"))
            }
        };
        let started_at = in_range(
            "started_at",
            self.started_at.is_valid(i).then(|| self.started_at.value(i)).ok_or("started_at is null")?,
        )?;
        let received_at = match self.received_at.as_ref().and_then(|r| r.is_valid(i).then(|| r.value(i))) {
            Some(t) => in_range("received_at", t)?,
            None => started_at,
        };
        let name = need(self.outcome.get(i), "outcome")?;
        let detail = self.outcome_detail.as_ref().and_then(|d| d.get(i)).unwrap_or_default();
        let outcome = outcome_named(name, detail).ok_or_else(|| format!("unknown outcome {name:?}"))?;
        let flag = |a: &Option<BooleanArray>| a.as_ref().is_some_and(|a| a.is_valid(i) && a.value(i));
        let http_status = self
            .http_status
            .as_ref()
            .and_then(|s| s.is_valid(i).then(|| s.value(i)))
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        Ok(Observation {
            probe_id: need(self.probe_id.get(i), "probe_id")?,
            agent_id: need(self.agent_id.get(i), "agent_id")?,
            region: need(self.region.get(i), "region")?,
            target: need(self.target.get(i), "target")?,
            started_at,
            received_at,
            outcome,
            control: flag(&self.control),
            confirmation: flag(&self.confirmation),
            http_status,
            provider_code: self.provider_code.as_ref().and_then(|c| c.get(i)).unwrap_or_default(),
        })
    }
}

/// A reader of `path`'s detector columns.
fn open(path: &Path) -> Result<ParquetRecordBatchReader, ReplayError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(path, e))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
    builder.with_projection(mask).with_batch_size(BATCH).build().map_err(|e| err(path, e))
}

/// Replays one Parquet file in its row order.
pub fn replay_file(path: &Path, output: impl Write, config: DetectorConfig) -> Result<ReplayStats, ReplayError> {
    let mut sink = Sink::new(output, config);
    read_file(path, |obs| sink.observe(obs))?;
    sink.finish()
}

/// Replays every `*.parquet` file under `dir` as one results table, merged in the order
/// received (`seq`).
pub fn replay_tree(dir: &Path, output: impl Write, config: DetectorConfig) -> Result<ReplayStats, ReplayError> {
    let mut sink = Sink::new(output, config);
    read_tree(dir, |obs| sink.observe(obs))?;
    sink.finish()
}

/// Each row of one Parquet file, in order, as the detector sees it.
pub fn read_file(
    path: &Path,
    mut f: impl FnMut(&Observation<'_>) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let reader = open(path)?;
    std::thread::scope(|scope| {
        // Decoding on its own thread, a few batches ahead of the detector.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<RecordBatch, String>>(4);
        scope.spawn(move || {
            for b in reader {
                let stop = b.is_err();
                if tx.send(b.map_err(|e| e.to_string())).is_err() || stop {
                    return;
                }
            }
        });
        let mut row = 0u64;
        for b in rx {
            let batch = Batch::new(&b.map_err(|e| err(path, e))?).map_err(|e| err(path, e))?;
            for i in 0..batch.rows {
                row += 1;
                let obs = batch.observation(i).map_err(|e| err(path, format!("row {row}: {e}")))?;
                f(&obs)?;
            }
        }
        Ok(())
    })
}

/// Every `*.parquet` file under `dir`, in path order.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| err(&d, e))? {
            let entry = entry.map_err(|e| err(&d, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| err(&path, e))?;
            if kind.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The smallest `seq` a file's footer records (0 when it records none: opened at once).
fn first_seq(path: &Path) -> Result<u64, ReplayError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(path, e))?;
    let Some(idx) = builder.parquet_schema().columns().iter().position(|c| c.path().parts() == ["seq"]) else {
        return Err(err(path, "no column seq: a tree is merged by it (export it with this version)"));
    };
    let mut min = None::<u64>;
    for rg in builder.metadata().row_groups() {
        let m = match rg.column(idx).statistics() {
            // Unsigned, stored as INT64: the bits are the value. No minimum: opened at once.
            Some(Statistics::Int64(s)) => Some(s.min_opt().map_or(0, |v| *v as u64)),
            _ => Some(0),
        };
        min = match (min, m) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(min.unwrap_or(0))
}

/// One open file of a tree, at a row.
struct Cursor {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    batch: Batch,
    at: usize,
    /// Rows of this file before `batch`.
    before: u64,
}

impl Cursor {
    /// The file's first row, or `None` when it has none.
    fn open(path: PathBuf) -> Result<Option<Cursor>, ReplayError> {
        let mut reader = open(&path)?;
        let Some(b) = reader.next() else { return Ok(None) };
        let batch = Batch::new(&b.map_err(|e| err(&path, e))?).map_err(|e| err(&path, e))?;
        let mut c = Cursor { path, reader, batch, at: 0, before: 0 };
        if c.batch.rows == 0 && !c.next_batch()? {
            return Ok(None);
        }
        Ok(Some(c))
    }

    fn seq(&self) -> Result<u64, ReplayError> {
        self.batch.seq(self.at).ok_or_else(|| err(&self.path, format!("row {}: seq is null", self.row())))
    }

    fn row(&self) -> u64 {
        self.before + self.at as u64 + 1
    }

    fn next_batch(&mut self) -> Result<bool, ReplayError> {
        loop {
            let Some(b) = self.reader.next() else { return Ok(false) };
            self.before += self.batch.rows as u64;
            self.batch = Batch::new(&b.map_err(|e| err(&self.path, e))?).map_err(|e| err(&self.path, e))?;
            self.at = 0;
            if self.batch.rows > 0 {
                return Ok(true);
            }
        }
    }

    /// Moves to the next row; false at the end of the file. A file must be in the order
    /// received: a row whose `seq` is below its predecessor's is an error.
    fn advance(&mut self) -> Result<bool, ReplayError> {
        let was = self.seq()?;
        self.at += 1;
        if self.at >= self.batch.rows && !self.next_batch()? {
            return Ok(false);
        }
        let now = self.seq()?;
        if now < was {
            return Err(err(
                &self.path,
                format!("row {}: seq {now} after {was}: the file is not in the order received", self.row()),
            ));
        }
        Ok(true)
    }
}

/// Each row of every `*.parquet` file under `dir`, merged in the order received (`seq`).
pub fn read_tree(
    dir: &Path,
    mut f: impl FnMut(&Observation<'_>) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let mut files: Vec<(u64, PathBuf)> =
        files_under(dir)?.into_iter().map(|p| Ok((first_seq(&p)?, p))).collect::<Result<_, ReplayError>>()?;
    if files.is_empty() {
        return Err(err(dir, "no .parquet file under it"));
    }
    files.sort();
    let mut files = files.into_iter().peekable();
    let mut slots: Vec<Option<Cursor>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    // The merge's last seq: it never goes down, whatever the files say of themselves.
    let mut last = 0u64;
    loop {
        // Open every file that may hold the next row.
        while let Some((first, _)) = files.peek() {
            if heap.peek().is_some_and(|Reverse((head, _))| first > head) {
                break;
            }
            let (first, path) = files.next().expect("peeked");
            let Some(c) = Cursor::open(path)? else { continue };
            let seq = c.seq()?;
            if seq < first {
                return Err(err(&c.path, format!("row 1: seq {seq}, below the {first} its footer records")));
            }
            let slot = match free.pop() {
                Some(s) => {
                    slots[s] = Some(c);
                    s
                }
                None => {
                    slots.push(Some(c));
                    slots.len() - 1
                }
            };
            heap.push(Reverse((seq, slot)));
        }
        let Some(Reverse((_, slot))) = heap.pop() else { break };
        let c = slots[slot].as_mut().expect("a slot in the heap is open");
        // This file's rows while they come before every other open file's next row.
        loop {
            let seq = c.seq()?;
            if seq < last {
                return Err(err(
                    &c.path,
                    format!("row {}: seq {seq} after {last} in the merge: the tree's files disagree", c.row()),
                ));
            }
            last = seq;
            let obs = c.batch.observation(c.at).map_err(|e| err(&c.path, format!("row {}: {e}", c.row())))?;
            f(&obs)?;
            if !c.advance()? {
                slots[slot] = None;
                free.push(slot);
                break;
            }
            let seq = c.seq()?;
            let others = heap.peek().map(|Reverse((s, _))| *s);
            let unopened = files.peek().map(|(s, _)| *s);
            if others.is_some_and(|o| seq > o) || unopened.is_some_and(|u| seq >= u) {
                heap.push(Reverse((seq, slot)));
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use blockwatch_proto::error::chain;
    use blockwatch_proto::trace::TraceRecord;
    use blockwatch_sim as sim;

    use super::*;
    use crate::research::{Format, write_results};

    fn records(family: sim::Family, seed: u64) -> Vec<TraceRecord> {
        let mut p = sim::Params::new(family, 60, 50, seed);
        p.probes = 300;
        sim::generate(&p).trace_records()
    }

    fn jsonl_replay(recs: &[TraceRecord]) -> (ReplayStats, Vec<u8>) {
        let text: String = recs.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        let mut out = Vec::new();
        let stats = super::super::replay(text.as_bytes(), &mut out, DetectorConfig::default()).unwrap();
        (stats, out)
    }

    fn write(path: &Path, recs: &[(u64, &TraceRecord)]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::io::BufWriter::new(File::create(path).unwrap());
        write_results(Format::Parquet, f, recs.iter().copied()).unwrap();
    }

    #[test]
    fn a_parquet_file_replays_to_the_events_of_its_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        for (family, seed) in [(sim::Family::LateArrival, 3), (sim::Family::HiddenUnderOutage, 5)] {
            let recs = records(family, seed);
            let path = dir.path().join(format!("{family:?}.parquet"));
            write(&path, &recs.iter().enumerate().map(|(i, r)| (i as u64 + 1, r)).collect::<Vec<_>>());
            assert!(is_parquet(&path));
            let (want_stats, want) = jsonl_replay(&recs);
            assert!(want_stats.events > 0, "{family:?} has events");
            let mut got = Vec::new();
            let stats = replay_file(&path, &mut got, DetectorConfig::default()).unwrap();
            assert_eq!(stats, want_stats, "{family:?}");
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap(), "{family:?}");
        }
    }

    /// A tree split by (target, region), with late results in each cell's file, merges back
    /// into the order received: the same events as the JSONL in that order.
    #[test]
    fn a_partitioned_tree_merges_back_into_the_order_received() {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(sim::Family::LateArrival, 7);
        let mut cells: std::collections::BTreeMap<(String, String), Vec<(u64, &TraceRecord)>> = Default::default();
        for (i, r) in recs.iter().enumerate() {
            cells.entry((r.target.clone(), r.region.clone())).or_default().push((i as u64 + 1, r));
        }
        assert!(cells.len() > 3);
        for ((t, r), rows) in &cells {
            // Two parts per cell, as an export that met a partition twice writes them.
            let (a, b) = rows.split_at(rows.len() / 2);
            write(&dir.path().join(format!("target={t}/region={r}/part-0.parquet")), a);
            write(&dir.path().join(format!("target={t}/region={r}/part-1.parquet")), b);
        }
        std::fs::write(dir.path().join("README.txt"), "not a part").unwrap();
        let (want_stats, want) = jsonl_replay(&recs);
        let mut got = Vec::new();
        let stats = replay_tree(dir.path(), &mut got, DetectorConfig::default()).unwrap();
        assert_eq!(stats, want_stats);
        assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
    }

    #[test]
    fn bad_files_are_named_with_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(sim::Family::GeoBlock, 1);
        // A file not in the order received.
        let path = dir.path().join("t/part-0.parquet");
        write(&path, &[(5, &recs[0]), (3, &recs[1])]);
        let e = replay_tree(dir.path(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(
            chain(&e),
            format!("{}: row 2: seq 3 after 5: the file is not in the order received", path.display())
        );
        // An outcome the format does not know.
        let mut bad = recs[2].clone();
        bad.outcome = "melted".into();
        let one = dir.path().join("one.parquet");
        write(&one, &[(1, &recs[0]), (2, &bad)]);
        let e = replay_file(&one, Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(chain(&e), format!("{}: row 2: unknown outcome \"melted\"", one.display()));
        // Not Parquet at all, under a .parquet name.
        std::fs::write(&path, b"PAR1 and then nothing").unwrap();
        let e = replay_tree(dir.path(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert!(chain(&e).starts_with(&format!("{}: ", path.display())), "{}", chain(&e));
        let empty = tempfile::tempdir().unwrap();
        let e = replay_tree(empty.path(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(chain(&e), format!("{}: no .parquet file under it", empty.path().display()));
    }
}
