//! Exports for researchers: results, blocks (and outages, vantage problems) and events, as
//! JSONL, CSV (RFC 4180, with a header) or Parquet (arrow-rs: UTC timestamps, dictionary-
//! encoded names, nullable numbers), filtered by time, target and region, into one file or a
//! Hive-style tree (`date=2026-07-09/target=openai/region=hk/part-0.parquet`).
//!
//! Everything streams: rows go out as they are read (Parquet in row groups of
//! [`ROW_GROUP`]); a partitioned results export reads through the index, target by target,
//! region by region, in time order, so one partition's file is open at a time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, StringBuilder, StringDictionaryBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use blockwatch_proto::trace::TraceRecord;

use crate::store::{Reader, StoreError};

/// Rows a Parquet row group holds (what a writer keeps in memory).
pub const ROW_GROUP: usize = 65_536;
/// Most rows of one part file of a partitioned results export (its sequence numbers are
/// gathered before it is written: 8 bytes a row).
pub const PART_ROWS: usize = 1 << 20;

/// What is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// Every stored result (the trace format's fields).
    Results,
    /// One row per block, outage and vantage problem (`kind` says which).
    Blocks,
    /// The event log.
    Events,
}

/// How.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON lines (results: exactly the trace format, which `replay` reads).
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// Apache Parquet, snappy-compressed.
    Parquet,
    /// OONI measurements (results only): one `urlgetter` measurement per line.
    Ooni,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl | Format::Ooni => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl | Format::Ooni => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Which rows: `[from, to)` on the row's time (results: `started_at`; blocks: overlapping
/// the span; events: `detected_at`), a target, a region.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub target: Option<String>,
    pub region: Option<String>,
}

/// The directory levels of a partitioned export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Date,
    Target,
    Region,
}

/// A column's type.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    /// Dictionary-encoded in Parquet (few distinct values).
    Dict,
    /// Milliseconds since the epoch, UTC.
    Ts,
    U32,
    U64,
    F64,
    Bool,
    /// Bytes (Parquet binary; base64 in CSV).
    Bin,
}

/// One value.
#[derive(Debug, Clone)]
enum V {
    S(String),
    T(Option<i64>),
    U(Option<u64>),
    F(Option<f64>),
    B(bool),
    Bin(Vec<u8>),
}

type Columns = &'static [(&'static str, Ty)];

const RESULT_COLUMNS: Columns = &[
    ("seq", Ty::U64),
    ("probe_id", Ty::Str),
    ("agent_id", Ty::Dict),
    ("region", Ty::Dict),
    ("target", Ty::Dict),
    ("provider", Ty::Dict),
    ("started_at", Ty::Ts),
    ("received_at", Ty::Ts),
    ("outcome", Ty::Dict),
    ("outcome_detail", Ty::Dict),
    ("failure", Ty::Str),
    ("failed_operation", Ty::Dict),
    ("http_status", Ty::U32),
    ("provider_code", Ty::Dict),
    ("duration_ms", Ty::U64),
    ("dns_ms", Ty::F64),
    ("connect_ms", Ty::F64),
    ("tls_ms", Ty::F64),
    ("ttfb_ms", Ty::F64),
    ("http_ms", Ty::F64),
    ("peer_address", Ty::Str),
    ("local_address", Ty::Str),
    ("resolved_addresses", Ty::Str),
    ("egress_address", Ty::Str),
    ("egress_asn", Ty::U32),
    ("egress_as_org", Ty::Dict),
    ("egress_country", Ty::Dict),
    ("confirmation", Ty::Bool),
    ("control", Ty::Bool),
    ("keyed", Ty::Bool),
    ("detail", Ty::Str),
    ("edge_headers", Ty::Str),
    ("url", Ty::Dict),
    ("dns_queries", Ty::Str),
    ("tls_version", Ty::Dict),
    ("tls_cipher_suite", Ty::Dict),
    ("tls_alpn", Ty::Dict),
    ("request_headers", Ty::Str),
    ("response_headers", Ty::Str),
    ("body_prefix", Ty::Bin),
    ("body_truncated", Ty::Bool),
];

const BLOCK_COLUMNS: Columns = &[
    ("kind", Ty::Dict),
    ("id", Ty::U64),
    ("target", Ty::Dict),
    ("region", Ty::Dict),
    ("agent_id", Ty::Dict),
    ("provider", Ty::Dict),
    ("signature", Ty::Dict),
    ("onset", Ty::Ts),
    ("detected_at", Ty::Ts),
    ("end", Ty::Ts),
    ("duration_seconds", Ty::F64),
    ("agents", Ty::Str),
    ("failing", Ty::U64),
    ("ok", Ty::U64),
    ("regions_fine", Ty::Str),
    ("dominant_outcome", Ty::Dict),
    ("provider_code", Ty::Dict),
    ("summary", Ty::Str),
];

const EVENT_COLUMNS: Columns = &[
    ("seq", Ty::U64),
    ("kind", Ty::Dict),
    ("target", Ty::Dict),
    ("region", Ty::Dict),
    ("agent_id", Ty::Dict),
    ("onset", Ty::Ts),
    ("detected_at", Ty::Ts),
    ("signature", Ty::Dict),
    ("summary", Ty::Str),
    ("evidence", Ty::Str),
];

