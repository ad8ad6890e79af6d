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
//!
//! Any number of detectors may consume the stream, each into its own store; they compute the
//! same events (the detector is a function of the results in stream order: live = replay).
//! One of them **alerts**: the holder of a lease, a key in a JetStream KV bucket whose entries
//! expire after `lease` unless renewed (compare-and-set on the key's revision, so only the
//! holder can renew it). The holder runs the sinks, mirrors each sink's cursor to a second
//! bucket, and appends its events to the events stream (message id = event sequence, so a
//! re-publish is dropped). A standby that takes the lease first moves its own sink cursors up
//! to the mirrored ones, so it goes on where the holder stopped: nothing is skipped, and what
//! is sent twice is at most what the holder had sent and not yet mirrored when it died.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use blockwatch_proto::time::{self, Millis};
use blockwatch_proto::v1::{ProbeResult, StoredResult};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::store::{Reader, Store, WriteOutcome};

/// Most messages a detector writes at a time.
const FETCH: usize = 1000;
/// Between attempts to reach the cluster.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a batch waits for the cluster to ack it before the agent is told to retry.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(15);
/// Longest a detector's consumer may deliver nothing while the stream has more for it.
const STALL: Duration = Duration::from_secs(10);
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
    /// Detectors: how long the alerting detector's lease lasts unrenewed (it renews it every
    /// quarter of that). A standby takes over within this long after the holder dies; a
    /// clean stop hands over at once. Default 10s.
    #[schemars(with = "String")]
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Detectors: the KV bucket holding the lease; the sinks' cursors are in
    /// `{lease_bucket}_CURSORS`. Default `BLOCKWATCH_LEASE`.
    #[serde(default = "default_lease_bucket")]
    pub lease_bucket: String,
    /// Detectors: the stream the alerting detector appends its events to. Default
    /// `BLOCKWATCH_EVENTS`.
    #[serde(default = "default_events_stream")]
    pub events_stream: String,
    /// Its subject. Default `blockwatch.events`.
    #[serde(default = "default_events_subject")]
    pub events_subject: String,
    /// Detectors: the URL ingest front ends reach this detector's API at, to which they
    /// forward fleet-wide API requests while it holds the lease. Default: `public_url`, else
    /// the API's address as bound.
    pub advertise_api: Option<String>,
    /// Ingest front ends: a PEM file of the CA a detector's HTTPS API certificate chains to
    /// (besides the public roots).
    pub api_ca_file: Option<std::path::PathBuf>,
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
fn default_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_lease_bucket() -> String {
    "BLOCKWATCH_LEASE".into()
}
fn default_events_stream() -> String {
    "BLOCKWATCH_EVENTS".into()
}
fn default_events_subject() -> String {
    "blockwatch.events".into()
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
        for (key, name) in
            [("stream", &self.stream), ("events_stream", &self.events_stream), ("lease_bucket", &self.lease_bucket)]
        {
            if !name_ok(name) || (key == "lease_bucket" && name.len() > 56) {
                p.push(format!("jetstream.{key} {name:?}: 1-64 (a lease bucket 1-56) of A-Z a-z 0-9 _ -"));
            }
        }
        if self.stream == self.events_stream || self.subject == self.events_subject {
            p.push("jetstream: the events stream and subject must differ from the results'".into());
        }
        if let Some(url) = &self.advertise_api
            && !((url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048)
        {
            p.push(format!("jetstream.advertise_api {url:?}: an http:// or https:// URL"));
        }
        if let Some(path) = &self.api_ca_file {
            use rustls_pki_types::pem::PemObject;
            match std::fs::read(path) {
                Ok(pem) if rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next().is_some_and(|c| c.is_ok()) => {
                }
                Ok(_) => p.push(format!("jetstream.api_ca_file {}: no PEM certificate in it", path.display())),
                Err(e) => p.push(format!("jetstream.api_ca_file {}: {e}", path.display())),
            }
        }
        if self.lease < Duration::from_secs(2) || self.lease > Duration::from_secs(600) {
            p.push("jetstream.lease: must be 2s..=10m".into());
        }
        if self.max_age < Duration::from_secs(3600) || self.max_age > Duration::from_secs(3660 * 86_400) {
            p.push("jetstream.max_age: must be 1h..=3660d".into());
        }
        let subject_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.split('.')
                    .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        };
        for (key, subject) in [("subject", &self.subject), ("events_subject", &self.events_subject)] {
            if !subject_ok(subject) {
                p.push(format!("jetstream.{key} {subject:?}: dot-separated tokens of A-Z a-z 0-9 _ -"));
            }
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
    loop {
        // A consumer whose server died can fall silent instead of failing: when nothing comes
        // for a while though the stream has grown past the mark, it is made anew.
        let chunk = match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                let last = stream.get_info().await.map_err(api)?.state.last_sequence;
                if last > mark {
                    return Err(api(format!("the consumer is silent at {mark} of {last}; making it anew")));
                }
                continue;
            }
        };
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
        // Queued in turn (the store keeps stream order: what the detector sees live is what a
        // replay of the store gives it after a restart), then awaited together so the writer
        // commits them together.
        let mut queued = Vec::with_capacity(groups.len());
        for (at, results) in groups {
            queued.push(store.queue_results(results, at).await?);
        }
        for q in queued {
            q.outcome().await?;
        }
        let (reader, name) = (store.reader(), cfg.stream.clone());
        tokio::task::spawn_blocking(move || reader.set_stream_mark(&name, last))
            .await
            .map_err(|e| api(format!("store write stopped: {e}")))??;
        mark = last;
    }
    Err(api("the stream's consumer ended"))
}

