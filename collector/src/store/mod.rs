//! The collector's durable store: every result (deduplicated by probe id) and the event log,
//! on fjall.
//!
//! Layout (keyspaces):
//! - `results`: ingest sequence (u64 big-endian) → `StoredResult` (protobuf). Scanning it gives
//!   results in the order the collector received them.
//! - `ids`: probe id → ingest sequence. The dedupe index.
//! - `events`: event sequence (u64 big-endian) → event JSON line.
//! - `meta`: `detector_processed` → how many results (in store order) the live detector had
//!   handled when it last appended events; written in the same commit as those events, so a
//!   restart re-publishes exactly the events a crash kept from the log. `sink_cursor/NAME` →
//!   the last event notification sink NAME finished with; `maintenance/ID` → a maintenance
//!   window added through the API (JSON); `detector_checkpoint` → the header of the detector's
//!   checkpoint (the results it covers, its length and chunks); `archived_through` → the
//!   last UTC day the archive holds whole (days since the epoch), `archived_from` → its first;
//!   `stream_mark/STREAM` → how far a clustered detector has read the results stream.
//! - `checkpoint`: chunk number (u32 big-endian) → the detector's state
//!   (`Detector::snapshot`) in chunks of `CHECKPOINT_CHUNK`, written in one commit with its
//!   header and the `detector_processed` mark (key-value separated: the values are large and
//!   rewritten whole).
//!
//! All result writes go through one writer thread ([`writer`]) that does the dedupe check, so
//! two concurrent batches carrying the same probe id cannot both store it, and that commits
//! with `PersistMode::SyncAll` before it answers: an answer means durable. It then hands the
//! stored results to the live detector in store order, so the detector sees exactly what a
//! later replay of the store sees. Events are appended by the detector alone, through an
//! [`EventLog`].

mod backup;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockwatch_proto::v1::{ProbeResult, StoredResult};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

pub use backup::{BACKUP_MANIFEST, Backup, restore};
pub use writer::{Feed, WriteOutcome};

/// Requests waiting for the writer thread. When full, callers wait (backpressure reaches the
/// agents' streams).
pub const WRITE_QUEUE: usize = 64;
/// The store's block cache. The dedupe check reads the `ids` index for every result; past a
/// few million results fjall's default (32 MiB) no longer holds its filters and upper blocks,
/// and every check goes to the disk.
pub const CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// The block cache of a store opened for one pass through it ([`Store::open_for_scan`]).
pub const SCAN_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Bound on fjall's journal before it forces memtable flushes.
const MAX_JOURNAL_BYTES: u64 = 128 * 1024 * 1024;

/// A store failure, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error(
        "disk nearly full: {free_mib} MiB free for the store, limits.min_free_disk_mb = {reserve_mib} kept in reserve; \
         nothing is acknowledged until space returns"
    )]
    DiskFull { free_mib: u64, reserve_mib: u64 },
    #[error("store read failed: {0}")]
    Read(String),
    #[error("{0} is damaged")]
    Damaged(String),
    #[error("store record {key} is corrupt")]
    Corrupt { key: String, source: prost::DecodeError },
    #[error("the store writer has stopped")]
    Closed,
}

/// What a storage-engine error means, in words (the engine's own text is its debug form).
pub(crate) fn describe(e: &fjall::Error) -> String {
    use fjall::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::Storage(lsm_tree_error) => match std::error::Error::source(lsm_tree_error) {
            Some(io) => io.to_string(),
            None => format!("damaged data files ({lsm_tree_error:?})"),
        },
        E::JournalRecovery(_) => "the journal could not be recovered".to_string(),
        E::Locked => "another process has it open".to_string(),
        E::Poisoned => "an earlier write failed; no more writes are accepted until a restart".to_string(),
        E::Unrecoverable => "damaged beyond recovery".to_string(),
        other => format!("damaged data files ({other:?})"),
    }
}

#[derive(Clone)]
pub(crate) struct Keyspaces {
    db: Database,
    results: Keyspace,
    ids: Keyspace,
    /// The results by target, region and time: `cell_key` → the outcome (one byte).
    cells: Keyspace,
    events: Keyspace,
    meta: Keyspace,
    checkpoint: Keyspace,
}

