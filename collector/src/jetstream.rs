//! Clustered mode over NATS JetStream: collectors as ingest front ends publish validated
//! results to a replicated stream and ack an agent only after JetStream's publish ack (the
//! result is then on a quorum of the cluster's servers); a collector in the detector role
//! consumes the stream in stream order through a durable consumer into its own store, where
//! the detector, the API and alerting run as in the embedded mode.
//!
//! Each result is one message, its protobuf `StoredResult` (the result and when the front
//! end received it), with the probe id as `Nats-Msg-Id`: a re-send within the stream's
//! duplicate window is dropped by the server (the publish ack says so, and the agent hears
//! it as a duplicate); one after it is dropped by the detector's store, which dedupes by
//! probe id as ingest does. The detector keeps its place in the stream in its own store (the
//! stream sequence of the last message written), so a detector killed at any moment reads on
//! from there, in stream order.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use blockwatch_proto::time::{self, Millis};
use blockwatch_proto::v1::{ProbeResult, StoredResult};
use prost::Message;
use tokio::sync::watch;

use crate::store::{Store, WriteOutcome};

/// Most messages a detector writes at a time.
const FETCH: usize = 1000;
/// Between attempts to reach the cluster.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a batch waits for the cluster to ack it before the agent is told to retry.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(15);
/// Attempts to find or make the stream before giving up.
const STREAM_ATTEMPTS: u32 = 60;

/// The `[jetstream]` section.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// NATS servers of the cluster (`nats://10.0.0.1:4222`); the client fails over between
    /// them.
    pub servers: Vec<String>,
    /// `ingest`: agents' results are published to the stream instead of this collector's
    /// store. `detector`: the stream is consumed, in order, into this collector's store.
    pub role: Role,
    /// The results stream. Default `BLOCKWATCH_RESULTS`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Its subject. Default `blockwatch.results`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Copies of the stream the cluster keeps (a publish is acked once a quorum has it).
    /// Default 3.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Re-sends within this window are dropped by the server. Default 10m.
    #[schemars(with = "String")]
    #[serde(default = "default_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long the stream keeps results: a detector away for longer misses what the
    /// stream dropped. Default 14d.
    #[schemars(with = "String")]
    #[serde(default = "default_keep", with = "humantime_serde")]
    pub max_age: Duration,
}

/// What a collector does in clustered mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingest,
    Detector,
}

fn default_stream() -> String {
    "BLOCKWATCH_RESULTS".into()
}
fn default_subject() -> String {
    "blockwatch.results".into()
}
fn default_replicas() -> usize {
    3
}
fn default_window() -> Duration {
    Duration::from_secs(600)
}
fn default_keep() -> Duration {
    Duration::from_secs(14 * 86_400)
}

impl JetStreamConfig {
    /// What `serve` would refuse.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.servers.is_empty() {
            p.push("jetstream.servers: name at least one NATS server".into());
        }
        for s in &self.servers {
            if s.parse::<async_nats::ServerAddr>().is_err() {
                p.push(format!("jetstream.servers: {s:?} is not a NATS server address (nats://host:4222)"));
            }
        }
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.stream) {
            p.push(format!("jetstream.stream {:?}: 1-64 of A-Z a-z 0-9 _ -", self.stream));
        }
        if self.max_age < Duration::from_secs(3600) || self.max_age > Duration::from_secs(3660 * 86_400) {
            p.push("jetstream.max_age: must be 1h..=3660d".into());
        }
        let subject_ok = !self.subject.is_empty()
            && self
                .subject
                .split('.')
                .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        if !subject_ok {
            p.push(format!("jetstream.subject {:?}: dot-separated tokens of A-Z a-z 0-9 _ -", self.subject));
        }
        if !(1..=5).contains(&self.replicas) {
            p.push("jetstream.replicas: must be 1..=5".into());
        }
        if self.duplicate_window < Duration::from_secs(1) || self.duplicate_window > Duration::from_secs(86_400) {
            p.push("jetstream.duplicate_window: must be 1s..=1d".into());
        }
        p
    }
}

