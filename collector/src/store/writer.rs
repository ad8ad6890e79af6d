//! The store's single writer: dedupe check, batch write, fsync, answer, then hand the newly
//! stored results to the feed (the detector) in exactly the order they were stored.

use std::collections::HashSet;

use blockwatch_proto::time::{Millis, to_timestamp};
use blockwatch_proto::v1::{ProbeResult, StoredResult};
use fjall::PersistMode;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::{Keyspaces, StoreError};

/// Most queued requests folded into one commit (one fsync).
const MAX_GROUP: usize = 32;

pub(crate) enum Request {
    Results {
        results: Vec<ProbeResult>,
        received_at: Millis,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
}

/// Where committed results go, in store order. Blocking when full: a detector that falls
/// behind slows ingest rather than losing results.
pub type Feed = std::sync::mpsc::SyncSender<Vec<StoredResult>>;

/// What a durable write did.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Results stored by this write, with their receive time.
    pub stored: Vec<StoredResult>,
    /// Results that were already stored (re-sends), by probe id.
    pub duplicates: Vec<String>,
}

pub(super) fn spawn(
    ks: Keyspaces,
    rx: mpsc::Receiver<Request>,
    feed: Option<Feed>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(ks, rx, feed))
}

fn run(ks: Keyspaces, mut rx: mpsc::Receiver<Request>, mut feed: Option<Feed>) {
    let mut next_result = super::last_key(&ks.results) + 1;
    // Receive times never go backwards in store order, so replaying the store in order gives
    // the detector exactly what it saw live.
    let mut last_received: Millis = Millis::MIN;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let mut batch = ks.db.batch().durability(Some(PersistMode::SyncAll));
        let mut seen = HashSet::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut failed = None;
        let mut seq = next_result;
        for req in &group {
            match req {
                Request::Results {
                    results,
                    received_at,
                    ..
                } => {
                    let received_at = (*received_at).max(last_received);
                    last_received = received_at;
                    let mut out = WriteOutcome::default();
                    for r in results {
                        let dup = seen.contains(r.probe_id.as_str())
                            || match ks.ids.contains_key(&r.probe_id) {
                                Ok(found) => found,
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            };
                        if dup {
                            out.duplicates.push(r.probe_id.clone());
                            continue;
                        }
                        seen.insert(r.probe_id.clone());
                        let stored = StoredResult {
                            result: Some(r.clone()),
                            received_at: Some(to_timestamp(received_at)),
                        };
                        batch.insert(&ks.results, seq.to_be_bytes(), stored.encode_to_vec());
                        batch.insert(&ks.ids, r.probe_id.as_bytes(), seq.to_be_bytes());
                        seq += 1;
                        out.stored.push(stored);
                    }
                    outcomes.push(out);
                }
            }
        }
        let result = match failed {
            Some(e) => Err(e),
            None => batch.commit(),
        };
        match result {
            Ok(()) => {
                next_result = seq;
                if let Some(f) = &feed {
                    let stored: Vec<StoredResult> = outcomes.iter().flat_map(|o| o.stored.iter().cloned()).collect();
                    if !stored.is_empty() && f.send(stored).is_err() {
                        tracing::warn!("the detector has stopped; results are stored but no longer analysed live");
                        feed = None;
                    }
                }
                for (req, out) in group.into_iter().zip(outcomes) {
                    let Request::Results { reply, .. } = req;
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; nothing in this batch is acknowledged");
                let msg = e.to_string();
                for req in group {
                    let Request::Results { reply, .. } = req;
                    let _ = reply.send(Err(StoreError::Write(fjall::Error::Io(std::io::Error::other(msg.clone())))));
                }
            }
        }
    }
}