fn columns(what: What) -> Columns {
    match what {
        What::Results => RESULT_COLUMNS,
        What::Blocks => BLOCK_COLUMNS,
        What::Events => EVENT_COLUMNS,
    }
}

/// Whether `format` can export `what`: OONI measurements are results only.
pub fn supported(what: What, format: Format) -> Result<(), String> {
    if format == Format::Ooni && what != What::Results {
        return Err("format ooni is for what=results only".into());
    }
    Ok(())
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("{0}")]
    Usage(String),
}

fn pq(e: impl std::fmt::Display) -> ExportError {
    ExportError::Parquet(e.to_string())
}

/// A writer of rows in one format.
enum RowWriter<W: Write + Send> {
    Jsonl(W),
    Ooni(W),
    Csv(Box<csv::Writer<W>>),
    Parquet(Box<ParquetRows<W>>),
}

struct ParquetRows<W: Write + Send> {
    writer: parquet::arrow::ArrowWriter<W>,
    schema: Arc<Schema>,
    /// The row group being gathered, column by column.
    cols: Vec<Col>,
    rows: usize,
}

/// One column of the row group being gathered.
enum Col {
    Str(StringBuilder),
    Dict(StringDictionaryBuilder<Int32Type>),
    Ts(TimestampMillisecondBuilder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Bin(BinaryBuilder),
}

impl Col {
    fn new(ty: Ty) -> Col {
        match ty {
            Ty::Str => Col::Str(StringBuilder::new()),
            Ty::Dict => Col::Dict(StringDictionaryBuilder::new()),
            Ty::Ts => Col::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            Ty::U32 => Col::U32(UInt32Builder::new()),
            Ty::U64 => Col::U64(UInt64Builder::new()),
            Ty::F64 => Col::F64(Float64Builder::new()),
            Ty::Bool => Col::Bool(BooleanBuilder::new()),
            Ty::Bin => Col::Bin(BinaryBuilder::new()),
        }
    }