impl Keyspaces {
    /// Opens (or creates) the database in `dir` and its keyspaces.
    fn open(dir: &Path, cache: u64) -> Result<Keyspaces, StoreError> {
        let open_err = |e: fjall::Error| StoreError::Open { path: dir.to_owned(), cause: describe(&e) };
        let db =
            Database::builder(dir).max_journaling_size(MAX_JOURNAL_BYTES).cache_size(cache).open().map_err(open_err)?;
        Ok(Keyspaces {
            results: db.keyspace("results", KeyspaceCreateOptions::default).map_err(open_err)?,
            ids: db.keyspace("ids", KeyspaceCreateOptions::default).map_err(open_err)?,
            cells: db.keyspace("cells", KeyspaceCreateOptions::default).map_err(open_err)?,
            events: db.keyspace("events", KeyspaceCreateOptions::default).map_err(open_err)?,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default).map_err(open_err)?,
            checkpoint: db
                .keyspace("checkpoint", || {
                    KeyspaceCreateOptions::default().with_kv_separation(Some(fjall::KvSeparationOptions::default()))
                })
                .map_err(open_err)?,
            db,
        })
    }

    /// Every keyspace with its name, in a fixed order.
    fn named(&self) -> [(&'static str, &Keyspace); 6] {
        [
            ("results", &self.results),
            ("ids", &self.ids),
            ("cells", &self.cells),
            ("events", &self.events),
            ("meta", &self.meta),
            ("checkpoint", &self.checkpoint),
        ]
    }
}

const DETECTOR_CHECKPOINT: &[u8] = b"detector_checkpoint";
/// Bytes per value of the detector's checkpoint.
const CHECKPOINT_CHUNK: usize = 1 << 20;

const DETECTOR_PROCESSED: &[u8] = b"detector_processed";
const ARCHIVED_THROUGH: &[u8] = b"archived_through";
const ARCHIVED_FROM: &[u8] = b"archived_from";

/// Handle to the store; cheap to clone. Reads go through its [`Reader`].
#[derive(Clone)]
pub struct Store {
    reader: Reader,
    tx: mpsc::Sender<writer::Request>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The writer's disk reserve, asked again for readiness.
    space: Arc<writer::Space>,
    /// The writer's last commit failure, if the last commit failed.
    failing: writer::Failing,
}

/// A write in the writer's queue (see [`Store::queue_results`]).
pub struct Queued(oneshot::Receiver<Result<WriteOutcome, StoreError>>);

