//! The uplink to the collector: `Register`, then the `Report` stream with batches read from
//! the spool, acks that delete them, heartbeats, plan updates and probe requests; reconnects
//! with exponential backoff and jitter.
//!
//! Memory is bounded: at most `MAX_IN_FLIGHT` batches are unacknowledged at once; everything
//! else waits on disk in the spool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use blockwatch_proto::pace::TokenBucket;
use blockwatch_proto::v1::fleet_client::FleetClient;
use blockwatch_proto::v1::{
    AgentMessage, Goodbye, Heartbeat, Hello, Plan, ProbeResult, RegisterRequest, ResultBatch, SpoolDrops,
    agent_message, collector_message,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;
use crate::plan::{self, ActivePlan};
use crate::spool::{Spool, SpoolError};

/// Unacknowledged batches allowed at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Largest batch the agent sends, whatever the collector allows.
pub const MAX_BATCH: usize = 500;
/// How long a fresh result may wait for companions before its batch goes out. Each batch
/// costs one spool commit (an fsync) and one round trip, so results of a second travel
/// together; a second is nothing next to the detector's minutes.
pub const BATCH_LINGER: Duration = Duration::from_secs(1);
/// Messages queued towards the collector; when full the uplink waits (HTTP/2 flow control).
pub const OUTBOUND_QUEUE: usize = 8;
/// Largest gRPC message.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How often the uplink looks for results to send when nothing else wakes it (a backlog
/// draining at `upload_rate`).
const CATCHUP_TICK: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest wait between attempts when the collector refuses this agent (not in its agent list,
/// an id or region it does not accept): nothing changes until someone fixes a config, so the
/// agent asks rarely, saying why each time.
const REFUSED_BACKOFF_MAX: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Between a failed session and the next endpoint's first try.
const FAILOVER_DELAY: Duration = Duration::from_millis(200);

/// Why a session with the collector ended.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("collector endpoint {endpoint:?}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
    #[error("cannot reach collector at {endpoint}")]
    Connect { endpoint: String, source: tonic::transport::Error },
    #[error("collector refused: {}", status_text(.0))]
    Refused(tonic::Status),
    #[error("report stream: {}", status_text(.0))]
    Stream(tonic::Status),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("collector closed the report stream")]
    Closed,
    #[error("spool task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Tls(String),
}

impl UplinkError {
    /// The collector said no to this agent itself, which retrying soon will not change.
    fn is_refusal(&self) -> bool {
        match self {
            UplinkError::Refused(s) => {
                matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated
                ) || std::error::Error::source(s).is_some_and(tls_refusal)
            }
            UplinkError::Connect { source, .. } => tls_refusal(source),
            UplinkError::Tls(_) => true,
            _ => false,
        }
    }
}

/// Whether a TLS peer refused the other's certificate (revoked, unknown CA, expired, a
/// collector certificate not from the fleet CA): retrying soon will not change it.
fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let refused =
        |r: &rustls::Error| matches!(r, rustls::Error::AlertReceived(_) | rustls::Error::InvalidCertificate(_));
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return refused(r);
        }
        if let Some(r) =
            err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>())
        {
            return refused(r);
        }
        cur = err.source();
    }
    false
}

/// The uplink's TLS settings from `[tls]`, the files read and checked now (they are read
/// again on every connection, so renewed files are picked up); `None` for an `http://`
/// collector. The error names the key and file.
pub fn tls_config(cfg: &AgentConfig) -> Result<Option<ClientTlsConfig>, String> {
    tls_config_for(cfg, &cfg.collector)
}

/// As [`tls_config`], for one of the collector's endpoints (its host is the server name
/// checked, unless `tls.server_name` says otherwise).
fn tls_config_for(cfg: &AgentConfig, endpoint: &str) -> Result<Option<ClientTlsConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(t) = &cfg.tls else { return Ok(None) };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("tls.{key} {}: {e}", path.display()))
    };
    let certs = |key: &str, path: &std::path::Path| {
        let pem = read(key, path)?;
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => Ok(pem),
            Ok(_) => Err(format!("tls.{key} {}: no PEM certificate in it", path.display())),
            Err(e) => Err(format!("tls.{key} {}: {e}", path.display())),
        }
    };
    let ca = certs("ca_file", &t.ca_file)?;
    let cert = certs("cert_file", &t.cert_file)?;
    let key = read("key_file", &t.key_file)?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key_file {}: {e}", t.key_file.display()))?;
    let host = match &t.server_name {
        Some(name) => name.clone(),
        None => blockwatch_proto::url::endpoint(endpoint).map(|u| u.host).unwrap_or_default(),
    };
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(host),
    ))
}