/// The lease's key in its bucket.
const LEASE_KEY: &str = "holder";
/// Events the alerting detector publishes at a time.
const EVENTS_BATCH: usize = 500;
/// How often the alerting detector looks for new events to publish.
const EVENTS_POLL: Duration = Duration::from_millis(250);

/// The cursor key of a sink in the cursors bucket.
fn cursor_key(sink: &str) -> String {
    format!("sink.{sink}")
}

/// A KV bucket with one value per key, made when it does not exist yet. Its stream is made
/// here, as a KV bucket's is, because the client's own way first asks for account details
/// that servers before 2.10 answer in a shape it does not read.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, JetStreamError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| api(format!("bucket {name}: {e}")))?;
    js.get_key_value(name).await.map_err(|e| api(format!("bucket {name}: {e}")))
}

/// A detector's part in the lease: `leading` is true while it holds it (and so alerts).
/// `holder` is what it writes into the lease (who it is, where its API answers); `sinks`
/// are the names of its sinks, whose cursors `moved` brings while it alerts. Runs until
/// `stop` turns true, then hands the lease over by deleting it.
pub async fn lead(
    cfg: JetStreamConfig,
    store: Reader,
    sinks: Vec<String>,
    holder: String,
    leading: watch::Sender<bool>,
    mut moved: mpsc::UnboundedReceiver<(String, u64)>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let r = lead_once(&cfg, &store, &sinks, &holder, &leading, &mut moved, stop.clone()).await;
        leading.send_replace(false);
        if *stop.borrow() {
            return;
        }
        if let Err(e) = r {
            tracing::warn!(error = %blockwatch_proto::error::chain(&e), "detector lease: lost touch with the cluster; retrying");
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn lead_once(
    cfg: &JetStreamConfig,
    store: &Reader,
    sinks: &[String],
    holder: &str,
    leading: &watch::Sender<bool>,
    moved: &mut mpsc::UnboundedReceiver<(String, u64)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), JetStreamError> {
    let (js, _) = open(cfg).await?;
    let lease = bucket(&js, &cfg.lease_bucket, cfg.replicas, cfg.lease).await?;
    let cursors = bucket(&js, &format!("{}_CURSORS", cfg.lease_bucket), cfg.replicas, Duration::ZERO).await?;
    let events = js
        .get_or_create_stream(stream::Config {
            name: cfg.events_stream.clone(),
            subjects: vec![cfg.events_subject.clone()],
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            duplicate_window: cfg.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(api)?;
    let step = cfg.lease / 4;
    let value = bytes::Bytes::from(holder.to_string());
    loop {
        // Standing by: the lease is taken when its holder lets it expire or hands it over.
        let mut revision = loop {
            if *stop.borrow() {
                return Ok(());
            }
            match tokio::time::timeout(step, lease.create(LEASE_KEY, value.clone())).await {
                Ok(Ok(revision)) => break revision,
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Ok(Err(e)) => return Err(api(format!("lease: {e}"))),
                Err(_) => return Err(api("lease: the cluster did not answer")),
            }
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = stop.changed() => {}
            }
        };
        // Sink cursors not yet in the cluster (a put failed or was not answered): tried
        // again each tick, the newest per sink, so one failed put does not leave a standby
        // to send those events again.
        let mut unmirrored = std::collections::BTreeMap::new();
        // Go on where the last holder's sinks stopped.
        for name in sinks {
            let mirrored = cursors.get(cursor_key(name)).await.map_err(api)?;
            let mirrored = mirrored.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
            let (store, n) = (store.clone(), name.clone());
            let own = tokio::task::spawn_blocking(move || match (store.sink_cursor(&n)?, mirrored) {
                (Some(own), Some(m)) if own >= m => Ok(Some(own)),
                (own, None) => Ok(own),
                (_, Some(m)) => store.set_sink_cursor(&n, m).map(|()| Some(m)),
            })
            .await
            .map_err(|e| api(format!("store write stopped: {e}")))??;
            // Sent by this detector while it held the lease before, not mirrored then.
            if let Some(own) = own.filter(|o| mirrored.is_none_or(|m| *o > m)) {
                unmirrored.insert(name.clone(), own);
            }
        }
        mirror(&cursors, &mut unmirrored, step).await;
        tracing::info!(lease = %cfg.lease_bucket, "this detector holds the lease: it alerts and publishes events");
        leading.send_replace(true);
        let (publishing_stop, publishing_stopped) = watch::channel(false);
        let publishing = tokio::spawn(publish_events(
            events.clone(),
            js.clone(),
            cfg.events_subject.clone(),
            store.clone(),
            publishing_stopped,
        ));
        let mut renewed = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                _ = tick.tick() => {
                    match tokio::time::timeout(step, lease.update(LEASE_KEY, value.clone(), revision)).await {
                        Ok(Ok(r)) => {
                            revision = r;
                            renewed = tokio::time::Instant::now();
                        }
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            break Err("another detector holds the lease".to_string());
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "detector lease: renewal failed"),
                        Err(_) => tracing::warn!("detector lease: renewal not answered"),
                    }
                    // Stop alerting before the lease can expire under another holder.
                    if renewed.elapsed() >= cfg.lease * 2 / 3 {
                        break Err("the lease could not be renewed in time".to_string());
                    }
                    mirror(&cursors, &mut unmirrored, step).await;
                }
                Some((name, seq)) = moved.recv() => {
                    unmirrored.insert(name, seq);
                    mirror(&cursors, &mut unmirrored, step).await;
                }
                _ = stop.changed() => break Ok(()),
            }
        };
        let _ = publishing_stop.send(true);
        let _ = publishing.await;
        leading.send_replace(false);
        match outcome {
            Ok(()) => {
                // The sinks have stopped: mirror their last cursors, then hand over.
                while let Ok((name, seq)) = moved.try_recv() {
                    unmirrored.insert(name, seq);
                }
                mirror(&cursors, &mut unmirrored, step).await;
                if let Err(e) = lease.delete_expect_revision(LEASE_KEY, Some(revision)).await {
                    tracing::warn!(error = %e, "detector lease: not handed over; it expires instead");
                } else {
                    tracing::info!("detector lease handed over");
                }
                return Ok(());
            }
            Err(why) => tracing::warn!(reason = %why, "this detector stopped alerting; standing by"),
        }
    }
}