impl Queued {
    /// The write's outcome, once it is durable (or has failed).
    pub async fn outcome(self) -> Result<WriteOutcome, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_feeding(dir, None, 0)
    }

    /// Like [`Store::open`], and every committed batch of new results is sent to `feed`, in
    /// store order. With `min_free` bytes, results are refused (`StoreError::DiskFull`) while
    /// less is free on the store's filesystem.
    pub fn open_feeding(dir: &Path, feed: Option<Feed>, min_free: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, feed, min_free, CACHE_BYTES)
    }

    /// Like [`Store::open`], with a block cache of [`SCAN_CACHE_BYTES`]: for a command that
    /// reads the store once through (an export), where a big cache only holds memory.
    pub fn open_for_scan(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, None, 0, SCAN_CACHE_BYTES)
    }

    fn open_with(dir: &Path, feed: Option<Feed>, min_free: u64, cache: u64) -> Result<Store, StoreError> {
        let ks = Keyspaces::open(dir, cache)?;
        index_existing(&ks).map_err(|e| StoreError::Open { path: dir.to_owned(), cause: e.to_string() })?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let space = writer::Space { dir: dir.to_owned(), min_free };
        let failing = writer::Failing::default();
        let handle = writer::spawn(ks.clone(), rx, feed, space.clone(), Arc::clone(&failing)).map_err(|e| {
            StoreError::Open { path: dir.to_owned(), cause: format!("cannot start the writer thread: {e}") }
        })?;
        Ok(Store {
            reader: Reader { ks },
            tx,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
            space: Arc::new(space),
            failing,
        })
    }

    /// Stores the results not stored yet; returns once they are durable.
    pub async fn write_results(
        &self,
        results: Vec<ProbeResult>,
        received_at: blockwatch_proto::time::Millis,
    ) -> Result<WriteOutcome, StoreError> {
        self.queue_results(results, received_at).await?.outcome().await
    }

    /// Puts `results` in the writer's queue (waiting while it is full) and returns then, with
    /// a handle to the write's outcome. Writes one task queues in turn are stored in that
    /// order, and awaiting their outcomes together lets the writer commit them together.
    /// (Awaiting several `write_results` together does not keep their order.)
    pub async fn queue_results(
        &self,
        results: Vec<ProbeResult>,
        received_at: blockwatch_proto::time::Millis,
    ) -> Result<Queued, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(writer::Request::Results { results, received_at, reply }).await.map_err(|_| StoreError::Closed)?;
        Ok(Queued(rx))
    }

    /// Whether a write now would be taken: the writer runs, its last commit succeeded, and
    /// the disk holds more than its reserve. The error says why not.
    pub fn accepting(&self) -> Result<(), StoreError> {
        if self.tx.is_closed() {
            return Err(StoreError::Closed);
        }
        if let Some(why) = self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(StoreError::Write(format!("the last commit failed: {why}")));
        }
        match self.space.short() {
            Some(free) => Err(StoreError::DiskFull { free_mib: free >> 20, reserve_mib: self.space.min_free >> 20 }),
            None => Ok(()),
        }
    }

    /// The event log, for its one writer (the detector). It does not keep the result writer
    /// alive.
    pub fn event_log(&self) -> EventLog {
        let ks = &self.reader.ks;
        EventLog {
            next: last_key(&ks.events) + 1,
            db: ks.db.clone(),
            events: ks.events.clone(),
            meta: ks.meta.clone(),
            checkpoint: ks.checkpoint.clone(),
            processed: self.reader.detector_processed().ok().flatten().unwrap_or(0),
        }
    }

    /// A read-only handle: it does not keep the writer alive, so long reads (an export over
    /// the API) never hold up shutdown.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// Stops the writer after the queued writes and flushes everything to disk.
    pub fn close(self) {
        let Store { reader: Reader { ks }, tx, writer, .. } = self;
        // Other handles may still be alive (a stream task past the shutdown deadline): the
        // writer stops on this request, not when the last handle goes, and their later writes
        // get `StoreError::Closed`.
        loop {
            match tx.try_send(writer::Request::Close) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => break,
                Err(mpsc::error::TrySendError::Full(_)) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        drop(tx);
        if let Some(h) = writer.lock().ok().and_then(|mut g| g.take()) {
            let _ = h.join();
        }
        let _ = ks.db.persist(fjall::PersistMode::SyncAll);
    }
}

impl std::ops::Deref for Store {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        &self.reader
    }
}

/// Reads of the store, safe alongside the writer; cheap to clone.
#[derive(Clone)]
pub struct Reader {
    ks: Keyspaces,
}

impl Reader {
    /// Every stored result in the order received. Blocking: call from a blocking context.
    pub fn results(&self) -> impl Iterator<Item = Result<StoredResult, StoreError>> + use<> {
        self.results_after(0)
    }

    /// Stored results after the first `after` (they are numbered from 1 as stored). Blocking.
    pub fn results_after(&self, after: u64) -> impl Iterator<Item = Result<StoredResult, StoreError>> + use<> {
        self.numbered_results_after(after).map(|r| r.map(|(_, stored)| stored))
    }