/// A gRPC status in words: its code, its message, and the transport's cause if any.
fn status_text(s: &tonic::Status) -> String {
    let code = format!("{:?}", s.code());
    let mut words = String::new();
    for (i, c) in code.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    let mut text = if s.message().is_empty() { words } else { format!("{words}: {}", s.message()) };
    if let Some(cause) = std::error::Error::source(s) {
        text.push_str(": ");
        text.push_str(&blockwatch_proto::error::chain(cause));
    }
    text
}

/// Runs a blocking spool operation off the async runtime.
/// Results committed to the spool and not in flight: a backlog to send without waiting.
fn backlog(spool: &Spool, in_flight: &HashMap<u64, Vec<u64>>) -> bool {
    let flying: usize = in_flight.values().map(Vec::len).sum();
    spool.stats().pending > flying as u64
}

async fn on_spool<T: Send + 'static>(
    spool: &Arc<Spool>,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, UplinkError> {
    let spool = Arc::clone(spool);
    Ok(tokio::task::spawn_blocking(move || f(&spool)).await??)
}

/// Everything the uplink shares with the rest of the agent.
pub struct Uplink {
    pub cfg: Arc<AgentConfig>,
    pub spool: Arc<Spool>,
    /// Signalled when a new result is in the spool.
    pub new_results: Arc<Notify>,
    /// The plan in force; the uplink replaces it when the collector pushes one.
    pub plan: watch::Sender<ActivePlan>,
    /// Targets the collector wants probed now.
    pub probe_now: mpsc::Sender<String>,
    /// Becomes true when the agent shuts down.
    pub stop: watch::Receiver<bool>,
    /// How long shutdown waits for outstanding acks.
    pub drain_deadline: Duration,
    /// The uplink's state, for `/metrics`.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

enum End {
    Stopped,
}

impl Uplink {
    /// Runs sessions until shutdown, reconnecting with backoff.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        let endpoints: Vec<String> =
            std::iter::once(self.cfg.collector.clone()).chain(self.cfg.failover.clone()).collect();
        let mut current = 0;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let started = Instant::now();
            let ended = self.session(&endpoints[current]).await;
            self.metrics.connected.set(0);
            self.metrics.unacked.set(0);
            self.metrics.sessions.with_label_values(&[if ended.is_ok() { "stopped" } else { "error" }]).inc();
            match ended {
                Ok(End::Stopped) => return,
                Err(e) => {
                    if started.elapsed() > BACKOFF_MAX {
                        failures = 0;
                    }
                    failures = failures.saturating_add(1);
                    let delay = if e.is_refusal() && endpoints.len() == 1 {
                        let delay = backoff(failures).saturating_mul(10).min(REFUSED_BACKOFF_MAX);
                        tracing::error!(
                            error = %blockwatch_proto::error::chain(&e),
                            retry_in = %humantime::format_duration(delay),
                            "the collector refuses this agent; check agent_id, region, its certificate (revoked, expired, another CA) and the collector's agent list"
                        );
                        delay
                    } else {
                        // The next endpoint at once; the backoff once each has failed.
                        current = (current + 1) % endpoints.len();
                        let delay = if current != 0 {
                            FAILOVER_DELAY
                        } else {
                            backoff(failures.div_ceil(endpoints.len() as u32))
                        };
                        tracing::warn!(
                            error = %blockwatch_proto::error::chain(&e),
                            retry_in = %humantime::format_duration(delay),
                            next = %endpoints[current],
                            "collector session ended"
                        );
                        delay
                    };
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = crate::stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<FleetClient<Channel>, UplinkError> {
        let endpoint = &endpoint.to_string();
        let mut ep = Endpoint::from_shared(endpoint.clone())
            .map_err(|source| UplinkError::Endpoint { endpoint: endpoint.clone(), source })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = tls_config_for(&self.cfg, endpoint).map_err(UplinkError::Tls)? {
            ep = ep.tls_config(tls).map_err(|source| UplinkError::Endpoint { endpoint: endpoint.clone(), source })?;
        }
        let channel =
            ep.connect().await.map_err(|source| UplinkError::Connect { endpoint: endpoint.clone(), source })?;
        Ok(FleetClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Hands the collector's probe request to the scheduler; dropped when it is busy.
    fn request_probe(&self, target: String) {
        if let Err(e) = self.probe_now.try_send(target) {
            tracing::debug!(target = %e.into_inner(), "probe request dropped: scheduler busy");
        }
    }

    fn apply_plan(&self, p: &Plan) {
        if p.version == self.plan.borrow().version {
            return;
        }
        match plan::apply(&self.cfg, p) {
            Ok(active) => {
                tracing::info!(version = active.version, targets = active.targets.len(), "plan from collector applied");
                self.plan.send_replace(active);
            }
            Err(problems) => tracing::error!(version = p.version, problems = %problems.join("; "),
                "refused plan from collector; keeping the current one"),
        }
    }

    async fn session(&mut self, endpoint: &str) -> Result<End, UplinkError> {
        let mut client = self.connect(endpoint).await?;
        let plan_version = self.plan.borrow().version;
        let reg = client
            .register(RegisterRequest {
                agent_id: self.cfg.agent_id.clone(),
                region: self.cfg.region.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                capabilities: ["spool", "confirm", "plan", "probe_now"].map(String::from).to_vec(),
                plan_version,
            })
            .await
            .map_err(UplinkError::Refused)?
            .into_inner();
        if let Some(p) = &reg.plan {
            self.apply_plan(p);
        }
        let max_batch = (reg.max_batch as usize).clamp(1, MAX_BATCH);
        let heartbeat = reg
            .heartbeat_interval
            .map_or(Duration::from_secs(15), |d| Duration::from_secs(d.seconds.clamp(1, 3600) as u64));

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let hello =
            AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: self.cfg.agent_id.clone() })) };
        tx.send(hello).await.map_err(|_| UplinkError::Closed)?;
        let mut inbound = client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(UplinkError::Refused)?
            .into_inner();
        tracing::info!(collector = %endpoint, "connected to collector");
        self.metrics.connected.set(1);

        let mut in_flight: HashMap<u64, Vec<u64>> = HashMap::new();
        // Batches in flight that carry backlog, and how many may: one at first, one more for
        // each acked (to MAX_IN_FLIGHT - 1, so a slot is always left for fresh results), back
        // to one when the collector sets a pace. A fleet reconnecting at once then queues one
        // batch each, not MAX_IN_FLIGHT, ahead of the collector's first word.
        let mut backlog_batches: HashSet<u64> = HashSet::new();
        let mut backlog_window = 1usize;
        let mut next_batch = 1u64;
        let mut reported_drops = 0u64;
        let mut linger: Option<Instant> = Some(Instant::now());
        let mut catchup = tokio::time::interval(CATCHUP_TICK);
        // Ticks skipped while there was no backlog are not made up in a burst.
        catchup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = Pace::new(self.cfg.upload_rate, max_batch);
        // A collector that is behind says so at registration: the session starts paced.
        pace.collector(reg.backlog_per_second);
        // Results up to this sequence number were seen before the last batch (or before this
        // session); those probed since are fresh and go at once, outside the collector's pace,
        // until `fresh_owed` of them have gone (at most a batch's worth is owed).
        let mut seen_up_to = self.spool.last_seq();
        let mut fresh_owed = 0usize;
        let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        let new_results = Arc::clone(&self.new_results);
        let mut stop = self.stop.clone();
        let mut draining_until: Option<Instant> = None;

        loop {
            let mut send_now = false;
            // The catch-up tick paces a backlog; with none, an idle agent sleeps through it.
            self.metrics.unacked.set(in_flight.values().map(Vec::len).sum::<usize>() as i64);
            let behind = backlog(&self.spool, &in_flight);
            tokio::select! {
                m = inbound.message() => {
                    let m = m.map_err(UplinkError::Stream)?.ok_or(UplinkError::Closed)?;
                    match m.kind {
                        Some(collector_message::Kind::Ack(ack)) => {
                            if backlog_batches.remove(&ack.batch_id) {
                                backlog_window = (backlog_window + 1).min(MAX_IN_FLIGHT - 1);
                            }
                            if let Some(seqs) = in_flight.remove(&ack.batch_id) {
                                on_spool(&self.spool, move |s| s.remove(&seqs)).await?;
                                // A freed slot goes to a backlog at once; fresh results wait
                                // for their linger, so they travel (and commit) together.
                                send_now = backlog(&self.spool, &in_flight);
                            }
                        }
                        Some(collector_message::Kind::Reject(rej)) => {
                            tracing::error!(batch_id = rej.batch_id, reason = %rej.reason, results = rej.probe_ids.len(),
                                "collector rejected results; dropping them from the spool");
                            let seqs: Vec<u64> = rej.probe_ids.iter().filter_map(|id| id.rsplit('/').next()?.parse().ok()).collect();
                            if let Some(batch) = in_flight.get_mut(&rej.batch_id) {
                                batch.retain(|s| !seqs.contains(s));
                            }
                            // Refused whole, a batch gets no ack: it no longer counts as in
                            // flight for the window (refused in part, its ack follows).
                            if in_flight.get(&rej.batch_id).is_none_or(Vec::is_empty) {
                                backlog_batches.remove(&rej.batch_id);
                            }
                            on_spool(&self.spool, move |s| s.remove(&seqs)).await?;
                        }
                        Some(collector_message::Kind::Plan(p)) => self.apply_plan(&p),
                        Some(collector_message::Kind::ProbeNow(p)) => self.request_probe(p.target_id),
                        Some(collector_message::Kind::Pace(p)) => {
                            tracing::debug!(backlog_per_second = p.backlog_per_second, "collector set the backlog pace");
                            // Newly set (not a change of one in force): one backlog batch again.
                            if p.backlog_per_second > 0 && !pace.paced() {
                                backlog_window = 1;
                            }
                            pace.collector(p.backlog_per_second);
                        }
                        None => {}
                    }
                }
                _ = new_results.notified() => {
                    linger.get_or_insert_with(|| Instant::now() + BATCH_LINGER);
                }
                _ = async { sleep_until(linger.unwrap_or_else(Instant::now)).await }, if linger.is_some() => {
                    linger = None;
                    send_now = true;
                }
                _ = catchup.tick(), if behind => send_now = true,
                _ = beat.tick() => {
                    let hb = AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Heartbeat { spooled: self.spool.stats().pending })) };
                    tx.send(hb).await.map_err(|_| UplinkError::Closed)?;
                }
                _ = crate::stopped(&mut stop), if draining_until.is_none() => {
                    draining_until = Some(Instant::now() + self.drain_deadline);
                    send_now = true;
                }
                _ = async { sleep_until(draining_until.unwrap_or_else(Instant::now)).await }, if draining_until.is_some() => {
                    tracing::warn!(unacked = in_flight.len(), "shutdown deadline: leaving unacked results in the spool");
                    goodbye(tx, inbound).await;
                    return Ok(End::Stopped);
                }
            }
            let stats = self.spool.stats();
            if stats.dropped_total > reported_drops {
                let (first_seq, last_seq) = stats.last_drop.unwrap_or_default();
                let drops = AgentMessage {
                    kind: Some(agent_message::Kind::Drops(SpoolDrops {
                        dropped_total: stats.dropped_total,
                        first_seq,
                        last_seq,
                    })),
                };
                tx.send(drops).await.map_err(|_| UplinkError::Closed)?;
                reported_drops = stats.dropped_total;
            }
            if send_now {
                let skip: HashSet<u64> = in_flight.values().flatten().copied().collect();
                // One batch per wake-up: the results probed since the last batch, at once,
                // and as much of a backlog as the pace allows, oldest first, with the newest
                // results riding along (a quarter of the batch at least).
                let newest = self.spool.last_seq();
                let new = usize::try_from(newest.saturating_sub(seen_up_to)).unwrap_or(usize::MAX);
                seen_up_to = seen_up_to.max(newest);
                fresh_owed = fresh_owed.saturating_add(new).min(max_batch);
                let fresh = fresh_owed;
                let may_backlog = backlog_batches.len() < backlog_window;
                let n =
                    if may_backlog { pace.available(fresh) } else { fresh.min(pace.available(fresh)) }.min(max_batch);
                let waiting = usize::try_from(self.spool.stats().pending).unwrap_or(usize::MAX);
                let worth = (fresh > 0 && n >= fresh.min(pace.min_chunk()))
                    || n >= pace.min_chunk()
                    || n >= waiting.min(max_batch);
                if in_flight.len() < MAX_IN_FLIGHT && n > 0 && worth {
                    let newest_first = (n / 4 + 1).max(fresh).min(n);
                    let batch = on_spool(&self.spool, move |s| s.pending(n, newest_first, &skip)).await?;
                    let batch = within_message(batch);
                    if !batch.is_empty() {
                        pace.spend(batch.len(), fresh);
                        fresh_owed -= fresh.min(batch.len());
                        // Results staged since `newest` was read may ride in this batch; they
                        // are not fresh again next time.
                        seen_up_to = seen_up_to.max(batch.iter().map(|r| r.seq).max().unwrap_or(0));
                        let id = next_batch;
                        next_batch += 1;
                        if batch.len() > fresh {
                            backlog_batches.insert(id);
                        }
                        in_flight.insert(id, batch.iter().map(|r| r.seq).collect());
                        let msg = AgentMessage {
                            kind: Some(agent_message::Kind::Batch(ResultBatch { batch_id: id, results: batch })),
                        };
                        tx.send(msg).await.map_err(|_| UplinkError::Closed)?;
                    }
                }
            }
            if draining_until.is_some() && in_flight.is_empty() && self.spool.stats().pending == 0 {
                goodbye(tx, inbound).await;
                return Ok(End::Stopped);
            }
        }
    }
}

