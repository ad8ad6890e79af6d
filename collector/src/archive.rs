//! The archive: whole UTC days of results and events rolled into Parquet (the research
//! export's schema, Hive-partitioned by date, target and region) with the block history
//! beside them, in a local directory or an object store (S3-compatible, GCS, Azure) through
//! `object_store`.
//!
//! Layout under the archive's URL:
//! - `results/date=D/target=T/region=R/part-N.parquet`: the day's results of one cell, in
//!   the order received (a part holds at most `research::PART_ROWS`);
//! - `events/date=D/target=T/region=R/part-N.parquet`: the events detected that day;
//! - `blocks/blocks.parquet`: every block, outage and vantage problem, replaced whole;
//! - `_blockwatch/days/D.json`: the day's manifest (its files, rows and bytes), written
//!   after them.
//!
//! A day is rolled once, when nothing more can arrive for it: ingest refuses a result that
//! started more than `limits.max_age` before it is received, so the day is closed
//! `limits.max_age` plus [`SETTLE`] after its end. Every file is written whole (an object
//! store shows an object only once its upload completes; the local backend writes a staging
//! file and renames it) under a name fixed by what it holds, and the store's
//! `archived_through` mark moves only after the day's manifest is written. A crash mid-roll
//! therefore leaves no partial file, and the next roll writes the same day again under the
//! same names with the same bytes: nothing partial, nothing twice. Files are one per cell and
//! day, so there are no small files to compact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::research::{self, Archived, Filter, Format, Level, Output, What};
use crate::store::{Reader, StoreError};

/// A UTC day in milliseconds.
pub const DAY: i64 = 86_400_000;
/// Past `limits.max_age` after a day's end, the time left for batches in flight and the
/// detector's events before the day is rolled.
pub const SETTLE: Duration = Duration::from_secs(600);
/// Files up to this size are uploaded in one request; larger ones in parts of this size.
const PART_BYTES: usize = 16 * 1024 * 1024;
/// The first roll after start.
const FIRST: Duration = Duration::from_secs(5);
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// The manifest format.
pub const MANIFEST_FORMAT: &str = "blockwatch.archive.day.v1";

/// The `[archive]` section.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Where the archive is: `file:///var/lib/blockwatch-archive`, `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX` or `az://CONTAINER/PREFIX`. Credentials come from the environment
    /// as the cloud's own tools read them (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, …).
    pub url: String,
    /// How often the collector looks for closed days to roll. Default 1h.
    #[schemars(with = "String")]
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
    /// Settings of the object store's client by their `object_store` names (`endpoint`,
    /// `region`, `allow_http`, …); unknown names are refused. None for `file://`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl ArchiveConfig {
    /// What `Archive::open` would refuse, without creating anything.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.every < Duration::from_secs(1) || self.every > Duration::from_secs(7 * 86_400) {
            p.push("archive.every: must be 1s..=7d".to_string());
        }
        match url::Url::parse(&self.url) {
            Err(e) => p.push(format!("archive.url {:?}: {e}", self.url)),
            Ok(u) if u.scheme() == "file" => {
                if u.to_file_path().is_err() {
                    p.push(format!("archive.url {:?}: not a local path", self.url));
                }
                if !self.options.is_empty() {
                    p.push("archive.options: a file:// archive takes none".into());
                }
            }
            Ok(_) => {
                if let Err(e) = Archive::open(self) {
                    p.push(e.to_string().replacen("archive: ", "archive.", 1));
                }
            }
        }
        p
    }
}

fn default_every() -> Duration {
    Duration::from_secs(3600)
}

/// Why an archive step failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive: {0}")]
    Config(String),
    #[error("archive object store: {0}")]
    Remote(#[from] object_store::Error),
    #[error("archive: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Export(#[from] research::ExportError),
    #[error("archive manifest {path}: {why}")]
    Manifest { path: String, why: String },
}

