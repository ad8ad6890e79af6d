//! The agent's spool: every result is written here (fsync'd) before it is sent, and removed
//! only when the collector acknowledges it as durable. On redb.
//!
//! Group commit: a finished probe only *stages* its result (a sequence number, the encoded
//! bytes, in memory); staged results are committed together, in one transaction and one
//! fsync, before anything is read for sending (`pending` commits first) and at the latest
//! `LINGER` after the first of them was staged (`flusher`). So durability before the send
//! stays, and a crash of the agent loses at most the last `LINGER` of finished probes, as it
//! loses the probes still running. Removing acknowledged results is a non-durable commit: a
//! crash that undoes one only makes the agent send those results again, and the collector
//! answers a re-sent probe id as a duplicate.
//!
//! Tables:
//! - `pending`: sequence number → `ProbeResult` (protobuf), oldest first.
//! - `meta`: `next_seq`, `epoch`, `dropped_total` and the running byte count.
//!
//! The spool is bounded: when the pending results exceed `max_bytes`, the oldest are dropped,
//! counted in `dropped_total`, and logged; the uplink reports drops to the collector.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blockwatch_proto::v1::ProbeResult;
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// redb's page cache. The spool is written once and read once per result, so a large cache
/// buys nothing and would count against the agent's footprint.
const SPOOL_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Longest a staged result waits for its commit when nothing reads the spool sooner (the
/// uplink reads it a second after a fresh result, `uplink::BATCH_LINGER`, when connected).
pub const LINGER: Duration = Duration::from_secs(2);

/// A spool failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}")]
    Db { path: PathBuf, source: redb::Error },
    #[error("spool {path}: record {seq} is corrupt")]
    Corrupt { path: PathBuf, seq: u64, source: prost::DecodeError },
}

/// Counters of a spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Results waiting for an ack.
    pub pending: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// Results dropped because the spool was full, since it was created.
    pub dropped_total: u64,
    /// Sequence numbers of the last drop (first, last), when any.
    pub last_drop: Option<(u64, u64)>,
}

/// Store-and-forward queue of results.
///
/// Staging (from async code) takes `staged` only to push. Writers (commit, remove: blocking
/// tasks) take `writer` for their whole transaction, commit and fsync included, which keeps
/// counters in commit order. Readers of the counters (the uplink, from async code) never wait
/// on a disk: the counters are published after each commit, `stats` locked only to copy them.
pub struct Spool {
    db: Database,
    path: PathBuf,
    max_bytes: u64,
    epoch: u64,
    /// Held across each write transaction.
    writer: Mutex<()>,
    /// Results staged for the next commit, and the next sequence number to hand out.
    staged: Mutex<Staged>,
    /// Signalled when a result is staged (the flusher waits on it).
    staged_signal: tokio::sync::Notify,
    /// The newest sequence number handed out (0 when none).
    last_seq: AtomicU64,
    stats: Mutex<SpoolStats>,
    /// The last spool error, until a commit succeeds again (readiness).
    failing: Mutex<Option<String>>,
}

#[derive(Default)]
struct Staged {
    next_seq: u64,
    rows: Vec<(u64, Vec<u8>)>,
}

impl Spool {
    /// Opens or creates the spool file `dir/spool.redb`, bounded to `max_bytes` of results.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let path = dir.join("spool.redb");
        let err = |e: redb::Error| SpoolError::Db { path: path.clone(), source: e };
        std::fs::create_dir_all(dir).map_err(|e| err(redb::Error::Io(e)))?;
        let db = Database::builder().set_cache_size(SPOOL_CACHE_BYTES).create(&path).map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        let (next_seq, epoch, stats) = {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let pending = txn.open_table(PENDING).map_err(|e| err(e.into()))?;
            fn get(meta: &redb::Table<&str, u64>, k: &str) -> Result<Option<u64>, redb::Error> {
                Ok(meta.get(k)?.map(|v| v.value()))
            }
            let epoch = match get(&meta, "epoch").map_err(err)? {
                Some(e) => e,
                None => {
                    // A fresh spool gets a random epoch so its sequence numbers never collide
                    // with those of an earlier spool of the same agent.
                    let e = fastrand::u64(1..u64::from(u32::MAX));
                    meta.insert("epoch", e).map_err(|e| err(e.into()))?;
                    e
                }
            };
            let next_seq = get(&meta, "next_seq").map_err(err)?.unwrap_or(1);
            let stats = SpoolStats {
                pending: pending.len().map_err(|e| err(e.into()))?,
                bytes: get(&meta, "bytes").map_err(err)?.unwrap_or(0),
                dropped_total: get(&meta, "dropped_total").map_err(err)?.unwrap_or(0),
                last_drop: None,
            };
            (next_seq, epoch, stats)
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Spool {
            db,
            path,
            max_bytes,
            epoch,
            writer: Mutex::new(()),
            staged: Mutex::new(Staged { next_seq, rows: Vec::new() }),
            staged_signal: tokio::sync::Notify::new(),
            last_seq: AtomicU64::new(next_seq - 1),
            stats: Mutex::new(stats),
            failing: Mutex::new(None),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> SpoolError {
        let e = SpoolError::Db { path: self.path.clone(), source: e.into() };
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = Some(blockwatch_proto::error::chain(&e));
        e
    }

    /// Whether the spool takes results: the last error, if no commit has succeeded since.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The spool's epoch, part of every probe id it hands out.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequence number of the newest result ever appended (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Current counters, as of the last commit. Never waits on a write in progress.
    pub fn stats(&self) -> SpoolStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, stats: SpoolStats) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// Gives `result` the next sequence number and probe id (`AGENT/EPOCH/SEQ`) and stages
    /// it for the next commit. Returns the sequence number. Never blocks on the disk.
    pub fn stage(&self, agent_id: &str, result: &mut ProbeResult) -> u64 {
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        let seq = staged.next_seq;
        staged.next_seq += 1;
        result.seq = seq;
        result.probe_id = format!("{agent_id}/{:x}/{seq}", self.epoch);
        staged.rows.push((seq, result.encode_to_vec()));
        self.last_seq.store(seq, Ordering::Release);
        drop(staged);
        self.staged_signal.notify_one();
        seq
    }

    /// Stages `result` and commits it (with whatever else is staged). Returns the sequence
    /// number. Blocking (fsync).
    pub fn append(&self, agent_id: &str, result: &mut ProbeResult) -> Result<u64, SpoolError> {
        let seq = self.stage(agent_id, result);
        self.commit()?;
        Ok(seq)
    }

    /// Results staged and not yet committed.
    pub fn staged(&self) -> usize {
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).rows.len()
    }

