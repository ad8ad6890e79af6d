//! Online backup and restore. A backup is a consistent snapshot of every keyspace (one
//! instant across all of them, taken while ingest goes on) copied into a new store in its own
//! directory, made durable, and then marked complete by a manifest written last: a directory
//! without the manifest is an interrupted backup and is never restored. A backup is itself a
//! store; restore copies it (verifying every keyspace's count against the manifest) into an
//! empty data directory.

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
    /// taking writes: everything committed before the snapshot, nothing after. Blocking.
    pub fn backup(&self, to: &Path) -> Result<Backup, StoreError> {
        empty_dir(to)?;
        let dst = Keyspaces::open(to, SCAN_CACHE_BYTES)?;
        let snapshot = self.ks.db.snapshot();
        let taken_at = blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now());
        let entries = copy(&self.ks, &snapshot, &dst)?;
        let last_result =
            snapshot.last_key_value(&self.ks.results).and_then(|g| g.key().ok()).map_or(0, |k| key_seq(&k));
        let backup = Backup { version: env!("CARGO_PKG_VERSION").into(), taken_at, last_result, entries };
        drop(dst);
        write_manifest(to, &backup)?;
        Ok(backup)
    }
}

/// Restores the backup in `from` into `to` (which must not exist or be empty), checking it
/// is complete and that every keyspace copied matches its manifest. The collector must not
/// be running on `to`. Blocking.
pub fn restore(from: &Path, to: &Path) -> Result<Backup, StoreError> {
    let manifest = from.join(BACKUP_MANIFEST);
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| StoreError::Damaged(format!("{}: not a complete backup ({e})", from.display())))?;
    let backup: Backup =
        serde_json::from_str(&text).map_err(|e| StoreError::Damaged(format!("{}: {e}", manifest.display())))?;
    empty_dir(to)?;
    let src = Keyspaces::open(from, SCAN_CACHE_BYTES)?;
    let dst = Keyspaces::open(to, SCAN_CACHE_BYTES)?;
    let entries = copy(&src, &src.db.snapshot(), &dst)?;
    if entries != backup.entries {
        return Err(StoreError::Damaged(format!(
            "backup {}: holds {entries:?}, its manifest says {:?}",
            from.display(),
            backup.entries
        )));
    }
    Ok(backup)
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

/// Copies every keyspace as `snapshot` sees it into `dst`, durably. Returns the entries per
/// keyspace.
fn copy(
    src: &Keyspaces,
    snapshot: &fjall::Snapshot,
    dst: &Keyspaces,
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