/// An open archive.
pub struct Archive {
    objects: Arc<dyn ObjectStore>,
    root: ObjPath,
    /// The directory of a `file://` archive: files are read where they are.
    local: Option<PathBuf>,
    url: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("url", &self.url).finish()
    }
}

/// One file of a day's manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Under the archive's root: `results/date=…/part-0.parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A day's manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    pub date: String,
    pub files: Vec<ManifestFile>,
}

/// What a roll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rolled {
    pub days: u64,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

fn config_err(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Config(e.to_string())
}

impl Archive {
    /// Opens the archive `cfg` names (creating a local directory). Connects to nothing.
    pub fn open(cfg: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        // The object stores' HTTPS client takes the process's TLS provider: the collector's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = url::Url::parse(&cfg.url).map_err(|e| config_err(format!("url {:?}: {e}", cfg.url)))?;
        let root_of = |u: &url::Url| {
            ObjPath::parse(u.path().trim_matches('/')).map_err(|e| config_err(format!("url {:?}: {e}", cfg.url)))
        };
        macro_rules! cloud {
            ($builder:ty, $key:ty, $what:literal) => {{
                let mut b = <$builder>::from_env().with_url(cfg.url.clone());
                for (k, v) in &cfg.options {
                    let key: $key = k
                        .parse()
                        .map_err(|_| config_err(format!("options.{k}: not a setting of the {} client", $what)))?;
                    b = b.with_config(key, v.clone());
                }
                Arc::new(b.build().map_err(config_err)?) as Arc<dyn ObjectStore>
            }};
        }
        let (objects, root, local) = match url.scheme() {
            "file" => {
                if !cfg.options.is_empty() {
                    return Err(config_err("options: a file:// archive takes none"));
                }
                let dir = url.to_file_path().map_err(|_| config_err(format!("url {:?}: not a local path", cfg.url)))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| config_err(format!("cannot create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(config_err)?;
                (Arc::new(fs) as Arc<dyn ObjectStore>, ObjPath::default(), Some(dir))
            }
            "s3" | "s3a" => (
                cloud!(object_store::aws::AmazonS3Builder, object_store::aws::AmazonS3ConfigKey, "S3"),
                root_of(&url)?,
                None,
            ),
            "gs" => (
                cloud!(
                    object_store::gcp::GoogleCloudStorageBuilder,
                    object_store::gcp::GoogleConfigKey,
                    "Google Cloud Storage"
                ),
                root_of(&url)?,
                None,
            ),
            "az" | "azure" | "abfs" | "abfss" => (
                cloud!(
                    object_store::azure::MicrosoftAzureBuilder,
                    object_store::azure::AzureConfigKey,
                    "Azure Blob Storage"
                ),
                root_of(&url)?,
                None,
            ),
            other => return Err(config_err(format!("url {:?}: scheme {other}: is not file, s3, gs or az", cfg.url))),
        };
        Ok(Archive { objects, root, local, url: cfg.url.clone() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjPath {
        rel.split('/').filter(|p| !p.is_empty()).fold(self.root.clone(), |p, part| p.clone().join(part))
    }

    /// Uploads a local file as `rel`, whole or not at all.
    async fn put_file(&self, rel: &str, local: &Path) -> Result<u64, ArchiveError> {
        let size = tokio::fs::metadata(local).await?.len();
        let path = self.path(rel);
        if size <= PART_BYTES as u64 {
            let bytes = tokio::fs::read(local).await?;
            self.objects.put(&path, PutPayload::from(bytes)).await?;
            return Ok(size);
        }
        let upload = self.objects.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let copied: Result<(), ArchiveError> = async {
            let mut f = tokio::fs::File::open(local).await?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(2).await?;
                w.write(&buf[..n]);
            }
        }
        .await;
        // An upload that fails is aborted, so no incomplete upload is left behind.
        if let Err(e) = copied {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await?;
        Ok(size)
    }

    async fn get_bytes(&self, rel: &str) -> Result<Vec<u8>, ArchiveError> {
        Ok(self.objects.get(&self.path(rel)).await?.bytes().await?.to_vec())
    }

    /// A local copy of `rel` (a `file://` archive's own file; otherwise downloaded into `dir`).
    async fn local_copy(&self, rel: &str, dir: &Path) -> Result<PathBuf, ArchiveError> {
        if let Some(root) = &self.local {
            return Ok(root.join(rel));
        }
        let to = dir.join(rel);
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut out = tokio::fs::File::create(&to).await?;
        let mut stream = self.objects.get(&self.path(rel)).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        Ok(to)
    }

    /// The manifest of `day` (days since the epoch).
    pub async fn manifest(&self, day: i64) -> Result<Manifest, ArchiveError> {
        let rel = manifest_path(day);
        let bad = |why: String| ArchiveError::Manifest { path: rel.clone(), why };
        let meta = self.objects.head(&self.path(&rel)).await?;
        if meta.size > MAX_MANIFEST_BYTES {
            return Err(bad(format!("{} bytes, more than {MAX_MANIFEST_BYTES}", meta.size)));
        }
        let bytes = self.get_bytes(&rel).await?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != MANIFEST_FORMAT || m.date != date_text(day) {
            return Err(bad(format!(
                "format {:?} for {:?}, want {MANIFEST_FORMAT} for {}",
                m.format,
                m.date,
                date_text(day)
            )));
        }
        // Only the paths a roll of this day writes: nothing another day holds, nothing
        // outside the archive.
        for f in &m.files {
            if !day_file(&f.path, &m.date) {
                return Err(bad(format!("file {:?} is not a part file of {}", f.path, m.date)));
            }
        }
        Ok(m)
    }

    /// The archived results an export with `filter` reads in place of the store's: local
    /// copies (into `dir`) of the part files of every archived day the filter's range meets.
    pub async fn results_for(&self, store: &Reader, filter: &Filter, dir: &Path) -> Result<Archived, ArchiveError> {
        let reader = store.clone();
        let (through, first) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            Ok((reader.archived_through()?, reader.archived_from()?))
        })
        .await
        .map_err(|e| config_err(format!("archive read stopped: {e}")))??;
        let (Some(through), Some(first)) = (through, first) else { return Ok(Archived::none()) };
        let from_day = filter.from.map_or(first, |f| f.div_euclid(DAY)).max(first);
        let to_day = filter.to.map_or(through, |t| (t - 1).div_euclid(DAY)).min(through);
        let mut files = Vec::new();
        for day in from_day..=to_day {
            for f in self.manifest(day).await?.files {
                let cell = |key: &str| f.path.split('/').find_map(|p| p.strip_prefix(key)).map(String::from);
                let wanted = f.path.starts_with("results/")
                    && filter.target.as_deref().is_none_or(|t| cell("target=").as_deref() == Some(t))
                    && filter.region.as_deref().is_none_or(|r| cell("region=").as_deref() == Some(r));
                if wanted {
                    files.push(self.local_copy(&f.path, dir).await?);
                }
            }
        }
        Ok(Archived { before: (through + 1) * DAY, files })
    }

    /// Rolls every closed day not archived yet, then the block history if the event log
    /// grew since `blocks_at` (the last event seq it was written at). Returns what was
    /// written and the event seq the block history is now at.
    pub async fn roll(
        &self,
        store: &Reader,
        staging: &Path,
        max_age: Duration,
        now: i64,
        blocks_at: Option<u64>,
    ) -> Result<(Rolled, Option<u64>), ArchiveError> {
        let mut rolled = Rolled::default();
        let reader = store.clone();
        let (through, oldest) =
            blocking(move || Ok((reader.archived_through()?, reader.oldest_started_bound(max_age)?))).await?;
        let closed_before = now - i64::try_from((max_age + SETTLE).as_millis()).unwrap_or(i64::MAX);
        let last_closed = closed_before.div_euclid(DAY) - 1;
        let first = match (through, oldest) {
            (Some(d), _) => d + 1,
            (None, Some(t)) => t.div_euclid(DAY),
            (None, None) => last_closed + 1,
        };
        if through.is_none() && first <= last_closed {
            let reader = store.clone();
            blocking(move || Ok(reader.set_archived_from(first)?)).await?;
        }
        for day in first..=last_closed {
            let got = self.roll_day(store, staging, day).await?;
            let reader = store.clone();
            blocking(move || Ok(reader.set_archived_through(day)?)).await?;
            tracing::info!(date = %date_text(day), files = got.files, rows = got.rows, bytes = got.bytes, "archived a day");
            rolled.days += 1;
            rolled.files += got.files;
            rolled.rows += got.rows;
            rolled.bytes += got.bytes;
        }
        if rolled.days > 0 {
            tracing::info!(through = %date_text(last_closed), "archive up to date");
        }
        let reader = store.clone();
        let last_event = blocking(move || Ok(reader.last_event_seq()?)).await?;
        if blocks_at == Some(last_event) {
            return Ok((rolled, blocks_at));
        }
        let file = staging.join("blocks.parquet");
        tokio::fs::create_dir_all(staging).await?;
        let (reader, out) = (store.clone(), file.clone());
        blocking(move || {
            let f = std::io::BufWriter::new(std::fs::File::create(&out)?);
            research::export(
                &reader,
                &Archived::none(),
                What::Blocks,
                Format::Parquet,
                &Filter::default(),
                Output::One(f),
            )?;
            Ok(())
        })
        .await?;
        rolled.bytes += self.put_file("blocks/blocks.parquet", &file).await?;
        rolled.files += 1;
        tokio::fs::remove_file(&file).await?;
        Ok((rolled, Some(last_event)))
    }

    /// Writes one day: its results and events as trees in `staging`, each file uploaded,
    /// then the manifest.
    async fn roll_day(&self, store: &Reader, staging: &Path, day: i64) -> Result<Rolled, ArchiveError> {
        let dir = staging.join(date_text(day));
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir).await?;
        }
        let (reader, tree) = (store.clone(), dir.clone());
        let files = blocking(move || {
            let filter = Filter { from: Some(day * DAY), to: Some((day + 1) * DAY), target: None, region: None };
            let levels = [Level::Date, Level::Target, Level::Region];
            for (what, sub) in [(What::Results, "results"), (What::Events, "events")] {
                let out = tree.join(sub);
                std::fs::create_dir_all(&out)?;
                research::export::<std::io::Sink>(
                    &reader,
                    &Archived::none(),
                    what,
                    Format::Parquet,
                    &filter,
                    Output::Tree(&out, &levels),
                )?;
            }
            let mut files = Vec::new();
            walk(&tree, &tree, &mut files)?;
            files.sort();
            let mut listed = Vec::with_capacity(files.len());
            for rel in files {
                let path = tree.join(&rel);
                let rows = parquet_rows(&path)?;
                listed.push((rel, path, rows));
            }
            Ok(listed)
        })
        .await?;
        let mut manifest = Manifest { format: MANIFEST_FORMAT.into(), date: date_text(day), files: Vec::new() };
        let mut rolled = Rolled { days: 1, ..Rolled::default() };
        for (rel, path, rows) in files {
            let bytes = self.put_file(&rel, &path).await?;
            rolled.files += 1;
            rolled.rows += rows;
            rolled.bytes += bytes;
            manifest.files.push(ManifestFile { path: rel, rows, bytes });
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        self.objects.put(&self.path(&manifest_path(day)), PutPayload::from(json)).await?;
        tokio::fs::remove_dir_all(&dir).await?;
        Ok(rolled)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| config_err(format!("archive step stopped: {e}")))?
}

/// Every file under `dir`, as paths relative to `root` joined by `/`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
        }
    }
    Ok(())
}