    /// Commits every staged result in one durable transaction, and drops the oldest results
    /// if the spool is over its bound. Returns how many were committed; with none staged it
    /// writes nothing. Staged results whose commit fails are lost (and the error says so).
    /// Blocking (fsync).
    pub fn commit(&self) -> Result<usize, SpoolError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let rows = std::mem::take(&mut self.staged.lock().unwrap_or_else(|p| p.into_inner()).rows);
        let Some(&(last, _)) = rows.last() else { return Ok(0) };
        let n = rows.len();
        let mut stats = self.stats();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            for (seq, bytes) in &rows {
                pending.insert(*seq, bytes.as_slice()).map_err(|e| self.err(e))?;
                stats.pending += 1;
                stats.bytes += bytes.len() as u64;
            }
            let mut dropped = None::<(u64, u64)>;
            while stats.bytes > self.max_bytes && stats.pending > 1 {
                let Some((k, v)) = pending.pop_first().map_err(|e| self.err(e))? else { break };
                let (k, len) = (k.value(), v.value().len() as u64);
                stats.pending -= 1;
                stats.bytes = stats.bytes.saturating_sub(len);
                stats.dropped_total += 1;
                dropped = Some(dropped.map_or((k, k), |(f, _)| (f, k)));
            }
            if let Some((first, last)) = dropped {
                tracing::warn!(
                    first_seq = first,
                    last_seq = last,
                    dropped_total = stats.dropped_total,
                    max_bytes = self.max_bytes,
                    "spool full: dropped the oldest results"
                );
                stats.last_drop = Some((first, last));
            }
            meta.insert("next_seq", last + 1).map_err(|e| self.err(e))?;
            meta.insert("bytes", stats.bytes).map_err(|e| self.err(e))?;
            meta.insert("dropped_total", stats.dropped_total).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.publish(stats);
        Ok(n)
    }

    /// Makes every earlier commit durable (the non-durable removals included): what a
    /// graceful shutdown ends with. Blocking (fsync).
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.commit()?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` pending results not in `skip`: the oldest first, except that up to
    /// `fresh` of the newest are taken too, so a backlog does not hold back fresh results.
    /// Staged results are committed first: nothing is read for sending before it is durable.
    /// Blocking (fsync, when results are staged).
    pub fn pending(
        &self,
        limit: usize,
        fresh: usize,
        skip: &std::collections::HashSet<u64>,
    ) -> Result<Vec<ProbeResult>, SpoolError> {
        self.commit()?;
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(PENDING).map_err(|e| self.err(e))?;
        let mut out: Vec<ProbeResult> = Vec::with_capacity(limit);
        let mut taken = std::collections::HashSet::new();
        let mut take = |k: u64, v: &[u8], out: &mut Vec<ProbeResult>| -> Result<(), SpoolError> {
            if skip.contains(&k) || !taken.insert(k) {
                return Ok(());
            }
            let r = ProbeResult::decode(v).map_err(|source| SpoolError::Corrupt {
                path: self.path.clone(),
                seq: k,
                source,
            })?;
            out.push(r);
            Ok(())
        };
        for item in table.iter().map_err(|e| self.err(e))?.rev() {
            if out.len() >= fresh.min(limit) {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            take(k.value(), v.value(), &mut out)?;
        }
        for item in table.iter().map_err(|e| self.err(e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            take(k.value(), v.value(), &mut out)?;
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// Removes acknowledged results, in a non-durable commit (the next durable one persists
    /// it; a crash before that only brings those results back to be sent again, and the
    /// collector answers them as duplicates). Blocking (no fsync).
    pub fn remove(&self, seqs: &[u64]) -> Result<(), SpoolError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = self.stats();
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::None).map_err(|e| self.err(e))?;
        {
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            for &seq in seqs {
                if let Some(v) = pending.remove(seq).map_err(|e| self.err(e))? {
                    stats.pending -= 1;
                    stats.bytes = stats.bytes.saturating_sub(v.value().len() as u64);
                }
            }
            meta.insert("bytes", stats.bytes).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.publish(stats);
        Ok(())
    }
}

/// Commits staged results at most `linger` after the first of them was staged, until
/// `stop`: the backstop for when nothing reads the spool sooner (no collector, a paused
/// uplink). Commit failures are logged; the results they held are lost.
pub async fn flusher(spool: std::sync::Arc<Spool>, linger: Duration, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = spool.staged_signal.notified() => {}
            _ = &mut stop => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = &mut stop => return,
        }
        let s = std::sync::Arc::clone(&spool);
        match tokio::task::spawn_blocking(move || s.commit()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %blockwatch_proto::error::chain(&e), "could not commit staged results to the spool; they are lost")
            }
            Err(e) => tracing::error!(error = %e, "spool commit task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn result(target: &str) -> ProbeResult {
        ProbeResult { agent_id: "a1".into(), target_id: target.into(), detail: "x".repeat(100), ..Default::default() }
    }

    #[test]
    fn append_pending_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let mut seqs = Vec::new();
        for _ in 0..5 {
            seqs.push(spool.append("a1", &mut result("t")).unwrap());
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        let got = spool.pending(3, 0, &HashSet::new()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[0].probe_id, format!("a1/{:x}/1", spool.epoch()));
        let got = spool.pending(3, 1, &HashSet::from([1])).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 5]);
        spool.remove(&[1, 2]).unwrap();
        let epoch = spool.epoch();
        drop(spool);

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.epoch(), epoch);
        assert_eq!(spool.stats().pending, 3);
        assert_eq!(spool.append("a1", &mut result("t")).unwrap(), 6);
        let got = spool.pending(10, 0, &HashSet::new()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
    }

    /// Counters are read without waiting for a write in progress (its commit and fsync).
    #[test]
    fn counters_are_read_while_a_write_is_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append("a1", &mut result("t")).unwrap();
        let writing = spool.writer.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send((spool.stats().pending, spool.last_seq())).unwrap());
            let got = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("counters read during a write");
            assert_eq!(got, (1, 1));
            drop(writing);
        });
    }

    /// Staged results are committed together, before anything reads them for sending.
    #[test]
    fn staged_results_are_committed_as_a_group_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let seqs: Vec<u64> = (0..3).map(|_| spool.stage("a1", &mut result("t"))).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!((spool.staged(), spool.stats().pending, spool.last_seq()), (3, 0, 3));
        // Reading for a send commits first.
        let got = spool.pending(10, 0, &HashSet::new()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((spool.staged(), spool.stats().pending), (0, 3));
        assert_eq!(spool.commit().unwrap(), 0, "nothing left to commit");
        spool.stage("a1", &mut result("t"));
        spool.stage("a1", &mut result("t"));
        assert_eq!(spool.commit().unwrap(), 2);
        spool.remove(&[1, 2]).unwrap();
        spool.sync().unwrap();
        // Staged and never committed: gone with the process, their numbers handed out again
        // (nothing was sent under them).
        spool.stage("a1", &mut result("lost"));
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let got = spool.pending(10, 0, &HashSet::new()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(spool.stats().bytes, got.iter().map(|r| r.encoded_len() as u64).sum::<u64>());
        assert_eq!(spool.stage("a1", &mut result("t")), 6);
    }

    /// The flusher commits what is staged within its linger, with no reader.
    #[tokio::test]
    async fn the_flusher_commits_staged_results_within_its_linger() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(flusher(std::sync::Arc::clone(&spool), Duration::from_millis(50), async {
            let _ = stop_rx.await;
        }));
        for _ in 0..4 {
            spool.stage("a1", &mut result("t"));
        }
        let t = std::time::Instant::now();
        while spool.stats().pending < 4 {
            assert!(t.elapsed() < Duration::from_secs(10), "not committed: {:?}", spool.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(spool.staged(), 0);
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let one = result("t").encoded_len() as u64 + 20;
        let spool = Spool::open(dir.path(), one * 3).unwrap();
        for _ in 0..10 {
            spool.append("a1", &mut result("t")).unwrap();
        }
        let stats = spool.stats();
        assert!(stats.pending <= 3, "{stats:?}");
        assert_eq!(stats.pending + stats.dropped_total, 10);
        let got = spool.pending(10, 0, &HashSet::new()).unwrap();
        assert_eq!(got.last().unwrap().seq, 10);
        drop(spool);
        let spool = Spool::open(dir.path(), one * 3).unwrap();
        assert_eq!(spool.stats().dropped_total, stats.dropped_total);
    }
}