/// Why a clustered step failed.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot reach NATS ({servers}): {source}")]
    Connect { servers: String, source: async_nats::ConnectError },
    #[error("JetStream: {0}")]
    Api(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn api(e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Api(e.to_string())
}

/// Connects to the cluster and makes sure the stream exists.
async fn open(cfg: &JetStreamConfig) -> Result<(jetstream::Context, stream::Stream), JetStreamError> {
    let servers = cfg.servers.join(", ");
    let addrs: Vec<async_nats::ServerAddr> = cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    let client = async_nats::ConnectOptions::new()
        .name(concat!("blockwatch-collector ", env!("CARGO_PKG_VERSION")))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .map_err(|source| JetStreamError::Connect { servers, source })?;
    let js = jetstream::new(client);
    let config = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        num_replicas: cfg.replicas,
        storage: stream::StorageType::File,
        duplicate_window: cfg.duplicate_window,
        max_age: cfg.max_age,
        ..Default::default()
    };
    // A cluster that has just started answers only once it has elected its meta leader.
    let mut attempts = 0;
    loop {
        let not_ready = match js.get_or_create_stream(config.clone()).await {
            // A replicated stream takes writes once its group has a leader.
            Ok(stream) => match stream.get_info().await {
                Ok(info) if cfg.replicas == 1 || info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => {
                    return Ok((js, stream));
                }
                Ok(_) => "the stream has no leader yet".to_string(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if attempts >= STREAM_ATTEMPTS {
            return Err(api(format!("stream {}: {not_ready}", cfg.stream)));
        }
        attempts += 1;
        tracing::info!(stream = %cfg.stream, error = %not_ready, "JetStream not ready; retrying");
        tokio::time::sleep(RETRY).await;
    }
}

/// An ingest front end's way into the stream.
pub struct Publisher {
    js: jetstream::Context,
    subject: String,
}

impl Publisher {
    /// Connects (waiting for the cluster, retrying) and makes sure the stream exists.
    pub async fn connect(cfg: &JetStreamConfig) -> Result<Publisher, JetStreamError> {
        let (js, _) = open(cfg).await?;
        Ok(Publisher { js, subject: cfg.subject.clone() })
    }

    /// Publishes `results` (received at `received_at`) in order and returns once the
    /// cluster has acked every one; what it reports as re-sends are the duplicates. A
    /// publish the cluster did not ack (a stream leader being elected after a server died)
    /// is sent again, with the same message id, for up to [`PUBLISH_DEADLINE`].
    pub async fn publish(
        &self,
        results: Vec<ProbeResult>,
        received_at: Millis,
    ) -> Result<WriteOutcome, JetStreamError> {
        let at = time::to_timestamp(received_at);
        let mut todo: Vec<(String, bytes::Bytes)> = results
            .into_iter()
            .map(|r| {
                let id = r.probe_id.clone();
                (id, StoredResult { result: Some(r), received_at: Some(at) }.encode_to_vec().into())
            })
            .collect();
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let mut outcome = WriteOutcome::default();
        loop {
            let mut pending = Vec::with_capacity(todo.len());
            let mut failed = Vec::new();
            let mut last_error = String::new();
            for (id, payload) in todo {
                let msg = jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(&id);
                match self.js.send_publish(self.subject.clone(), msg).await {
                    Ok(ack) => pending.push((id, payload, ack)),
                    Err(e) => {
                        last_error = e.to_string();
                        failed.push((id, payload));
                    }
                }
            }
            for (id, payload, ack) in pending {
                match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(a)) if a.duplicate => outcome.duplicates.push(id),
                    Ok(Ok(_)) => outcome.stored += 1,
                    Ok(Err(e)) => {
                        last_error = e.to_string();
                        failed.push((id, payload));
                    }
                    Err(_) => {
                        last_error = "no publish ack in time".into();
                        failed.push((id, payload));
                    }
                }
            }
            if failed.is_empty() {
                return Ok(outcome);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(api(format!("{} results not acked by the cluster: {last_error}", failed.len())));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            todo = failed;
        }
    }
}

/// A detector's consumer: the stream into `store`, in stream order, until `stop` turns true;
/// reconnects after any failure.
pub async fn consume(cfg: JetStreamConfig, store: Store, mut stop: watch::Receiver<bool>) {
    loop {
        let once = consume_once(&cfg, &store);
        tokio::select! {
            r = once => if let Err(e) = r {
                tracing::warn!(error = %blockwatch_proto::error::chain(&e), "JetStream consumer stopped; reconnecting");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads the stream from just past the store's mark with an ordered consumer (the server
/// delivers in stream order; the client restarts it past the last message seen on any gap),
/// writes what arrives to the store in that order, then moves the mark. A crash between a
/// write and its mark only reads those results again, and the store drops them as stored.
async fn consume_once(cfg: &JetStreamConfig, store: &Store) -> Result<(), JetStreamError> {
    use futures_util::StreamExt;
    let (_, stream) = open(cfg).await?;
    let (reader, name) = (store.reader(), cfg.stream.clone());
    let mut mark = tokio::task::spawn_blocking(move || reader.stream_mark(&name))
        .await
        .map_err(|e| api(format!("store read stopped: {e}")))??;
    let deliver_policy = match mark {
        0 => jetstream::consumer::DeliverPolicy::All,
        m => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: m + 1 },
    };
    let consumer =
        stream.create_consumer(pull::OrderedConfig { deliver_policy, ..Default::default() }).await.map_err(api)?;
    tracing::info!(stream = %cfg.stream, after = mark, "consuming the results stream");
    let mut messages = consumer.messages().await.map_err(api)?.ready_chunks(FETCH);
    while let Some(chunk) = messages.next().await {
        // Consecutive results received together are written together, in stream order.
        let mut groups: Vec<(Millis, Vec<ProbeResult>)> = Vec::new();
        let mut last = mark;
        for m in chunk {
            let m = m.map_err(api)?;
            let seq = m.info().map_err(api)?.stream_sequence;
            if seq <= last {
                continue;
            }
            last = seq;
            match StoredResult::decode(&*m.payload) {
                Ok(StoredResult { result: Some(r), received_at: Some(at) }) => {
                    let at = time::from_timestamp(&at);
                    match groups.last_mut() {
                        Some((t, rs)) if *t == at => rs.push(r),
                        _ => groups.push((at, vec![r])),
                    }
                }
                _ => {
                    tracing::warn!(seq, bytes = m.payload.len(), "skipped a stream message that is not a stored result")
                }
            }
        }
        // Queued all at once, in order, so the writer commits them together.
        futures_util::future::try_join_all(groups.into_iter().map(|(at, results)| store.write_results(results, at)))
            .await?;
        let (reader, name) = (store.reader(), cfg.stream.clone());
        tokio::task::spawn_blocking(move || reader.set_stream_mark(&name, last))
            .await
            .map_err(|e| api(format!("store write stopped: {e}")))??;
        mark = last;
    }
    Err(api("the stream's consumer ended"))
}