    /// As [`Reader::results_after`], each with its sequence number. Blocking.
    pub fn numbered_results_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, StoredResult), StoreError>> + use<> {
        self.ks.results.range(after.saturating_add(1).to_be_bytes()..).map(|guard| {
            let (k, v) = guard.into_inner().map_err(|e| StoreError::Read(describe(&e)))?;
            let seq = key_seq(&k);
            StoredResult::decode(&*v)
                .map(|stored| (seq, stored))
                .map_err(|source| StoreError::Corrupt { key: format!("results/{seq}"), source })
        })
    }

    /// How many results the live detector had handled when it last appended events; `None`
    /// for a store it never wrote events to. Blocking.
    pub fn detector_processed(&self) -> Result<Option<u64>, StoreError> {
        let v = self.ks.meta.get(DETECTOR_PROCESSED).map_err(|e| StoreError::Read(describe(&e)))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&*v).ok()).map(u64::from_be_bytes))
    }

    /// The detector's checkpoint: the results it covers (store order) and its bytes; `None`
    /// when there is none. A checkpoint whose chunks do not add up is reported corrupt.
    /// Blocking.
    pub fn detector_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let read = |e: fjall::Error| StoreError::Read(describe(&e));
        let Some(header) = self.ks.meta.get(DETECTOR_CHECKPOINT).map_err(read)? else { return Ok(None) };
        let Some(h) = CheckpointHeader::parse(&header) else {
            return Err(StoreError::Damaged("the detector checkpoint's header".into()));
        };
        let mut bytes = Vec::with_capacity(usize::try_from(h.len).unwrap_or(0).min(1 << 30));
        for chunk in 0..h.chunks {
            match self.ks.checkpoint.get(chunk.to_be_bytes()).map_err(read)? {
                Some(v) => bytes.extend_from_slice(&v),
                None => return Err(StoreError::Damaged(format!("the detector checkpoint's chunk {chunk}"))),
            }
        }
        if bytes.len() as u64 != h.len {
            return Err(StoreError::Damaged(format!(
                "the detector checkpoint: {} bytes, its header says {}",
                bytes.len(),
                h.len
            )));
        }
        Ok(Some((h.processed, bytes)))
    }

    /// The header of the detector's checkpoint: the results it covers and its size in bytes.
    /// Blocking.
    pub fn detector_checkpoint_header(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let v = self.ks.meta.get(DETECTOR_CHECKPOINT).map_err(|e| StoreError::Read(describe(&e)))?;
        Ok(v.and_then(|v| CheckpointHeader::parse(&v)).map(|h| (h.processed, h.len)))
    }

    /// Whether the event log is empty. Blocking.
    pub fn no_events(&self) -> Result<bool, StoreError> {
        self.ks.events.is_empty().map_err(|e| StoreError::Read(describe(&e)))
    }

    /// Every event line in the order emitted, with its sequence number. Blocking.
    pub fn events(&self) -> impl Iterator<Item = Result<(u64, String), StoreError>> + use<> {
        self.events_after(0)
    }

    /// Event lines with a sequence number above `after`, oldest first. Blocking.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = Result<(u64, String), StoreError>> + use<> {
        let from = after.saturating_add(1).to_be_bytes();
        self.ks.events.range(from..).map(|guard| {
            let (k, v) = guard.into_inner().map_err(|e| StoreError::Read(describe(&e)))?;
            Ok((key_seq(&k), String::from_utf8_lossy(&v).into_owned()))
        })
    }

    /// The sequence number of the newest event (0 when none). Blocking.
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let last = self.ks.events.last_key_value().map(|g| g.key().map(|k| key_seq(&k)));
        last.transpose().map(|s| s.unwrap_or(0)).map_err(|e| StoreError::Read(describe(&e)))
    }

    /// A notification sink's cursor: the last event it finished with. Blocking.
    pub fn sink_cursor(&self, sink: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.meta_word(format!("sink_cursor/{sink}"))?.map(u64::from_be_bytes))
    }

    /// Moves a sink's cursor. Written without a sync of its own (the next durable commit, or
    /// the journal's flush, carries it): a crash may only make the sink repeat an event.
    /// Blocking.
    pub fn set_sink_cursor(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        self.ks
            .meta
            .insert(format!("sink_cursor/{sink}"), seq.to_be_bytes())
            .map_err(|e| StoreError::Write(describe(&e)))
    }

    /// Maintenance windows added through the API: id → window JSON. Blocking.
    pub fn maintenance_windows(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ks.meta.prefix("maintenance/") {
            let (k, v) = kv.into_inner().map_err(|e| StoreError::Read(describe(&e)))?;
            let id = String::from_utf8_lossy(&k["maintenance/".len()..]).into_owned();
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// Retention: deletes the stored results received before `cutoff`, oldest first, with
    /// their dedupe entries, in batches; returns how many. The `cells` index stays (the
    /// timelines and block history read it alone; a result it names that is gone is skipped),
    /// and so do the events. The newest result always stays, so sequence numbers never go
    /// back. With `archived_before`, a result started at or after it is kept, and so is
    /// everything received after it (the archive has not taken it yet). Blocking.
    pub fn delete_results_before(
        &self,
        cutoff: blockwatch_proto::time::Millis,
        archived_before: Option<blockwatch_proto::time::Millis>,
    ) -> Result<u64, StoreError> {
        let read = |e: fjall::Error| StoreError::Read(describe(&e));
        let newest = last_key(&self.ks.results);
        let mut deleted = 0;
        // Each batch starts past the last one's deletions, not over their tombstones.
        let mut from = 0u64;
        loop {
            let mut batch = self.ks.db.batch();
            let mut n = 0;
            let mut done = true;
            for g in self.ks.results.range(from.to_be_bytes()..) {
                let (k, v) = g.into_inner().map_err(read)?;
                let seq = key_seq(&k);
                from = seq.saturating_add(1);
                if seq >= newest {
                    break;
                }
                let stored = StoredResult::decode(&*v)
                    .map_err(|source| StoreError::Corrupt { key: format!("results/{seq}"), source })?;
                let received = stored.received_at.as_ref().map_or(0, blockwatch_proto::time::from_timestamp);
                if received >= cutoff {
                    break;
                }
                let started = stored
                    .result
                    .as_ref()
                    .and_then(|r| r.started_at.as_ref())
                    .map_or(i64::MAX, blockwatch_proto::time::from_timestamp);
                if archived_before.is_some_and(|a| started >= a) {
                    break;
                }
                batch.remove(&self.ks.results, k.to_vec());
                if let Some(r) = &stored.result {
                    batch.remove(&self.ks.ids, r.probe_id.as_bytes().to_vec());
                }
                n += 1;
                if n == 10_000 {
                    done = false;
                    break;
                }
            }
            batch.commit().map_err(|e| StoreError::Write(describe(&e)))?;
            deleted += n;
            if done {
                return Ok(deleted);
            }
        }
    }

    /// The last UTC day (days since the epoch) the archive holds whole; `None` before the
    /// first. Blocking.
    pub fn archived_through(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.meta_word(ARCHIVED_THROUGH)?.map(i64::from_be_bytes))
    }

    /// Records that the archive holds every day through `day`, durably. Blocking.
    pub fn set_archived_through(&self, day: i64) -> Result<(), StoreError> {
        self.put_meta_durably(ARCHIVED_THROUGH, day.to_be_bytes())
    }

    /// How far a clustered detector has read the results stream `stream`: the stream
    /// sequence of the last message written to the store (0: none). Blocking.
    pub fn stream_mark(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.meta_word(format!("stream_mark/{stream}"))?.map_or(0, u64::from_be_bytes))
    }

    /// Moves the stream mark, after the results it covers are durable. Written without a
    /// sync of its own: a crash may only make the detector read some results again, which
    /// the store then drops as stored. Blocking.
    pub fn set_stream_mark(&self, stream: &str, seq: u64) -> Result<(), StoreError> {
        self.ks
            .meta
            .insert(format!("stream_mark/{stream}"), seq.to_be_bytes())
            .map_err(|e| StoreError::Write(describe(&e)))
    }

    /// The first UTC day the archive holds; `None` before the first roll. Blocking.
    pub fn archived_from(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.meta_word(ARCHIVED_FROM)?.map(i64::from_be_bytes))
    }

    /// Records the first day the archive holds, durably. Blocking.
    pub fn set_archived_from(&self, day: i64) -> Result<(), StoreError> {
        self.put_meta_durably(ARCHIVED_FROM, day.to_be_bytes())
    }

    /// An eight-byte `meta` value (a mark or a cursor); `None` when absent or not eight bytes.
    fn meta_word(&self, key: impl AsRef<[u8]>) -> Result<Option<[u8; 8]>, StoreError> {
        let v = self.ks.meta.get(key).map_err(|e| StoreError::Read(describe(&e)))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&*v).ok()))
    }

    /// Writes one `meta` value in a commit of its own that waits for the disk.
    fn put_meta_durably(&self, key: &[u8], value: [u8; 8]) -> Result<(), StoreError> {
        let mut batch = self.ks.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        batch.insert(&self.ks.meta, key, value);
        batch.commit().map_err(|e| StoreError::Write(describe(&e)))
    }

    /// When the newest stored result was received; `None` for a store without results.
    /// Blocking.
    pub fn newest_received(&self) -> Result<Option<i64>, StoreError> {
        match self.result_at(self.last_result_seq())? {
            Some(r) => Ok(r.received_at.as_ref().map(blockwatch_proto::time::from_timestamp)),
            None => Ok(None),
        }
    }

    /// A time no stored result started before: the oldest stored result's receipt less
    /// `max_age` (what ingest accepts); `None` for a store without results. Blocking.
    pub fn oldest_started_bound(&self, max_age: std::time::Duration) -> Result<Option<i64>, StoreError> {
        let Some(first) = self.numbered_results_after(0).next().transpose()? else { return Ok(None) };
        let received = first.1.received_at.as_ref().map_or(0, blockwatch_proto::time::from_timestamp);
        Ok(Some(received.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX))))
    }

    /// The agent registry as last saved: each agent's id and its record.
    pub fn saved_agents(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ks.meta.prefix("agent/") {
            let (k, v) = kv.into_inner().map_err(|e| StoreError::Read(describe(&e)))?;
            out.push((String::from_utf8_lossy(&k["agent/".len()..]).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Saves agents' records; `durable` waits for the disk. Blocking.
    pub fn save_agents(&self, agents: &[(String, Vec<u8>)], durable: bool) -> Result<(), StoreError> {
        let mut batch = self.ks.db.batch();
        if durable {
            batch = batch.durability(Some(fjall::PersistMode::SyncAll));
        }
        for (id, record) in agents {
            batch.insert(&self.ks.meta, format!("agent/{id}"), record.as_slice());
        }
        batch.commit().map_err(|e| StoreError::Write(describe(&e)))
    }

    /// Records a maintenance window (durably: the API answers only once it is kept). Blocking.
    pub fn put_maintenance(&self, id: &str, window: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.ks.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        batch.insert(&self.ks.meta, format!("maintenance/{id}"), window);
        batch.commit().map_err(|e| StoreError::Write(describe(&e)))
    }

    /// Removes a maintenance window. Blocking.
    pub fn delete_maintenance(&self, id: &str) -> Result<(), StoreError> {
        let mut batch = self.ks.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        batch.remove(&self.ks.meta, format!("maintenance/{id}"));
        batch.commit().map_err(|e| StoreError::Write(describe(&e)))
    }

    /// The sequence number a probe id was stored under. Blocking.
    pub fn seq_of(&self, probe_id: &str) -> Result<Option<u64>, StoreError> {
        let v = self.ks.ids.get(probe_id).map_err(|e| StoreError::Read(describe(&e)))?;
        Ok(v.map(|v| key_seq(&v)))
    }

    /// The sequence number of the newest stored result (0: none). Blocking.
    pub fn last_result_seq(&self) -> u64 {
        last_key(&self.ks.results)
    }

    /// One stored result by its sequence number. Blocking.
    pub fn result_at(&self, seq: u64) -> Result<Option<StoredResult>, StoreError> {
        let Some(v) = self.ks.results.get(seq.to_be_bytes()).map_err(|e| StoreError::Read(describe(&e)))? else {
            return Ok(None);
        };
        StoredResult::decode(&*v)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { key: format!("results/{seq}"), source })
    }

    /// The index entries of `target` (in `region`, or every region) started in `[from, to)`:
    /// `f(region, started_at, seq, outcome)` for each, by region, then time, then seq, until it
    /// returns false. Reads only the index. Blocking.
    pub fn cell_entries(
        &self,
        target: &str,
        region: Option<&str>,
        from: i64,
        to: i64,
        mut f: impl FnMut(&str, i64, u64, i32) -> bool,
    ) -> Result<(), StoreError> {
        let read = |e: fjall::Error| StoreError::Read(describe(&e));
        let mut region_now = match region {
            Some(r) => Some(r.to_owned()),
            None => self.first_region(target)?,
        };
        let mut target_prefix = target.as_bytes().to_vec();
        target_prefix.push(0);
        loop {
            // Without a region: find the next region of the target, skipping past each.
            let r = match &region_now {
                Some(r) => r.clone(),
                None => return Ok(()),
            };
            let lo = cell_key(target, &r, from, 0);
            let hi = cell_key(target, &r, to, 0);
            for g in self.ks.cells.range(lo..hi) {
                let (k, v) = g.into_inner().map_err(read)?;
                let Some((at, seq)) = parse_cell_key(&k) else { continue };
                if !f(&r, at, seq, v.first().copied().map_or(0, i32::from)) {
                    return Ok(());
                }
            }
            if region.is_some() {
                return Ok(());
            }
            // The next region after `r`: the first key past `target\0r\0…`.
            let mut past = target_prefix.clone();
            past.extend_from_slice(r.as_bytes());
            past.push(1);
            region_now = match self.ks.cells.range(past..).next() {
                Some(g) => {
                    let k = g.key().map_err(read)?;
                    if !k.starts_with(&target_prefix) {
                        None
                    } else {
                        let rest = &k[target_prefix.len()..];
                        rest.iter().position(|b| *b == 0).map(|end| String::from_utf8_lossy(&rest[..end]).into_owned())
                    }
                }
                None => None,
            };
            if region_now.is_none() {
                return Ok(());
            }
        }
    }

    /// Every target the index holds, in order (a skip from one to the next). Blocking.
    pub fn targets(&self) -> Result<Vec<String>, StoreError> {
        let read = |e: fjall::Error| StoreError::Read(describe(&e));
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(g) = self.ks.cells.range(from.clone()..).next() {
            let k = g.key().map_err(read)?;
            let Some(end) = k.iter().position(|b| *b == 0) else { break };
            out.push(String::from_utf8_lossy(&k[..end]).into_owned());
            // Past every key of this target: `target \x01`.
            from = k[..end].to_vec();
            from.push(1);
        }
        Ok(out)
    }

    /// The first region of `target` in the index, to start a scan across regions.
    pub fn first_region(&self, target: &str) -> Result<Option<String>, StoreError> {
        let mut prefix = target.as_bytes().to_vec();
        prefix.push(0);
        match self.ks.cells.prefix(&prefix).next() {
            Some(g) => {
                let k = g.key().map_err(|e| StoreError::Read(describe(&e)))?;
                let rest = &k[prefix.len()..];
                Ok(rest.iter().position(|b| *b == 0).map(|end| String::from_utf8_lossy(&rest[..end]).into_owned()))
            }
            None => Ok(None),
        }
    }

    /// Number of stored results. Blocking.
    pub fn result_count(&self) -> Result<usize, StoreError> {
        self.ks.results.len().map_err(|e| StoreError::Read(describe(&e)))
    }
}

/// The detector checkpoint's header in `meta`: results covered, length, chunk count.
struct CheckpointHeader {
    processed: u64,
    len: u64,
    chunks: u32,
}

impl CheckpointHeader {
    fn parse(v: &[u8]) -> Option<CheckpointHeader> {
        let v: &[u8; 20] = v.try_into().ok()?;
        Some(CheckpointHeader {
            processed: u64::from_be_bytes(v[..8].try_into().ok()?),
            len: u64::from_be_bytes(v[8..16].try_into().ok()?),
            chunks: u32::from_be_bytes(v[16..].try_into().ok()?),
        })
    }

    fn bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.processed.to_be_bytes());
        out[8..16].copy_from_slice(&self.len.to_be_bytes());
        out[16..].copy_from_slice(&self.chunks.to_be_bytes());
        out
    }
}