/// How long a clean stop waits for the collector to close its side after the goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// Tells the collector this agent is stopping cleanly (stopped, not silent), ends the stream,
/// and waits a moment for the collector to end its side: it has read the goodbye by then.
async fn goodbye(
    tx: mpsc::Sender<AgentMessage>,
    mut inbound: tonic::Streaming<blockwatch_proto::v1::CollectorMessage>,
) {
    let bye = AgentMessage { kind: Some(agent_message::Kind::Goodbye(Goodbye {})) };
    if tx.send(bye).await.is_err() {
        return;
    }
    drop(tx);
    let _ = tokio::time::timeout(GOODBYE_WAIT, async { while let Ok(Some(_)) = inbound.message().await {} }).await;
}

/// Most bytes of results in one batch message: under the gRPC message limit with room for
/// the envelope.
const BATCH_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// The oldest results of `batch` (in sequence order) that fit one message, at least one;
/// every result first held to the field bounds (a spool written by an older agent may hold
/// larger ones). The rest stay in the spool for the next batch, so one endpoint's huge
/// answers can never make a batch the collector refuses over and over.
fn within_message(mut batch: Vec<ProbeResult>) -> Vec<ProbeResult> {
    let mut bytes = 0;
    let mut keep = 0;
    for r in &mut batch {
        blockwatch_proto::bounds::cap_result(r);
        // As `ResultBatch.results` (field 2) frames it: key, length, message.
        let framed = prost::encoding::message::encoded_len(2, r);
        if keep > 0 && bytes + framed > BATCH_BYTES {
            break;
        }
        bytes += framed;
        keep += 1;
    }
    batch.truncate(keep);
    batch
}