/// The rows a Parquet file's footer counts.
fn parquet_rows(path: &Path) -> Result<u64, ArchiveError> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path)?)
        .map_err(|e| research::ExportError::Parquet(format!("{}: {e}", path.display())))?;
    Ok(u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0))
}

/// Whether `path` is one a roll of `date` writes:
/// `results|events/date=DATE/target=ID/region=ID/part-N.parquet` (`_` for no target or
/// region), each id by the id rule.
fn day_file(path: &str, date: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let id =
        |p: &str, key: &str| p.strip_prefix(key).is_some_and(|v| v == "_" || blockwatch_proto::id::check(v).is_ok());
    let part = |p: &str| {
        p.strip_prefix("part-")
            .and_then(|p| p.strip_suffix(".parquet"))
            .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(parts.as_slice(), [kind, d, t, r, p]
        if (*kind == "results" || *kind == "events")
            && d.strip_prefix("date=") == Some(date)
            && id(t, "target=")
            && id(r, "region=")
            && part(p))
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn date_text(day: i64) -> String {
    blockwatch_proto::time::format_rfc3339(day.saturating_mul(DAY)).chars().take(10).collect()
}

fn manifest_path(day: i64) -> String {
    format!("_blockwatch/days/{}.json", date_text(day))
}

/// Rolls closed days every `every` until `stop` turns true. With `leading` (a clustered
/// detector, whose store may be catching up on the stream) it rolls only while that is true,
/// and a day is closed by the newest receipt in the store, not by the clock: nothing closes
/// ahead of a backlog.
pub async fn run(
    store: Reader,
    archive: Arc<Archive>,
    staging: PathBuf,
    (max_age, every): (Duration, Duration),
    leading: Option<watch::Receiver<bool>>,
    mut stop: watch::Receiver<bool>,
) {
    // What a killed roll left in staging is written again from the store.
    if staging.exists()
        && let Err(e) = tokio::fs::remove_dir_all(&staging).await
    {
        tracing::warn!(dir = %staging.display(), error = %e, "cannot clear the archive's staging directory");
    }
    let mut next = tokio::time::Instant::now() + FIRST.min(every);
    let mut blocks_at = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        next = tokio::time::Instant::now() + every;
        let mut now = blockwatch_proto::time::now();
        // A clustered detector archives only while it alerts (one writer per archive), and
        // closes days by what its store has received, which may trail the clock.
        if let Some(leading) = &leading {
            if !*leading.borrow() {
                continue;
            }
            let reader = store.clone();
            match blocking(move || Ok(reader.newest_received()?)).await {
                Ok(newest) => now = newest.map_or(now, |n| n.min(now)),
                Err(e) => {
                    tracing::warn!(error = %blockwatch_proto::error::chain(&e), "archive: cannot read the store");
                    continue;
                }
            }
        }
        let roll = archive.roll(&store, &staging, max_age, now, blocks_at);
        tokio::select! {
            r = roll => match r {
                Ok((_, at)) => blocks_at = at,
                Err(e) => tracing::warn!(error = %blockwatch_proto::error::chain(&e), archive = archive.url(), "archive roll failed; retried at the next"),
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use blockwatch_sim as sim;

    use super::*;
    use crate::store::Store;

    const MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

    /// A store holding a generated trace of three days (written as ingest would), with a
    /// block's two events in its log; returns it and the trace's end.
    async fn stored(dir: &Path) -> (Store, i64) {
        let trace = sim::generate(&sim::Params::new(sim::Family::Curfew, 1200, 3, 5));
        assert!(trace.end - trace.records[0].started_at > 2 * DAY, "the trace spans several days");
        let store = Store::open(dir).unwrap();
        let recs: Vec<_> = trace.records.iter().zip(trace.trace_records()).collect();
        for batch in recs.chunks(50) {
            let received = batch.iter().map(|(r, _)| r.received_at).max().unwrap();
            store.write_results(batch.iter().map(|(_, t)| t.to_result().unwrap()).collect(), received).await.unwrap();
        }
        let t = |ms: i64| blockwatch_proto::time::format_rfc3339(ms);
        let start = trace.records[0].started_at;
        let lines = [
            format!(
                r#"{{"kind":"block_started","target":"openai","region":"hk","onset":"{}","detected_at":"{}","evidence":{{"signature":"x"}}}}"#,
                t(start + DAY / 2),
                t(start + DAY / 2 + 60_000)
            ),
            format!(
                r#"{{"kind":"block_ended","target":"openai","region":"hk","onset":"{}","detected_at":"{}"}}"#,
                t(start + DAY),
                t(start + DAY + 60_000)
            ),
        ];
        store.event_log().append(&lines, None).unwrap();
        (store, trace.end)
    }

    fn jsonl(store: &Reader, archived: &Archived, filter: &Filter) -> Vec<u8> {
        let mut out = Vec::new();
        research::export(store, archived, What::Results, Format::Jsonl, filter, Output::One(&mut out)).unwrap();
        out
    }

    /// Every file under a directory with its bytes.
    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files).unwrap();
        files.into_iter().map(|f| (f.clone(), std::fs::read(dir.join(&f)).unwrap())).collect()
    }

    #[tokio::test]
    async fn closed_days_roll_once_and_old_results_are_read_back_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let (store, end) = stored(&dir.path().join("store")).await;
        let root = dir.path().join("archive");
        let cfg = ArchiveConfig {
            url: url::Url::from_directory_path(&root).unwrap().to_string(),
            every: default_every(),
            options: BTreeMap::new(),
        };
        let archive = Archive::open(&cfg).unwrap();
        let staging = dir.path().join("staging");
        let everything = jsonl(&store, &Archived::none(), &Filter::default());

        // No day is closed while results can still arrive for it (the days before the
        // first result that a result could have started in are, and hold nothing).
        let (early, _) = archive.roll(&store, &staging, MAX_AGE, end + DAY, None).await.unwrap();
        assert_eq!(early.rows, 0);
        let start = store.result_at(1).unwrap().unwrap().result.unwrap().started_at.unwrap();
        assert!(store.archived_through().unwrap().unwrap() < blockwatch_proto::time::from_timestamp(&start) / DAY);

        // Every day closed: each rolled once, its manifest naming its files.
        let now = end + 9 * DAY;
        let (rolled, blocks_at) = archive.roll(&store, &staging, MAX_AGE, now, None).await.unwrap();
        let through = store.archived_through().unwrap().unwrap();
        assert_eq!(through, (now - (MAX_AGE + SETTLE).as_millis() as i64).div_euclid(DAY) - 1);
        let first = store.archived_from().unwrap().unwrap();
        assert_eq!((early.days + rolled.days) as i64, through - first + 1);
        let mut rows = 0;
        let mut events = 0;
        for day in first..=through {
            for f in archive.manifest(day).await.unwrap().files {
                assert!(
                    f.path.starts_with(&format!("results/date={}/", date_text(day))) || f.path.starts_with("events/")
                );
                assert_eq!(std::fs::metadata(root.join(&f.path)).unwrap().len(), f.bytes);
                if f.path.starts_with("results/") {
                    rows += f.rows;
                } else {
                    events += f.rows;
                }
            }
        }
        assert_eq!(rows, store.result_count().unwrap() as u64, "every result archived once");
        assert_eq!(events, 2);
        assert!(root.join("blocks/blocks.parquet").is_file());
        assert!(!staging.join(date_text(first)).exists(), "staging is cleaned up");
        let before = contents(&root);

        // A second pass writes nothing; the block history only when the log grows.
        let (again, _) = archive.roll(&store, &staging, MAX_AGE, now, blocks_at).await.unwrap();
        assert_eq!(again, Rolled::default());

        // A crash before the mark moved: the days roll again to the same names and bytes.
        store.set_archived_through(first).unwrap();
        std::fs::remove_file(root.join(manifest_path(through))).unwrap();
        archive.roll(&store, &staging, MAX_AGE, now, None).await.unwrap();
        assert_eq!(contents(&root), before, "a repeated roll writes the same files, nothing more");

        // Read back: an export through the archive is the store's own, byte for byte, in
        // whole and for one cell and a time range.
        let copies = tempfile::tempdir().unwrap();
        let all = archive.results_for(&store, &Filter::default(), copies.path()).await.unwrap();
        assert!(!all.files.is_empty());
        assert_eq!(jsonl(&store, &all, &Filter::default()), everything);
        let narrow = Filter {
            from: Some((first + 1) * DAY + 3_600_000),
            to: Some(end),
            target: Some("openai".into()),
            region: Some("hk".into()),
        };
        let part = archive.results_for(&store, &narrow, copies.path()).await.unwrap();
        assert!(part.files.len() < all.files.len());
        let from_store = jsonl(&store, &Archived::none(), &narrow);
        assert!(!from_store.is_empty());
        assert_eq!(jsonl(&store, &part, &narrow), from_store);

        // Retention takes only what the archive holds (here, as if it held the first half
        // of the trace), then everything; the export stays the same.
        let started = |r: blockwatch_proto::v1::StoredResult| {
            blockwatch_proto::time::from_timestamp(&r.result.unwrap().started_at.unwrap())
        };
        let half = store.result_count().unwrap() as u64 / 2;
        let cut = started(store.result_at(half).unwrap().unwrap());
        let later = store.results().filter(|r| started(r.as_ref().unwrap().clone()) >= cut).count();
        assert!(later > 0);
        assert!(store.delete_results_before(i64::MAX, Some(cut)).unwrap() > 0);
        assert!(store.result_count().unwrap() >= later, "no result of a day not archived goes");
        assert!(store.delete_results_before(i64::MAX, Some(all.before)).unwrap() > 0);
        assert_eq!(store.result_count().unwrap(), 1, "the newest always stays");
        assert_eq!(jsonl(&store, &all, &Filter::default()), everything);
        assert_eq!(store.delete_results_before(i64::MAX, Some(i64::MIN)).unwrap(), 0, "nothing archived: nothing goes");
        store.close();
    }

    #[test]
    fn a_manifest_names_only_part_files_of_its_own_day() {
        let d = "2026-11-20";
        assert!(day_file("results/date=2026-11-20/target=openai/region=hk/part-0.parquet", d));
        assert!(day_file("events/date=2026-11-20/target=_/region=_/part-12.parquet", d));
        for bad in [
            "results/date=2026-11-21/target=openai/region=hk/part-0.parquet",
            "results/date=2026-11-20/../region=hk/part-0.parquet",
            "results/date=2026-11-20/target=openai/region=hk/../../../etc/passwd",
            "/results/date=2026-11-20/target=openai/region=hk/part-0.parquet",
            "results/date=2026-11-20/target=openai/region=hk/part-0.parquet#1",
            "results/date=2026-11-20/target=open ai/region=hk/part-0.parquet",
            "blocks/blocks.parquet",
            "",
        ] {
            assert!(!day_file(bad, d), "{bad}");
        }
    }

    #[test]
    fn configs_are_checked_without_touching_anything() {
        let cfg = |url: &str, options: &[(&str, &str)]| ArchiveConfig {
            url: url.into(),
            every: default_every(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(cfg("file:///tmp/a", &[]).problems().is_empty());
        assert!(cfg("s3://bucket/prefix", &[("region", "us-east-1")]).problems().is_empty());
        let p = cfg("s3://bucket", &[("colour", "blue")]).problems();
        assert!(p[0].contains("options.colour: not a setting of the S3 client"), "{p:?}");
        let p = cfg("ftp://host/x", &[]).problems();
        assert!(p[0].contains("scheme ftp"), "{p:?}");
        let p = cfg("file:///tmp/a", &[("endpoint", "x")]).problems();
        assert!(p[0].contains("takes none"), "{p:?}");
        assert!(!cfg("not a url", &[]).problems().is_empty());
    }
}