/// Appends detector events; one writer, so it numbers them itself.
pub struct EventLog {
    db: Database,
    events: Keyspace,
    meta: Keyspace,
    checkpoint: Keyspace,
    next: u64,
    processed: u64,
}

impl EventLog {
    /// Appends event lines; returns once they are durable. Blocking. `processed` is how many
    /// results the detector has handled with these events, recorded in the same commit (the
    /// collector's own events pass `None` and keep the last figure).
    pub fn append(&mut self, lines: &[String], processed: Option<u64>) -> Result<(), StoreError> {
        let processed = processed.unwrap_or(self.processed).max(self.processed);
        let mut batch = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (i, line) in lines.iter().enumerate() {
            batch.insert(&self.events, (self.next + i as u64).to_be_bytes(), line.as_bytes());
        }
        batch.insert(&self.meta, DETECTOR_PROCESSED, processed.to_be_bytes());
        batch.commit().map_err(|e| StoreError::Write(describe(&e)))?;
        self.next += lines.len() as u64;
        self.processed = processed;
        Ok(())
    }

    /// Replaces the detector's checkpoint with `state`, its state after the first `processed`
    /// results, and moves the `detector_processed` mark to it: one durable commit, so a
    /// restart sees the old checkpoint or the new one whole, and never a mark behind it.
    /// Blocking.
    pub fn checkpoint(&mut self, processed: u64, state: &[u8]) -> Result<(), StoreError> {
        let write = |e: fjall::Error| StoreError::Write(describe(&e));
        let old = match self.meta.get(DETECTOR_CHECKPOINT).map_err(write)? {
            Some(v) => CheckpointHeader::parse(&v).map_or(0, |h| h.chunks),
            None => 0,
        };
        let chunks = state.chunks(CHECKPOINT_CHUNK);
        let header = CheckpointHeader { processed, len: state.len() as u64, chunks: chunks.len() as u32 };
        let mut batch = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (i, chunk) in chunks.enumerate() {
            batch.insert(&self.checkpoint, (i as u32).to_be_bytes(), chunk);
        }
        for stale in header.chunks..old {
            batch.remove(&self.checkpoint, stale.to_be_bytes());
        }
        batch.insert(&self.meta, DETECTOR_CHECKPOINT, header.bytes());
        let processed = processed.max(self.processed);
        batch.insert(&self.meta, DETECTOR_PROCESSED, processed.to_be_bytes());
        batch.commit().map_err(write)?;
        self.processed = processed;
        Ok(())
    }
}

