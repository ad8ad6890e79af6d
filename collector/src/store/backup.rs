//! Online backup and restore. A backup is a consistent snapshot of every keyspace (one
//! instant across all of them, taken while ingest goes on) copied into a new store in its own
//! directory, made durable, and then marked complete by a manifest written last: a directory
//! without the manifest is an interrupted backup and is never restored. A backup is itself a
//! store; restore copies it (verifying every keyspace's count and the last result against the
//! manifest) into a directory beside the target, renamed into place only once whole.
//!
//! A backup never eats into the disk reserve (`limits.min_free_disk_mb`): it does not start
//! unless the store's size fits above the reserve, it stops as soon as free space falls to the
//! reserve, and a backup that fails removes what it wrote.

use std::path::Path;

use fjall::{PersistMode, Readable};
use serde::{Deserialize, Serialize};

use super::{Keyspaces, Reader, SCAN_CACHE_BYTES, StoreError, describe, key_seq};

/// The file that marks a complete backup.
pub const BACKUP_MANIFEST: &str = "blockwatch-backup.json";
/// Entries per write batch of the copy.
const COPY_BATCH: usize = 4096;

/// What a backup holds, as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The blockwatch version that wrote it.
    pub version: String,
    /// When the snapshot was taken (RFC 3339).
    pub taken_at: String,
    /// The sequence number of the last result in it (0: none).
    pub last_result: u64,
    /// Entries per keyspace.
    pub entries: std::collections::BTreeMap<String, u64>,
}

impl Reader {
    /// Backs the store up into `to`, which must not exist or be empty, while it keeps
    /// taking writes: everything committed before the snapshot, nothing after. `reserve`
    /// bytes are kept free on `to`'s filesystem (`store_bytes`, the store's size on disk, must
    /// fit above them to start); a backup that fails removes what it wrote. Blocking.
    /// `cancel` set ends it within one batch, as a failure.
    pub fn backup(
        &self,
        to: &Path,
        store_bytes: u64,
        reserve: u64,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Backup, StoreError> {
        empty_dir(to)?;
        let needed = super::writer::Space { dir: to.to_owned(), min_free: reserve.saturating_add(store_bytes) };
        if let Some(free) = needed.short() {
            let _ = std::fs::remove_dir(to);
            return Err(StoreError::Write(format!(
                "{}: {} MiB free, the store takes {} MiB and {} MiB are kept in reserve",
                to.display(),
                free >> 20,
                store_bytes >> 20,
                reserve >> 20
            )));
        }
        let done = (|| {
            let dst = Keyspaces::open(to, SCAN_CACHE_BYTES)?;
            let snapshot = self.ks.db.snapshot();
            let taken_at = blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now());
            let reserve = super::writer::Space { dir: to.to_owned(), min_free: reserve };
            let entries = copy(&self.ks, &snapshot, &dst, Some(&reserve), Some(cancel))?;
            let last_result = last_result(&snapshot, &self.ks);
            let backup = Backup { version: env!("CARGO_PKG_VERSION").into(), taken_at, last_result, entries };
            drop(dst);
            write_manifest(to, &backup)?;
            Ok(backup)
        })();
        if done.is_err() {
            let _ = std::fs::remove_dir_all(to);
        }
        done
    }
}

fn last_result(snapshot: &fjall::Snapshot, ks: &Keyspaces) -> u64 {
    snapshot.last_key_value(&ks.results).and_then(|g| g.key().ok()).map_or(0, |k| key_seq(&k))
}

/// Restores the backup in `from` into `to` (which must not exist or be empty), checking it
/// is complete and that every keyspace copied, and its last result, match its manifest. The
/// collector must not be running on `to`. Blocking.
pub fn restore(from: &Path, to: &Path) -> Result<Backup, StoreError> {
    let manifest = from.join(BACKUP_MANIFEST);
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| StoreError::Damaged(format!("{}: not a complete backup ({e})", from.display())))?;
    let backup: Backup =
        serde_json::from_str(&text).map_err(|e| StoreError::Damaged(format!("{}: {e}", manifest.display())))?;
    empty_dir(to)?;
    // Written beside the target and renamed into place once whole: a restore that fails or
    // is interrupted never leaves a partial store where a collector would start on it.
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "store".into());
    let staging = to.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let copied = (|| {
        let src = Keyspaces::open(from, SCAN_CACHE_BYTES)?;
        let dst = Keyspaces::open(&staging, SCAN_CACHE_BYTES)?;
        let snapshot = src.db.snapshot();
        let entries = copy(&src, &snapshot, &dst, None, None)?;
        let last = last_result(&snapshot, &src);
        if entries != backup.entries || last != backup.last_result {
            return Err(StoreError::Damaged(format!(
                "backup {}: holds {entries:?} up to result {last}, its manifest says {:?} up to result {}",
                from.display(),
                backup.entries,
                backup.last_result
            )));
        }
        Ok(())
    })();
    let placed = copied.and_then(|()| {
        let io = |e: std::io::Error| StoreError::Write(format!("{}: {e}", to.display()));
        std::fs::remove_dir(to).map_err(io)?;
        std::fs::rename(&staging, to).map_err(io)?;
        let parent = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io)
    });
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    placed.map(|()| backup)
}

/// Refuses a directory that holds anything; creates a missing one.
fn empty_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Write(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    if std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(StoreError::Write(format!("{} is not empty", dir.display())));
    }
    Ok(())
}

/// Copies every keyspace as `snapshot` sees it into `dst`, durably, stopping when `reserve`
/// says the disk is at its reserve. Returns the entries per keyspace.
fn copy(
    src: &Keyspaces,
    snapshot: &fjall::Snapshot,
    dst: &Keyspaces,
    reserve: Option<&super::writer::Space>,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    let read = |e: fjall::Error| StoreError::Read(describe(&e));
    let write = |e: fjall::Error| StoreError::Write(describe(&e));
    let mut counts = std::collections::BTreeMap::new();
    for ((name, from), (_, to)) in src.named().into_iter().zip(dst.named()) {
        let mut n = 0u64;
        let mut batch = dst.db.batch();
        let mut in_batch = 0;
        for g in snapshot.iter(from) {
            let (k, v) = g.into_inner().map_err(read)?;
            batch.insert(to, k, v);
            n += 1;
            in_batch += 1;
            if in_batch == COPY_BATCH {
                if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
                    return Err(StoreError::Write("cancelled: the collector is stopping".into()));
                }
                if let Some(free) = reserve.and_then(super::writer::Space::short) {
                    let reserve_mib = reserve.map_or(0, |r| r.min_free >> 20);
                    return Err(StoreError::DiskFull { free_mib: free >> 20, reserve_mib });
                }
                batch.commit().map_err(write)?;
                batch = dst.db.batch();
                in_batch = 0;
            }
        }
        batch.commit().map_err(write)?;
        counts.insert(name.to_string(), n);
    }
    dst.db.persist(PersistMode::SyncAll).map_err(write)?;
    Ok(counts)
}

/// Writes the manifest through a temporary file and a rename, then syncs the directory: it
/// appears whole or not at all.
fn write_manifest(dir: &Path, backup: &Backup) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Write(format!("{}: {e}", dir.display()));
    let tmp = dir.join(format!("{BACKUP_MANIFEST}.tmp"));
    let text = serde_json::to_string_pretty(backup).map_err(|e| StoreError::Write(e.to_string()))? + "\n";
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, dir.join(BACKUP_MANIFEST)).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}