    fn push(&mut self, v: V) {
        match (self, v) {
            (Col::Str(b), V::S(s)) => b.append_value(s),
            (Col::Str(b), _) => b.append_value(""),
            (Col::Dict(b), V::S(s)) => {
                b.append_value(s);
            }
            (Col::Dict(b), _) => {
                b.append_value("");
            }
            (Col::Ts(b), V::T(t)) => b.append_option(t),
            (Col::U32(b), V::U(u)) => b.append_option(u.and_then(|u| u32::try_from(u).ok())),
            (Col::U64(b), V::U(u)) => b.append_option(u),
            (Col::F64(b), V::F(f)) => b.append_option(f),
            (Col::Bool(b), v) => b.append_value(matches!(v, V::B(true))),
            (Col::Bin(b), V::Bin(x)) if !x.is_empty() => b.append_value(x),
            (Col::Bin(b), _) => b.append_null(),
            (Col::Ts(b), _) => b.append_null(),
            (Col::U32(b), _) => b.append_null(),
            (Col::U64(b), _) => b.append_null(),
            (Col::F64(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Str(b) => Arc::new(b.finish()),
            Col::Dict(b) => Arc::new(b.finish()),
            Col::Ts(b) => Arc::new(b.finish()),
            Col::U32(b) => Arc::new(b.finish()),
            Col::U64(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Bool(b) => Arc::new(b.finish()),
            Col::Bin(b) => Arc::new(b.finish()),
        }
    }
}

fn arrow_schema(cols: Columns) -> Arc<Schema> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(name, ty)| {
            let (dt, nullable) = match ty {
                Ty::Str => (DataType::Utf8, false),
                Ty::Dict => (DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
                Ty::Ts => (DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
                Ty::U32 => (DataType::UInt32, true),
                Ty::U64 => (DataType::UInt64, true),
                Ty::F64 => (DataType::Float64, true),
                Ty::Bool => (DataType::Boolean, false),
                Ty::Bin => (DataType::Binary, true),
            };
            Field::new(*name, dt, nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

impl<W: Write + Send> ParquetRows<W> {
    fn push(&mut self, values: Vec<V>) -> Result<(), ExportError> {
        for (col, v) in self.cols.iter_mut().zip(values) {
            col.push(v);
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the gathered rows as one row group.
    fn flush(&mut self) -> Result<(), ExportError> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.cols.iter_mut().map(Col::finish).collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays).map_err(pq)?;
        self.writer.write(&batch).map_err(pq)?;
        self.writer.flush().map_err(pq)?;
        self.rows = 0;
        Ok(())
    }
}

impl<W: Write + Send> RowWriter<W> {
    fn new(format: Format, what: What, out: W) -> Result<RowWriter<W>, ExportError> {
        let cols = columns(what);
        supported(what, format).map_err(ExportError::Usage)?;
        Ok(match format {
            Format::Jsonl => RowWriter::Jsonl(out),
            Format::Ooni => RowWriter::Ooni(out),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(cols.iter().map(|(n, _)| *n)).map_err(std::io::Error::other)?;
                RowWriter::Csv(Box::new(w))
            }
            Format::Parquet => {
                let schema = arrow_schema(cols);
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP))
                    .set_created_by(concat!("blockwatch-collector ", env!("CARGO_PKG_VERSION")).into())
                    .build();
                let writer = parquet::arrow::ArrowWriter::try_new(out, Arc::clone(&schema), Some(props)).map_err(pq)?;
                let cols = cols.iter().map(|(_, ty)| Col::new(*ty)).collect();
                RowWriter::Parquet(Box::new(ParquetRows { writer, schema, cols, rows: 0 }))
            }
        })
    }

    /// One row. A result goes out as its trace record (JSONL: exactly the trace format) or
    /// its measurement (OONI); its columns are made only for CSV and Parquet.
    fn row(&mut self, what: What, content: Content) -> Result<(), ExportError> {
        match self {
            RowWriter::Jsonl(out) => {
                match content {
                    Content::Result(_, rec) => serde_json::to_writer(&mut *out, &*rec).map_err(std::io::Error::from)?,
                    Content::Values(values) => {
                        let mut obj = serde_json::Map::new();
                        for ((name, _), v) in columns(what).iter().zip(values) {
                            obj.insert((*name).into(), json_value(v));
                        }
                        serde_json::to_writer(&mut *out, &obj).map_err(std::io::Error::from)?;
                    }
                }
                out.write_all(b"\n")?;
            }
            RowWriter::Ooni(out) => {
                if let Content::Result(_, rec) = &content {
                    serde_json::to_writer(&mut *out, &crate::ooni::measurement(rec)).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                }
            }
            RowWriter::Csv(w) => {
                w.write_record(content.into_values().into_iter().map(csv_value)).map_err(std::io::Error::other)?;
            }
            RowWriter::Parquet(p) => p.push(content.into_values())?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ExportError> {
        match self {
            RowWriter::Jsonl(mut out) | RowWriter::Ooni(mut out) => out.flush()?,
            RowWriter::Csv(mut w) => w.flush()?,
            RowWriter::Parquet(mut p) => {
                p.flush()?;
                p.writer.close().map_err(pq)?;
            }
        }
        Ok(())
    }
}

fn ts_text(t: i64) -> String {
    blockwatch_proto::time::format_rfc3339(t)
}

fn json_value(v: V) -> serde_json::Value {
    match v {
        V::S(s) => serde_json::Value::String(s),
        V::T(t) => t.map_or(serde_json::Value::Null, |t| ts_text(t).into()),
        V::U(u) => u.map_or(serde_json::Value::Null, Into::into),
        V::F(f) => f.map_or(serde_json::Value::Null, Into::into),
        V::B(b) => b.into(),
        V::Bin(x) if x.is_empty() => serde_json::Value::Null,
        V::Bin(x) => serde_json::to_value(blockwatch_proto::trace::MaybeBinary::of(&x)).unwrap_or_default(),
    }
}

fn csv_value(v: V) -> String {
    match v {
        V::S(s) => s,
        V::T(t) => t.map(ts_text).unwrap_or_default(),
        V::U(u) => u.map(|u| u.to_string()).unwrap_or_default(),
        V::F(f) => f.map(|f| f.to_string()).unwrap_or_default(),
        V::B(b) => b.to_string(),
        V::Bin(x) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(x)
        }
    }
}

fn parse_ts(s: &str) -> Option<i64> {
    blockwatch_proto::time::parse_rfc3339(s)
}

fn result_values(seq: u64, r: &TraceRecord) -> Vec<V> {
    let s = |x: &str| V::S(x.to_string());
    let nz = |u: u64| V::U((u != 0).then_some(u));
    // A phase that did not run has no time (0 in the trace format).
    let ms = |f: f64| V::F((f > 0.0).then_some(f));
    vec![
        V::U(Some(seq)),
        s(&r.probe_id),
        s(&r.agent_id),
        s(&r.region),
        s(&r.target),
        s(&r.provider),
        V::T(parse_ts(&r.started_at)),
        V::T(r.received_at.as_deref().and_then(parse_ts)),
        s(&r.outcome),
        s(&r.outcome_detail),
        s(&r.failure),
        s(&r.failed_operation),
        nz(r.http_status.into()),
        s(&r.provider_code),
        V::U(Some(r.duration_ms)),
        ms(r.dns_ms),
        ms(r.connect_ms),
        ms(r.tls_ms),
        ms(r.ttfb_ms),
        ms(r.http_ms),
        s(&r.peer_address),
        s(&r.local_address),
        V::S(r.resolved_addresses.join(" ")),
        s(&r.egress_address),
        nz(r.egress_asn.into()),
        s(&r.egress_as_org),
        s(&r.egress_country),
        V::B(r.confirmation),
        V::B(r.control),
        V::B(r.keyed),
        s(&r.detail),
        V::S(if r.edge_headers.is_empty() { String::new() } else { serde_json::json!(r.edge_headers).to_string() }),
        s(&r.url),
        json_text(&r.dns_queries),
        s(&r.tls_version),
        s(&r.tls_cipher_suite),
        s(&r.tls_alpn),
        json_text(&r.request_headers),
        json_text(&r.response_headers),
        V::Bin(r.body_prefix.as_ref().and_then(|b| b.bytes()).unwrap_or_default()),
        V::B(r.body_truncated),
    ]
}

/// A list as its JSON text, empty when it is.
fn json_text<T: serde::Serialize>(list: &[T]) -> V {
    V::S(if list.is_empty() { String::new() } else { serde_json::to_string(list).unwrap_or_default() })
}

/// The date (UTC, `YYYY-MM-DD`) of a time.
fn date_of(t: i64) -> String {
    ts_text(t).chars().take(10).collect()
}

/// The partition directory of a row.
fn partition_dir(levels: &[Level], t: i64, target: &str, region: &str) -> PathBuf {
    let mut p = PathBuf::new();
    for l in levels {
        p.push(match l {
            Level::Date => format!("date={}", date_of(t)),
            Level::Target => format!("target={}", if target.is_empty() { "_" } else { target }),
            Level::Region => format!("region={}", if region.is_empty() { "_" } else { region }),
        });
    }
    p
}

/// Where an export goes.
pub enum Output<'a, W: Write + Send> {
    /// One stream.
    One(W),
    /// A tree under this directory.
    Tree(&'a Path, &'a [Level]),
}

/// What a row holds: a stored result (its sequence number and record), or the values of
/// a block's or an event's columns.
enum Content {
    Result(u64, Box<TraceRecord>),
    Values(Vec<V>),
}

impl Content {
    /// The row's column values.
    fn into_values(self) -> Vec<V> {
        match self {
            Content::Result(seq, rec) => result_values(seq, &rec),
            Content::Values(v) => v,
        }
    }
}

/// A row with what partitioning needs.
struct Row {
    content: Content,
    at: i64,
    target: String,
    region: String,
}

impl Row {
    /// The row of a stored result.
    fn result(seq: u64, stored: &blockwatch_proto::v1::StoredResult) -> Row {
        Row::record(seq, TraceRecord::from_stored(stored))
    }

    /// The row of a result's trace record.
    fn record(seq: u64, rec: TraceRecord) -> Row {
        let at = parse_ts(&rec.started_at).unwrap_or(0);
        let (target, region) = (rec.target.clone(), rec.region.clone());
        Row { content: Content::Result(seq, Box::new(rec)), at, target, region }
    }
}

/// Writes rows into one stream or a tree (one partition's file open at a time: when the
/// partition changes, the open one is finished; a partition met again gets a new part file).
struct Rows<'a, W: Write + Send> {
    what: What,
    format: Format,
    one: Option<RowWriter<W>>,
    tree: Option<(&'a Path, &'a [Level])>,
    open: Option<(PathBuf, RowWriter<std::io::BufWriter<std::fs::File>>)>,
    parts: BTreeMap<PathBuf, usize>,
    n: u64,
}

impl<'a, W: Write + Send> Rows<'a, W> {
    fn new(what: What, format: Format, out: Output<'a, W>) -> Result<Rows<'a, W>, ExportError> {
        let (one, tree) = match out {
            Output::One(w) => (Some(RowWriter::new(format, what, w)?), None),
            Output::Tree(dir, levels) => (None, Some((dir, levels))),
        };
        Ok(Rows { what, format, one, tree, open: None, parts: BTreeMap::new(), n: 0 })
    }

    fn push(&mut self, row: Row) -> Result<(), ExportError> {
        self.n += 1;
        if let Some(w) = &mut self.one {
            return w.row(self.what, row.content);
        }
        let Some((root, levels)) = self.tree else { return Ok(()) };
        let dir = root.join(partition_dir(levels, row.at, &row.target, &row.region));
        if self.open.as_ref().is_none_or(|(d, _)| *d != dir) {
            if let Some((_, w)) = self.open.take() {
                w.finish()?;
            }
            std::fs::create_dir_all(&dir)?;
            let part = self.parts.entry(dir.clone()).or_default();
            let file = dir.join(format!("part-{part}.{}", self.format.extension()));
            *part += 1;
            let f = std::io::BufWriter::new(std::fs::File::create(&file)?);
            self.open = Some((dir, RowWriter::new(self.format, self.what, f)?));
        }
        if let Some((_, w)) = &mut self.open {
            w.row(self.what, row.content)?;
        }
        Ok(())
    }

    /// Finishes the open part file: the next row starts a new one (each part of a results
    /// tree is in the order received).
    fn end_part(&mut self) -> Result<(), ExportError> {
        if let Some((_, w)) = self.open.take() {
            w.finish()?;
        }
        Ok(())
    }

    fn finish(self) -> Result<u64, ExportError> {
        if let Some(w) = self.one {
            w.finish()?;
        }
        if let Some((_, w)) = self.open {
            w.finish()?;
        }
        Ok(self.n)
    }
}

/// Writes trace records, each with its sequence number, as a results export in `format`
/// (what `export --what results` writes for stored results); returns how many.
pub fn write_results<'r, W: Write + Send>(
    format: Format,
    out: W,
    records: impl IntoIterator<Item = (u64, &'r TraceRecord)>,
) -> Result<u64, ExportError> {
    let mut w = RowWriter::new(format, What::Results, out)?;
    let mut n = 0;
    for (seq, rec) in records {
        w.row(What::Results, Content::Result(seq, Box::new(rec.clone())))?;
        n += 1;
    }
    w.finish()?;
    Ok(n)
}

/// The results the archive holds in place of the store: every result started before
/// `before` (the end of the last whole day archived) is read from `files` (results part
/// files, local copies), none from the store.
#[derive(Debug, Clone)]
pub struct Archived {
    pub before: i64,
    pub files: Vec<PathBuf>,
}

impl Archived {
    /// Nothing archived: everything from the store.
    pub fn none() -> Archived {
        Archived { before: i64::MIN, files: Vec::new() }
    }
}

/// Rows in the order received, each with its sequence number.
type Source<'s> = Box<dyn Iterator<Item = Result<(u64, Row), ExportError>> + 's>;

/// Merges sources of rows, each in the order received, into one in that order.
fn merge_by_seq<'s>(
    mut sources: Vec<Source<'s>>,
    mut f: impl FnMut(Row) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut heads: Vec<Option<Row>> = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for (i, src) in sources.iter_mut().enumerate() {
        match src.next().transpose()? {
            Some((seq, row)) => {
                heap.push(Reverse((seq, i)));
                heads.push(Some(row));
            }
            None => heads.push(None),
        }
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(row) = heads[i].take() {
            f(row)?;
        }
        if let Some((seq, row)) = sources[i].next().transpose()? {
            heap.push(Reverse((seq, i)));
            heads[i] = Some(row);
        }
    }
    Ok(())
}

/// Runs an export; returns how many rows. Results started before `archived.before` come
/// from the archive's files, the rest from the store. Blocking.
pub fn export<W: Write + Send>(
    store: &Reader,
    archived: &Archived,
    what: What,
    format: Format,
    filter: &Filter,
    out: Output<'_, W>,
) -> Result<u64, ExportError> {
    supported(what, format).map_err(ExportError::Usage)?;
    let tree = matches!(out, Output::Tree(..));
    let out_levels: Vec<Level> = match &out {
        Output::Tree(_, levels) => levels.to_vec(),
        Output::One(_) => Vec::new(),
    };
    let mut rows = Rows::new(what, format, out)?;
    let (from, to) = (filter.from.unwrap_or(i64::MIN), filter.to.unwrap_or(i64::MAX));
    let keep = |target: &str, region: &str| {
        filter.target.as_deref().is_none_or(|t| t == target) && filter.region.as_deref().is_none_or(|r| r == region)
    };
    match what {
        What::Results if tree => {
            // Through the index: target by target, region by region, each partition's rows
            // gathered (their sequence numbers only) and written in one go in the order
            // received, which is the order `replay` merges a tree in.
            let by_date = out_levels.contains(&Level::Date);
            // The archive's part files first, each already one partition in the order received.
            for file in &archived.files {
                for item in ResultsFile::open(file)? {
                    let (seq, rec) = item?;
                    let row = Row::record(seq, rec);
                    if (from..to).contains(&row.at) && keep(&row.target, &row.region) {
                        rows.push(row)?;
                    }
                }
                rows.end_part()?;
            }
            let from = from.max(archived.before);
            let targets = match &filter.target {
                Some(_) if from >= to => Vec::new(),
                Some(t) => vec![t.clone()],
                None if from >= to => Vec::new(),
                None => store.targets()?,
            };
            for t in targets {
                let mut failed = None;
                let mut part: Option<(String, String)> = None;
                let mut pending: Vec<u64> = Vec::new();
                store.cell_entries(&t, filter.region.as_deref(), from, to, |region, at, seq, _| {
                    let key = (region.to_string(), if by_date { date_of(at) } else { String::new() });
                    if part.as_ref().is_some_and(|p| *p != key)
                        && let Err(e) = emit(store, &mut rows, &mut pending)
                    {
                        failed = Some(e);
                        return false;
                    }
                    part = Some(key);
                    pending.push(seq);
                    // A partition past this many rows is written in several parts (each in
                    // the order received), so memory stays bounded whatever its size.
                    if pending.len() >= PART_ROWS
                        && let Err(e) = emit(store, &mut rows, &mut pending)
                    {
                        failed = Some(e);
                        return false;
                    }
                    true
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
                emit(store, &mut rows, &mut pending)?;
            }
        }
        What::Results => {
            let stored = store.numbered_results_after(0).filter_map(|stored| {
                let (seq, stored) = match stored {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e.into())),
                };
                // The filter on the stored result itself, before any copy of it is made.
                let r = stored.result.as_ref()?;
                let at = r.started_at.as_ref().map_or(0, blockwatch_proto::time::from_timestamp);
                if !(from..to).contains(&at) || !keep(&r.target_id, &r.region) || at < archived.before {
                    return None;
                }
                Some(Ok((seq, Row::result(seq, &stored))))
            });
            let mut sources: Vec<Source<'_>> = Vec::new();
            for file in &archived.files {
                let keep = &keep;
                sources.push(Box::new(ResultsFile::open(file)?.filter_map(move |item| {
                    let (seq, rec) = match item {
                        Ok(x) => x,
                        Err(e) => return Some(Err(e)),
                    };
                    let row = Row::record(seq, rec);
                    ((from..to).contains(&row.at) && keep(&row.target, &row.region)).then_some(Ok((seq, row)))
                })));
            }
            sources.push(Box::new(stored));
            merge_by_seq(sources, |row| rows.push(row))?;
        }
        What::Blocks => {
            for b in spans(store)? {
                let start = b.onset;
                let overlaps = b.end.is_none_or(|e| e > from) && start < to;
                if !overlaps || !keep(&b.target, &b.region) {
                    continue;
                }
                let fine = regions_fine(store, &b)?;
                let values = vec![
                    V::S(b.kind.into()),
                    V::U(Some(b.id)),
                    V::S(b.target.clone()),
                    V::S(b.region.clone()),
                    V::S(b.agent_id.clone()),
                    V::S(provider_of(store, &b)?),
                    V::S(b.signature.clone()),
                    V::T(Some(b.onset)),
                    V::T(Some(b.detected_at)),
                    V::T(b.end),
                    V::F(b.end.map(|e| (e - b.onset).max(0) as f64 / 1000.0)),
                    V::S(b.agents.join(" ")),
                    V::U(Some(b.failing)),
                    V::U(Some(b.ok)),
                    V::S(fine.join(" ")),
                    V::S(b.dominant_outcome.clone()),
                    V::S(b.provider_code.clone()),
                    V::S(b.summary.clone()),
                ];
                rows.push(Row { content: Content::Values(values), at: b.onset, target: b.target, region: b.region })?;
            }
        }
        What::Events => {
            for item in store.events() {
                let (seq, line) = item?;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
                let at = parse_ts(&s("detected_at")).unwrap_or(0);
                if !(from..to).contains(&at) || !keep(&s("target"), &s("region")) {
                    continue;
                }
                let ev = v.get("evidence").cloned().unwrap_or_default();
                let values = vec![
                    V::U(Some(seq)),
                    V::S(s("kind")),
                    V::S(s("target")),
                    V::S(s("region")),
                    V::S(s("agent_id")),
                    V::T(parse_ts(&s("onset"))),
                    V::T(Some(at)),
                    V::S(ev.get("signature").and_then(|x| x.as_str()).unwrap_or_default().into()),
                    V::S(s("summary")),
                    V::S(ev.to_string()),
                ];
                rows.push(Row { content: Content::Values(values), at, target: s("target"), region: s("region") })?;
            }
        }
    }
    rows.finish()
}

/// Writes the results `seqs` names in the order received, and empties it.
fn emit<W: Write + Send>(store: &Reader, rows: &mut Rows<'_, W>, seqs: &mut Vec<u64>) -> Result<(), ExportError> {
    seqs.sort_unstable();
    for seq in seqs.drain(..) {
        let Some(stored) = store.result_at(seq)? else { continue };
        rows.push(Row::result(seq, &stored))?;
    }
    rows.end_part()
}

/// A block, an outage or a vantage problem: a start and its end from the log.
#[derive(Debug, Clone)]
struct Span {
    kind: &'static str,
    id: u64,
    target: String,
    region: String,
    agent_id: String,
    signature: String,
    onset: i64,
    detected_at: i64,
    end: Option<i64>,
    agents: Vec<String>,
    failing: u64,
    ok: u64,
    dominant_outcome: String,
    provider_code: String,
    summary: String,
}

fn spans(store: &Reader) -> Result<Vec<Span>, StoreError> {
    let mut out: Vec<Span> = Vec::new();
    let mut open: BTreeMap<(&'static str, String, String, String), usize> = BTreeMap::new();
    for item in store.events() {
        let (seq, line) = item?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let kind = s("kind");
        let (family, starts) = match kind.as_str() {
            "block_started" => ("block", true),
            "block_ended" => ("block", false),
            "outage_started" => ("outage", true),
            "outage_ended" => ("outage", false),
            "vantage_down" => ("vantage_problem", true),
            "vantage_up" => ("vantage_problem", false),
            _ => continue,
        };
        let key = (family, s("target"), s("region"), s("agent_id"));
        if starts {
            if open.contains_key(&key) {
                continue;
            }
            let ev = v.get("evidence").cloned().unwrap_or_default();
            let es = |k: &str| {
                ev.get(k)
                    .map(|x| x.to_string().trim_matches('"').to_string())
                    .filter(|x| x != "null")
                    .unwrap_or_default()
            };
            let n = |k: &str| ev.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            open.insert(key.clone(), out.len());
            out.push(Span {
                kind: family,
                id: seq,
                target: key.1,
                region: key.2,
                agent_id: key.3,
                signature: es("signature"),
                onset: parse_ts(&s("onset")).unwrap_or(0),
                detected_at: parse_ts(&s("detected_at")).unwrap_or(0),
                end: None,
                agents: ev
                    .get("agents")
                    .and_then(|a| a.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                failing: n("failing"),
                ok: n("ok"),
                dominant_outcome: es("dominant_outcome"),
                provider_code: es("provider_code"),
                summary: s("summary"),
            });
        } else if let Some(i) = open.remove(&key) {
            out[i].end = parse_ts(&s("onset"));
        }
    }
    Ok(out)
}

/// How far around a block's onset the other regions' results are looked at.
const FINE_WINDOW: i64 = 10 * 60_000;

/// The regions where the block's target answered (most results `ok`) in the ten minutes from
/// its onset.
fn regions_fine(store: &Reader, b: &Span) -> Result<Vec<String>, StoreError> {
    if b.kind != "block" {
        return Ok(Vec::new());
    }
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let ok = blockwatch_proto::Outcome::Ok as i32;
    store.cell_entries(&b.target, None, b.onset, b.onset + FINE_WINDOW, |region, _, _, outcome| {
        if region != b.region {
            let c = counts.entry(region.to_string()).or_default();
            c.0 += 1;
            c.1 += u64::from(outcome == ok);
        }
        true
    })?;
    Ok(counts.into_iter().filter(|(_, (n, good))| *n > 0 && good * 2 > *n).map(|(r, _)| r).collect())
}

/// The provider the block's target is probed as (from its latest result before the onset).
fn provider_of(store: &Reader, b: &Span) -> Result<String, StoreError> {
    if b.target.is_empty() || b.target == "*" {
        return Ok(String::new());
    }
    let mut seq = None;
    let region = (!b.region.is_empty() && b.region != "*").then_some(b.region.as_str());
    store.cell_entries(&b.target, region, b.onset - FINE_WINDOW, b.onset + FINE_WINDOW, |_, _, s, _| {
        seq = Some(s);
        false
    })?;
    Ok(match seq {
        Some(s) => store.result_at(s)?.and_then(|r| r.result).map(|r| r.provider).unwrap_or_default(),
        None => String::new(),
    })
}

/// Rows of a results file decoded at a time.
const READ_BATCH: usize = 1024;

/// The results of a Parquet results export (what the archive holds), each with its sequence
/// number, in the file's order (the order received), decoded back to trace records.
pub struct ResultsFile {
    path: PathBuf,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    rows: std::vec::IntoIter<(u64, TraceRecord)>,
}

impl ResultsFile {
    pub fn open(path: &Path) -> Result<ResultsFile, ExportError> {
        let file = std::fs::File::open(path)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(READ_BATCH).build())
            .map_err(|e| ExportError::Parquet(format!("{}: {e}", path.display())))?;
        Ok(ResultsFile { path: path.to_owned(), reader, rows: Vec::new().into_iter() })
    }

    fn fail(&self, e: impl std::fmt::Display) -> ExportError {
        ExportError::Parquet(format!("{}: {e}", self.path.display()))
    }
}

impl Iterator for ResultsFile {
    type Item = Result<(u64, TraceRecord), ExportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(Ok(row));
            }
            let batch = match self.reader.next()? {
                Ok(b) => b,
                Err(e) => return Some(Err(self.fail(e))),
            };
            match decode_results(&batch) {
                Ok(rows) => self.rows = rows.into_iter(),
                Err(e) => return Some(Err(self.fail(e))),
            }
        }
    }
}

/// One column of a decoded batch, read back by its [`Ty`].
enum Read {
    Strs(crate::replay::parquet::Strs),
    Ts(arrow_array::TimestampMillisecondArray),
    U32(arrow_array::UInt32Array),
    U64(arrow_array::UInt64Array),
    F64(arrow_array::Float64Array),
    Bool(arrow_array::BooleanArray),
    Bin(arrow_array::BinaryArray),
}

impl Read {
    fn of(batch: &RecordBatch, name: &str, ty: Ty) -> Result<Read, String> {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        if let Ty::Str | Ty::Dict = ty {
            return crate::replay::parquet::Strs::of(batch, name)?
                .map(Read::Strs)
                .ok_or_else(|| format!("no column {name}"));
        }
        let a = batch.column_by_name(name).ok_or_else(|| format!("no column {name}"))?;
        let want = |w: &str| crate::replay::parquet::want(name, a.data_type(), w);
        Ok(match (ty, a.data_type()) {
            (Ty::Ts, DataType::Timestamp(TimeUnit::Millisecond, _)) => {
                Read::Ts(a.as_primitive::<arrow_array::types::TimestampMillisecondType>().clone())
            }
            (Ty::U32, DataType::UInt32) => Read::U32(a.as_primitive::<arrow_array::types::UInt32Type>().clone()),
            (Ty::U64, DataType::UInt64) => Read::U64(a.as_primitive::<arrow_array::types::UInt64Type>().clone()),
            (Ty::F64, DataType::Float64) => Read::F64(a.as_primitive::<arrow_array::types::Float64Type>().clone()),
            (Ty::Bool, DataType::Boolean) => Read::Bool(a.as_boolean().clone()),
            (Ty::Bin, DataType::Binary) => Read::Bin(a.as_binary::<i32>().clone()),
            (Ty::Ts, _) => return Err(want("timestamp[ms]")),
            (Ty::U32, _) => return Err(want("uint32")),
            (Ty::U64, _) => return Err(want("uint64")),
            (Ty::F64, _) => return Err(want("float64")),
            (Ty::Bool, _) => return Err(want("boolean")),
            (Ty::Bin, _) | (Ty::Str | Ty::Dict, _) => return Err(want("binary")),
        })
    }