/// `target \0 region \0 started_at seq`: results of one cell in time order. The ids obey the
/// id rule, which has no NUL; the time is offset so that negative times sort first.
pub(crate) fn cell_key(target: &str, region: &str, started_at: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + region.len() + 18);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(region.as_bytes());
    k.push(0);
    k.extend_from_slice(&((started_at as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn parse_cell_key(k: &[u8]) -> Option<(i64, u64)> {
    let tail = k.get(k.len().checked_sub(16)?..)?;
    let at = u64::from_be_bytes(tail[..8].try_into().ok()?) ^ (1 << 63);
    Some((at as i64, u64::from_be_bytes(tail[8..].try_into().ok()?)))
}

/// The index entry of a stored result.
pub(crate) fn cell_entry(seq: u64, r: &ProbeResult) -> Option<(Vec<u8>, [u8; 1])> {
    let at = blockwatch_proto::time::from_timestamp(r.started_at.as_ref()?);
    Some((cell_key(&r.target_id, &r.region, at, seq), [u8::try_from(r.outcome).unwrap_or(0)]))
}

const CELLS_INDEXED: &[u8] = b"cells_index_v1";

/// Indexes the results a store held before it had the index (once, at open).
fn index_existing(ks: &Keyspaces) -> Result<(), fjall::Error> {
    if ks.meta.get(CELLS_INDEXED)?.is_some() {
        return Ok(());
    }
    let total = last_key(&ks.results);
    if total > 0 {
        tracing::info!(results = total, "indexing the stored results by target, region and time (once)");
    }
    let mut batch = ks.db.batch();
    let mut n = 0;
    for g in ks.results.iter() {
        let (k, v) = g.into_inner()?;
        let Ok(stored) = StoredResult::decode(&*v) else { continue };
        if let Some((key, val)) = stored.result.as_ref().and_then(|r| cell_entry(key_seq(&k), r)) {
            batch.insert(&ks.cells, key, val);
            n += 1;
        }
        if n % 100_000 == 0 && n > 0 {
            batch.commit()?;
            batch = ks.db.batch();
        }
    }
    batch.commit()?;
    let mut done = ks.db.batch().durability(Some(fjall::PersistMode::SyncAll));
    done.insert(&ks.meta, CELLS_INDEXED, [1]);
    done.commit()
}

fn last_key(ks: &Keyspace) -> u64 {
    ks.last_key_value().and_then(|g| g.key().ok()).map_or(0, |k| key_seq(&k))
}

fn key_seq(k: &[u8]) -> u64 {
    k.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