/// Puts each cursor of `unmirrored` into the cluster's cursors bucket (each put given at most
/// `wait`); those put are taken out, the others stay for the next call.
async fn mirror(cursors: &kv::Store, unmirrored: &mut std::collections::BTreeMap<String, u64>, wait: Duration) {
    let mut put = Vec::new();
    for (name, seq) in unmirrored.iter() {
        match tokio::time::timeout(wait, cursors.put(cursor_key(name), seq.to_string().into())).await {
            Ok(Ok(_)) => put.push(name.clone()),
            Ok(Err(e)) => {
                tracing::warn!(sink = %name, cursor = seq, error = %e, "cannot mirror the sink's cursor yet; trying again")
            }
            Err(_) => {
                tracing::warn!(sink = %name, cursor = seq, "mirroring the sink's cursor not answered; trying again")
            }
        }
    }
    for name in put {
        unmirrored.remove(&name);
    }
}

/// Appends the store's events to the events stream, in order, from just past the last one
/// there, until `stop` turns true. Each message is one event line, with its sequence number as
/// the message id, so an event published twice (by two holders in turn) is stored once.
async fn publish_events(
    events: stream::Stream,
    js: jetstream::Context,
    subject: String,
    store: Reader,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = loop {
        match events.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_string());
                match id.as_deref().and_then(|v| v.parse::<u64>().ok()) {
                    Some(seq) => break seq,
                    None => {
                        tracing::error!(?id, "the events stream's last message has no event sequence; not publishing");
                        return;
                    }
                }
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break 0,
            Err(e) => tracing::warn!(error = %e, "cannot read the events stream; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    loop {
        let batch = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                store.events_after(after).take(EVENTS_BATCH).collect::<Result<Vec<_>, _>>()
            })
            .await
        };
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the event log to publish it");
                Vec::new()
            }
            Err(_) => return,
        };
        let mut acks = Vec::with_capacity(batch.len());
        for (seq, line) in &batch {
            let msg =
                jetstream::message::PublishMessage::build().payload(line.clone().into()).message_id(seq.to_string());
            match js.send_publish(subject.clone(), msg).await {
                Ok(ack) => acks.push((*seq, ack)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish an event; retrying");
                    break;
                }
            }
        }
        for (seq, ack) in acks {
            match ack.await {
                Ok(_) => after = seq,
                Err(e) => {
                    tracing::warn!(error = %e, "an event was not acked; publishing again");
                    break;
                }
            }
        }
        if batch.len() < EVENTS_BATCH {
            tokio::select! {
                _ = tokio::time::sleep(EVENTS_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        } else if *stop.borrow() {
            return;
        }
    }
}

/// An ingest front end's view of the lease: `holder` is the API URL of the detector holding it
/// (`None` while none does), read every second until `stop` turns true.
pub async fn follow_holder(cfg: JetStreamConfig, holder: watch::Sender<Option<String>>, stop: watch::Receiver<bool>) {
    let mut stop = stop;
    loop {
        let once = async {
            let (js, _) = open(&cfg).await?;
            let lease = bucket(&js, &cfg.lease_bucket, cfg.replicas, cfg.lease).await?;
            loop {
                let now = match lease.get(LEASE_KEY).await.map_err(api)? {
                    Some(v) => serde_json::from_slice::<serde_json::Value>(&v)
                        .ok()
                        .and_then(|v| v["api"].as_str().map(str::to_string)),
                    None => None,
                };
                holder.send_if_modified(|h| {
                    let changed = *h != now;
                    if changed {
                        tracing::info!(holder = now.as_deref().unwrap_or("none"), "the detector holding the lease");
                        h.clone_from(&now);
                    }
                    changed
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), JetStreamError>(())
        };
        tokio::select! {
            r = once => if let Err(e) = r {
                holder.send_replace(None);
                tracing::warn!(error = %blockwatch_proto::error::chain(&e), "cannot read the detector lease; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
