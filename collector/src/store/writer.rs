//! The store's single writer: dedupe check, batch write, fsync, answer, then hand the newly
//! stored results to the feed (the detector) in exactly the order they were stored.

use std::collections::HashSet;

use blockwatch_proto::time::{Millis, to_timestamp};
use blockwatch_proto::v1::{ProbeResult, StoredResult};
use fjall::PersistMode;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::{Keyspaces, StoreError};

/// Most queued requests folded into one commit (one fsync): all the queue holds.
const MAX_GROUP: usize = super::WRITE_QUEUE;

pub(crate) enum Request {
    Results {
        results: Vec<ProbeResult>,
        received_at: Millis,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
    /// Finish what is queued before this and stop, however many handles remain.
    Close,
}

/// Where committed results go, in store order. Blocking when full: a detector that falls
/// behind slows ingest rather than losing results.
pub type Feed = std::sync::mpsc::SyncSender<Vec<StoredResult>>;

/// What a durable write did.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// How many results this write stored (they go to the feed, in store order).
    pub stored: usize,
    /// Results that were already stored (re-sends), by probe id.
    pub duplicates: Vec<String>,
}

/// The last commit's failure, until a commit succeeds again (readiness).
pub(super) type Failing = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// The free space the writer keeps on the store's filesystem.
#[derive(Clone)]
pub(super) struct Space {
    pub dir: std::path::PathBuf,
    /// Bytes; 0: no check.
    pub min_free: u64,
}

/// How often a refusal for lack of space is logged, at most.
const DISK_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Space {
    /// `Some(free bytes)` when less than the reserve is free. A filesystem that cannot be
    /// asked passes.
    pub(super) fn short(&self) -> Option<u64> {
        if self.min_free == 0 {
            return None;
        }
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        (free < self.min_free).then_some(free)
    }
}

pub(super) fn spawn(
    ks: Keyspaces,
    rx: mpsc::Receiver<Request>,
    feed: Option<Feed>,
    space: Space,
    failing: Failing,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("store-writer".into()).spawn(move || run(ks, rx, feed, space, failing))
}

fn run(ks: Keyspaces, mut rx: mpsc::Receiver<Request>, mut feed: Option<Feed>, space: Space, failing: Failing) {
    let mut disk_logged: Option<std::time::Instant> = None;
    let mut next_result = super::last_key(&ks.results) + 1;
    // Receive times never go backwards in store order, so replaying the store in order gives
    // the detector exactly what it saw live.
    let mut last_received: Millis = ks
        .results
        .last_key_value()
        .and_then(|g| g.value().ok())
        .and_then(|v| StoredResult::decode(&*v).ok())
        .and_then(|s| s.received_at.as_ref().map(blockwatch_proto::time::from_timestamp))
        .unwrap_or(Millis::MIN);
    let mut closing = false;
    while !closing {
        let Some(first) = rx.blocking_recv() else { break };
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r {
                Request::Close => closing = true,
                Request::Results { results, received_at, reply } => group.push((results, received_at, reply)),
            }
            if closing || group.len() >= MAX_GROUP {
                break;
            }
            next = rx.try_recv().ok();
        }
        if group.is_empty() {
            continue;
        }
        // Refused before fjall sees a write it cannot finish: a failed journal write would
        // stop the store for good, while this passes as soon as space returns.
        if let Some(free) = space.short() {
            let err = StoreError::DiskFull { free_mib: free >> 20, reserve_mib: space.min_free >> 20 };
            if disk_logged.is_none_or(|t| t.elapsed() >= DISK_LOG_EVERY) {
                disk_logged = Some(std::time::Instant::now());
                tracing::error!(dir = %space.dir.display(), error = %err, "refusing results");
            }
            for (_, _, reply) in group {
                let _ =
                    reply.send(Err(StoreError::DiskFull { free_mib: free >> 20, reserve_mib: space.min_free >> 20 }));
            }
            continue;
        }
        if disk_logged.take().is_some() {
            tracing::info!(dir = %space.dir.display(), "disk space is back; accepting results again");
        }
        let mut batch = ks.db.batch().durability(Some(PersistMode::SyncAll));
        let mut seen = HashSet::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut failed = None;
        let mut seq = next_result;
        // What this commit stores, in store order: the feed's next batch.
        let mut fed: Vec<StoredResult> = Vec::new();
        for (results, received_at, _) in &mut group {
            let received_at = (*received_at).max(last_received);
            last_received = received_at;
            let mut out = WriteOutcome::default();
            // Moved, not copied: the stored record takes each result.
            for r in std::mem::take(results) {
                let dup = seen.contains(r.probe_id.as_str())
                    || match ks.ids.contains_key(&r.probe_id) {
                        Ok(found) => found,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                if dup {
                    out.duplicates.push(r.probe_id);
                    continue;
                }
                seen.insert(r.probe_id.clone());
                batch.insert(&ks.ids, r.probe_id.as_bytes(), seq.to_be_bytes());
                // The index, in the same commit as the result.
                if let Some((key, val)) = super::cell_entry(seq, &r) {
                    batch.insert(&ks.cells, key, val);
                }
                let stored = StoredResult { result: Some(r), received_at: Some(to_timestamp(received_at)) };
                batch.insert(&ks.results, seq.to_be_bytes(), stored.encode_to_vec());
                seq += 1;
                out.stored += 1;
                fed.push(stored);
            }
            outcomes.push(out);
        }
        let result = match failed {
            Some(e) => Err(e),
            None => batch.commit(),
        };
        match result {
            Ok(()) => {
                *failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                next_result = seq;
                if let Some(f) = &feed
                    && !fed.is_empty()
                    && f.send(fed).is_err()
                {
                    tracing::warn!("the detector has stopped; results are stored but no longer analysed live");
                    feed = None;
                }
                for ((_, _, reply), out) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                let why = super::describe(&e);
                tracing::error!(error = %why, "store commit failed; nothing in this batch is acknowledged");
                *failing.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                for (_, _, reply) in group {
                    let _ = reply.send(Err(StoreError::Write(why.clone())));
                }
            }
        }
    }
}