/// How fast results go: `upload_rate` over everything sent (a token bucket with bursts of up
/// to one second's worth, or one batch if smaller), and, while the collector sets one, its
/// backlog pace over what was spooled before the last batch. Results probed since the last
/// batch are outside the collector's pace: they go at once.
struct Pace {
    own: TokenBucket,
    /// The collector's backlog pace; it holds a whole batch, so a slow pace still sends real
    /// batches (a quarter of one at least), not one result at a time: a collector that is
    /// behind is slowed further by many small messages.
    collector: Option<TokenBucket>,
    max_batch: usize,
}

impl Pace {
    fn new(rate: u32, max_batch: usize) -> Pace {
        Pace { own: TokenBucket::new(rate, f64::from(rate).min(max_batch as f64)), collector: None, max_batch }
    }

    /// Whether the collector has set a backlog pace.
    fn paced(&self) -> bool {
        self.collector.is_some()
    }

    /// The collector's backlog pace (0: none).
    fn collector(&mut self, rate: u32) {
        match (&mut self.collector, rate) {
            (_, 0) => self.collector = None,
            (Some(b), _) => b.set_rate(rate, self.max_batch as f64),
            // It starts empty: the pace holds from the moment it is set.
            (None, _) => self.collector = Some(TokenBucket::empty(rate, self.max_batch as f64)),
        }
    }

