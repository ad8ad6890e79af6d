//! The store's single writer: dedupe check, batch write, fsync, answer.

use std::collections::HashSet;

use blockwatch_proto::time::{Millis, to_timestamp};
use blockwatch_proto::v1::{ProbeResult, StoredResult};
use fjall::PersistMode;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::{Keyspaces, StoreError, key_seq};

/// Most queued requests folded into one commit (one fsync).
const MAX_GROUP: usize = 32;

pub(crate) enum Request {
    Results {
        results: Vec<ProbeResult>,
        received_at: Millis,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
    Events {
        lines: Vec<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

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
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(ks, rx))
}

fn last_seq(ks: &fjall::Keyspace) -> u64 {
    ks.last_key_value()
        .and_then(|g| g.key().ok())
        .map_or(0, |k| key_seq(&k))
}

fn run(ks: Keyspaces, mut rx: mpsc::Receiver<Request>) {
    let mut next_result = last_seq(&ks.results) + 1;
    let mut next_event = last_seq(&ks.events) + 1;
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
        let (mut seq, mut eseq) = (next_result, next_event);
        for req in &group {
            match req {
                Request::Results {
                    results,
                    received_at,
                    ..
                } => {
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
                            received_at: Some(to_timestamp(*received_at)),
                        };
                        batch.insert(&ks.results, seq.to_be_bytes(), stored.encode_to_vec());
                        batch.insert(&ks.ids, r.probe_id.as_bytes(), seq.to_be_bytes());
                        seq += 1;
                        out.stored.push(stored);
                    }
                    outcomes.push(Some(out));
                }
                Request::Events { lines, .. } => {
                    for line in lines {
                        batch.insert(&ks.events, eseq.to_be_bytes(), line.as_bytes());
                        eseq += 1;
                    }
                    outcomes.push(None);
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
                next_event = eseq;
                for (req, out) in group.into_iter().zip(outcomes) {
                    match req {
                        Request::Results { reply, .. } => {
                            let _ = reply.send(Ok(out.unwrap_or_default()));
                        }
                        Request::Events { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; nothing in this batch is acknowledged");
                let msg = e.to_string();
                for req in group {
                    let err = || StoreError::Write(fjall::Error::Io(std::io::Error::other(msg.clone())));
                    match req {
                        Request::Results { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Request::Events { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                    }
                }
            }
        }
    }
}