    fn value(&self, i: usize) -> V {
        use arrow_array::Array;
        match self {
            Read::Strs(s) => V::S(s.get(i).unwrap_or_default().to_string()),
            Read::Ts(a) => V::T(a.is_valid(i).then(|| a.value(i))),
            Read::U32(a) => V::U(a.is_valid(i).then(|| u64::from(a.value(i)))),
            Read::U64(a) => V::U(a.is_valid(i).then(|| a.value(i))),
            Read::F64(a) => V::F(a.is_valid(i).then(|| a.value(i))),
            Read::Bool(a) => V::B(a.is_valid(i) && a.value(i)),
            Read::Bin(a) => V::Bin(if a.is_valid(i) { a.value(i).to_vec() } else { Vec::new() }),
        }
    }
}

/// A batch of a results file back to its rows: the inverse of [`result_values`].
fn decode_results(batch: &RecordBatch) -> Result<Vec<(u64, TraceRecord)>, String> {
    let cols: Vec<Read> =
        RESULT_COLUMNS.iter().map(|(name, ty)| Read::of(batch, name, *ty)).collect::<Result<_, _>>()?;
    (0..batch.num_rows())
        .map(|i| record_of(cols.iter().map(|c| c.value(i)).collect()).map_err(|e| format!("row {i}: {e}")))
        .collect()
}

/// A results row's values (in [`RESULT_COLUMNS`] order) as its sequence number and record.
fn record_of(values: Vec<V>) -> Result<(u64, TraceRecord), String> {
    let mut v = values.into_iter();
    let mut next = || v.next().ok_or("short row");
    let s = |x: V| match x {
        V::S(s) => s,
        _ => String::new(),
    };
    let u = |x: V| match x {
        V::U(u) => u.unwrap_or(0),
        _ => 0,
    };
    let f = |x: V| match x {
        V::F(f) => f.unwrap_or(0.0),
        _ => 0.0,
    };
    let b = |x: V| matches!(x, V::B(true));
    let t = |x: V| match x {
        V::T(t) => t.map(ts_text),
        _ => None,
    };
    fn list<T: serde::de::DeserializeOwned + Default>(text: &str, name: &str) -> Result<T, String> {
        if text.is_empty() { Ok(T::default()) } else { serde_json::from_str(text).map_err(|e| format!("{name}: {e}")) }
    }
    let seq = match next()? {
        V::U(Some(seq)) => seq,
        _ => return Err("no seq".into()),
    };
    let mut r = TraceRecord {
        probe_id: s(next()?),
        agent_id: s(next()?),
        region: s(next()?),
        target: s(next()?),
        provider: s(next()?),
        ..Default::default()
    };
    r.started_at = t(next()?).ok_or("no started_at")?;
    r.received_at = t(next()?);
    r.outcome = s(next()?);
    r.outcome_detail = s(next()?);
    r.failure = s(next()?);
    r.failed_operation = s(next()?);
    r.http_status = u32::try_from(u(next()?)).map_err(|_| "http_status out of range")?;
    r.provider_code = s(next()?);
    r.duration_ms = u(next()?);
    r.dns_ms = f(next()?);
    r.connect_ms = f(next()?);
    r.tls_ms = f(next()?);
    r.ttfb_ms = f(next()?);
    r.http_ms = f(next()?);
    r.peer_address = s(next()?);
    r.local_address = s(next()?);
    r.resolved_addresses = s(next()?).split_whitespace().map(String::from).collect();
    r.egress_address = s(next()?);
    r.egress_asn = u32::try_from(u(next()?)).map_err(|_| "egress_asn out of range")?;
    r.egress_as_org = s(next()?);
    r.egress_country = s(next()?);
    r.confirmation = b(next()?);
    r.control = b(next()?);
    r.keyed = b(next()?);
    r.detail = s(next()?);
    r.edge_headers = list(&s(next()?), "edge_headers")?;
    r.url = s(next()?);
    r.dns_queries = list(&s(next()?), "dns_queries")?;
    r.tls_version = s(next()?);
    r.tls_cipher_suite = s(next()?);
    r.tls_alpn = s(next()?);
    r.request_headers = list(&s(next()?), "request_headers")?;
    r.response_headers = list(&s(next()?), "response_headers")?;
    r.body_prefix = match next()? {
        V::Bin(x) if !x.is_empty() => Some(blockwatch_proto::trace::MaybeBinary::of(&x)),
        _ => None,
    };
    r.body_truncated = b(next()?);
    Ok((seq, r))
}