    /// Results that may be sent now, `fresh` of them probed since the last batch.
    fn available(&mut self, fresh: usize) -> usize {
        let backlog = self.collector.as_mut().map_or(usize::MAX, TokenBucket::available);
        self.own.available().min(backlog.saturating_add(fresh))
    }

    /// `n` results sent, `fresh` of them new since the last batch.
    fn spend(&mut self, n: usize, fresh: usize) {
        self.own.spend(n);
        if let Some(b) = &mut self.collector {
            b.spend(n.saturating_sub(fresh));
        }
    }

    /// The smallest batch worth sending while more is waiting: a quarter of the burst, so a
    /// drained bucket refills into real batches instead of one result per ack.
    fn min_chunk(&self) -> usize {
        let burst = self.collector.as_ref().map_or(self.own.burst(), |b| b.burst().min(self.own.burst()));
        ((burst / 4.0) as usize).max(1)
    }
}

/// Exponential backoff with full jitter: uniformly in [min, min·2^n] capped at the maximum.
fn backoff(failures: u32) -> Duration {
    let cap = BACKOFF_MIN.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_MAX);
    let span = cap.saturating_sub(BACKOFF_MIN).as_millis() as u64;
    BACKOFF_MIN + Duration::from_millis(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_allows_a_burst_then_the_rate() {
        let mut pace = Pace::new(40, 500);
        assert_eq!(pace.available(0), 40, "a second's worth to start");
        pace.spend(40, 0);
        assert_eq!(pace.available(0), 0);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(pace.available(0), 10);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pace.available(0), 40, "never more than the burst");
        let mut small_batches = Pace::new(1000, 50);
        assert_eq!(small_batches.available(0), 50);
        assert_eq!((pace.min_chunk(), small_batches.min_chunk(), Pace::new(1, 500).min_chunk()), (10, 12, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_collectors_pace_holds_the_backlog_and_not_fresh_results() {
        let mut pace = Pace::new(200, 100);
        pace.collector(8);
        assert_eq!(pace.available(0), 0, "the pace holds from the moment it is set");
        assert_eq!(pace.available(3), 3, "fresh results go at once");
        pace.spend(3, 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(pace.available(0), 40, "8 a second of backlog");
        assert_eq!(pace.min_chunk(), 25, "in chunks of a quarter batch");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(pace.available(0), 100, "up to a whole batch");
        pace.collector(0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.available(0), 100, "lifted: upload_rate alone (its burst, one batch)");
        pace.collector(500);
        pace.spend(100, 100);
        assert_eq!(pace.available(50), 0, "upload_rate holds everything, fresh results too");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 1..40 {
            let d = backoff(n);
            assert!(d >= BACKOFF_MIN && d <= BACKOFF_MAX, "{n}: {d:?}");
        }
        let early: Duration = (0..200).map(|_| backoff(1)).sum();
        let late: Duration = (0..200).map(|_| backoff(10)).sum();
        assert!(late > early * 4);
    }

    /// Results as large as the bounds allow fill a batch by size, not count: the message
    /// stays under the limit, the oldest go first, and the rest wait for the next batch.
    #[test]
    fn batches_fill_by_encoded_size() {
        use prost::Message;
        // Each field over its bound; capped, a result is still some 18 KB, so 500 of them
        // are twice the message limit.
        let huge = "x".repeat(1024);
        let batch: Vec<ProbeResult> = (1..=500)
            .map(|seq| ProbeResult {
                seq,
                detail: huge.clone(),
                provider_code: huge.clone(),
                edge_headers: (0..40).map(|i| (format!("h{i}"), huge.clone())).collect(),
                resolved_addresses: vec![huge.clone(); 40],
                ..Default::default()
            })
            .collect();
        let sent = within_message(batch);
        assert!(sent.len() > 1 && sent.len() < 500, "{} results", sent.len());
        assert_eq!(sent.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=sent.len() as u64).collect::<Vec<_>>());
        let msg = ResultBatch { batch_id: 1, results: sent };
        assert!(msg.encoded_len() <= MAX_MESSAGE_BYTES - 60 * 1024, "{}", msg.encoded_len());
        let one = within_message(vec![ProbeResult { seq: 9, detail: huge, ..Default::default() }]);
        assert_eq!(one.len(), 1, "a single result always goes, held to the bounds");
        assert!(one[0].detail.len() <= blockwatch_proto::bounds::DETAIL_BYTES);
    }
}
