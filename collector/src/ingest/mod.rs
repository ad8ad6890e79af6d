//! gRPC ingest: the `Fleet` service agents talk to.

mod budget;
mod limits;
mod pacer;
mod validate;
mod wire;

pub use budget::{Budget, Ledger};
pub use limits::Limits;
pub use pacer::Pacer;
pub use wire::ReportRoute;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use blockwatch_proto::time;
use blockwatch_proto::v1::fleet_server::Fleet;
use blockwatch_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Plan, ProbeNow, RegisterRequest, RegisterResponse, Reject, agent_message,
    collector_message,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::listen::PeerInfo;
use crate::store::Store;
use crate::tls::{AgentIdentity, ServerTls};

/// A certificate this close to expiry is warned about at registration and in `/v1/agents`.
pub const ROTATE_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Messages queued towards one agent (acks, plans). When full, the stream's reader waits:
/// an agent that does not read its acks stops being read.
pub const OUTBOUND_QUEUE: usize = 64;

/// Agents not heard from (no result, no heartbeat) for this many heartbeat intervals are
/// silent.
pub const SILENT_AFTER_HEARTBEATS: u32 = 3;

/// What the collector knows of an agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub region: String,
    pub version: String,
    pub last_seen: time::Millis,
    pub spooled: u64,
    pub dropped_total: u64,
    /// Results refused as malformed or out of bounds.
    pub refused_total: u64,
    /// The certificate it registered with (mutual TLS only).
    pub cert: Option<Arc<AgentIdentity>>,
    /// The egress network its latest result named: (address, ASN, AS organisation, country).
    pub egress: Option<(String, u32, String, String)>,
    /// It said goodbye (a clean stop) and has not registered since: stopped, not silent.
    pub stopped: bool,
    /// When a refusal of this agent's results was last logged (one line a minute at most).
    last_refusal_logged: time::Millis,
}

/// An agent as the store keeps it, so the registry survives a restart.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedAgent {
    region: String,
    version: String,
    last_seen: time::Millis,
    dropped_total: u64,
    refused_total: u64,
    egress: Option<(String, u32, String, String)>,
    stopped: bool,
}

impl SavedAgent {
    fn of(a: &AgentInfo) -> SavedAgent {
        SavedAgent {
            region: a.region.clone(),
            version: a.version.clone(),
            last_seen: a.last_seen,
            dropped_total: a.dropped_total,
            refused_total: a.refused_total,
            egress: a.egress.clone(),
            stopped: a.stopped,
        }
    }
}

/// Agents not heard from for this long are forgotten at start-up (they were reported silent
/// long before).
pub const FORGET_AFTER: time::Millis = 30 * 86_400_000;

/// The registry the store kept: every record that reads back, of an agent still admitted
/// (`allowed`, when not empty) and heard from within [`FORGET_AFTER`], the most recently
/// heard `max` of them (a record that does not read back is skipped, and said).
fn load_agents(store: &Store, max: usize, allowed: &[String]) -> HashMap<String, AgentInfo> {
    let saved = match store.saved_agents() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the saved agent registry; starting without it");
            return HashMap::new();
        }
    };
    let cutoff = time::now() - FORGET_AFTER;
    let mut records: Vec<(String, SavedAgent)> = Vec::new();
    for (id, bytes) in saved {
        match serde_json::from_slice::<SavedAgent>(&bytes) {
            Ok(s) if blockwatch_proto::id::check(&id).is_ok() => {
                if s.last_seen >= cutoff && (allowed.is_empty() || allowed.contains(&id)) {
                    records.push((id, s));
                }
            }
            _ => tracing::warn!(agent_id = %id, "skipped a saved agent record that does not read back"),
        }
    }
    records.sort_by_key(|(_, s)| std::cmp::Reverse(s.last_seen));
    records.truncate(max);
    let mut agents = HashMap::new();
    for (id, s) in records {
        let info = AgentInfo {
            region: s.region,
            version: s.version,
            last_seen: s.last_seen,
            spooled: 0,
            dropped_total: s.dropped_total,
            refused_total: s.refused_total,
            cert: None,
            egress: s.egress,
            stopped: s.stopped,
            last_refusal_logged: 0,
        };
        agents.insert(id, info);
    }
    agents
}

/// How often refusals of one agent's results are logged, at most.
const REFUSAL_LOG_EVERY: time::Millis = 60_000;

type Outbound = mpsc::Sender<Result<CollectorMessage, Status>>;

/// The open Report streams, by agent, with the agent's region: how the collector reaches
/// agents outside a reply (probe requests).
#[derive(Default)]
pub struct Streams(Mutex<HashMap<String, (String, Outbound)>>);

impl Streams {
    /// Sends `ProbeNow(target)` to every agent of `region` with an open stream; returns how
    /// many were asked. Never waits: an agent whose outbound queue is full is skipped.
    pub fn probe_now(&self, target: &str, region: &str, reason: &str) -> usize {
        let Ok(streams) = self.0.lock() else { return 0 };
        let mut asked = 0;
        for (agent, (r, tx)) in streams.iter() {
            if r != region {
                continue;
            }
            let m = msg(collector_message::Kind::ProbeNow(ProbeNow {
                target_id: target.to_string(),
                reason: reason.to_string(),
            }));
            match tx.try_send(m) {
                Ok(()) => asked += 1,
                Err(_) => tracing::debug!(agent, target, "probe request skipped: the agent's queue is full"),
            }
        }
        asked
    }

    /// Open Report streams.
    pub fn count(&self) -> usize {
        self.0.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Sends `m()` to every open stream; returns how many took it and how many did not.
    /// Never waits: an agent whose outbound queue is full is skipped.
    fn broadcast(&self, m: impl Fn() -> Result<CollectorMessage, Status>) -> (usize, usize) {
        let Ok(streams) = self.0.lock() else { return (0, 0) };
        let took = streams.values().filter(|(_, tx)| tx.try_send(m()).is_ok()).count();
        (took, streams.len() - took)
    }

    /// Agents with an open Report stream.
    pub fn connected(&self) -> std::collections::HashSet<String> {
        self.0.lock().map(|s| s.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether `agent` has a Report stream open now (one whose receiver is gone is closed).
    pub fn is_open(&self, agent: &str) -> bool {
        self.0.lock().is_ok_and(|s| live(&s, agent))
    }

    /// Lists a new stream, first sending it `first()` if that gives a message (under the
    /// same lock as `broadcast`, so it cannot overtake a newer one); false when the agent
    /// has one open already.
    fn open(
        &self,
        agent: &str,
        region: String,
        tx: Outbound,
        first: impl FnOnce() -> Option<Result<CollectorMessage, Status>>,
    ) -> bool {
        let Ok(mut s) = self.0.lock() else { return false };
        if live(&s, agent) {
            return false;
        }
        if let Some(m) = first() {
            let _ = tx.try_send(m);
        }
        s.insert(agent.to_string(), (region, tx));
        true
    }

    fn close(&self, agent: &str, tx: &Outbound) {
        if let Ok(mut s) = self.0.lock() {
            // A reconnect may already have replaced this stream.
            if s.get(agent).is_some_and(|(_, t)| t.same_channel(tx)) {
                s.remove(agent);
            }
        }
    }
}

fn live(streams: &HashMap<String, (String, Outbound)>, agent: &str) -> bool {
    streams.get(agent).is_some_and(|(_, tx)| !tx.is_closed())
}

/// State shared by all streams.
pub struct Ingest {
    store: Store,
    allowed: Vec<String>,
    max_batch: u32,
    heartbeat: std::time::Duration,
    plan: watch::Receiver<Option<Plan>>,
    agents: Mutex<HashMap<String, AgentInfo>>,
    /// What was last saved of each agent (its last-seen time and whether stopped).
    saved: Mutex<HashMap<String, (time::Millis, bool)>>,
    /// When this collector started: silence is counted from when it could first hear.
    started: time::Millis,
    /// Held across a save, so saves land in the store in the order `saved` records them.
    saving: Mutex<()>,
    /// The target ids each agent has reported (bounded by `limits.max_targets_per_agent`).
    targets: Mutex<HashMap<String, HashSet<String>>>,
    limits: Limits,
    streams: Arc<Streams>,
    stop: watch::Sender<bool>,
    /// With mutual TLS: the current configuration (its revoked serials). `None`: plaintext,
    /// agents unauthenticated.
    tls: Option<watch::Receiver<ServerTls>>,
    metrics: crate::metrics::IngestMetrics,
    /// Clustered mode's ingest role: results go to JetStream, not to the store.
    publisher: Option<crate::jetstream::Publisher>,
    /// What agents' messages may hold in memory at once (`limits.ingest_buffer_mib`).
    budget: Budget,
    /// The backlog pace agents are told (see `pacer.rs`).
    pacer: Pacer,
}

impl Ingest {
    /// Builds the service over a store (which feeds the detector); open streams are listed in
    /// `streams`.
    pub fn new(
        store: Store,
        cfg: &crate::config::CollectorConfig,
        plan: watch::Receiver<Option<Plan>>,
        streams: Arc<Streams>,
        tls: Option<watch::Receiver<ServerTls>>,
    ) -> Ingest {
        let agents = load_agents(&store, cfg.limits.max_agents, &cfg.agents);
        let saved = agents.iter().map(|(id, a)| (id.clone(), (a.last_seen, a.stopped))).collect();
        Ingest {
            store,
            allowed: cfg.agents.clone(),
            max_batch: cfg.max_batch,
            heartbeat: cfg.heartbeat_interval,
            plan,
            agents: Mutex::new(agents),
            saved: Mutex::new(saved),
            started: time::now(),
            saving: Mutex::new(()),
            targets: Mutex::new(HashMap::new()),
            limits: cfg.limits.clone(),
            streams,
            stop: watch::channel(false).0,
            tls,
            metrics: crate::metrics::IngestMetrics::default(),
            publisher: None,
            budget: Budget::new(cfg.limits.ingest_buffer_mib as usize * 1024 * 1024),
            pacer: Pacer::default(),
        }
    }

    /// Starts telling agents how fast to send their backlogs; runs while `ingest` lives.
    pub fn spawn_pacer(ingest: &Arc<Ingest>) {
        tokio::spawn(pacer::run(Arc::downgrade(ingest)));
    }

    /// The backlog pace agents are told.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// The budget every Report stream's messages are read through.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Sends results to JetStream through `p` instead of the store (clustered ingest).
    pub fn publish_to(mut self, p: crate::jetstream::Publisher) -> Ingest {
        self.publisher = Some(p);
        self
    }

    /// What ingest counts, for `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::IngestMetrics {
        &self.metrics
    }

    /// With mutual TLS, the identity the connection's certificate proves, which `agent_id`
    /// (and `region`, when given) must match; `Ok(None)` on a plaintext port.
    fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        agent_id: &str,
        region: Option<&str>,
    ) -> Result<Option<Arc<AgentIdentity>>, Status> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let Some(id) = peer.and_then(|p| p.identity.clone()) else {
            return Err(Status::unauthenticated("no verified client certificate on this connection"));
        };
        if tls.borrow().revoked.contains(&id.serial) {
            return Err(revoked(&id));
        }
        if id.agent_id != agent_id {
            let remote = peer.and_then(|p| p.remote);
            tracing::warn!(certificate = %id.agent_id, claimed = %agent_id, ?remote, "refused a claim of another agent's id");
            return Err(Status::permission_denied(format!(
                "this connection's certificate is agent {:?}'s; it cannot speak for agent {agent_id:?}",
                id.agent_id
            )));
        }
        if let Some(region) = region
            && region != id.region
        {
            let remote = peer.and_then(|p| p.remote);
            tracing::warn!(agent_id, certificate = %id.region, claimed = %region, ?remote, "refused a claim of another region");
            return Err(Status::permission_denied(format!(
                "agent {agent_id:?}'s certificate is for region {:?}, not {region:?}",
                id.region
            )));
        }
        Ok(Some(id))
    }

    /// Ends every open Report stream (agents reconnect elsewhere or later).
    pub fn close_streams(&self) {
        self.stop.send_replace(true);
    }

    /// Becomes true when the streams are closed for shutdown.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Whether results sent now would be stored; the error says why not.
    pub fn readiness(&self) -> Result<(), String> {
        if *self.stop.borrow() {
            return Err("shutting down".into());
        }
        self.store.accepting().map_err(|e| e.to_string())
    }

    /// How often agents are told to send heartbeats.
    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat
    }

    /// When this collector started.
    pub fn started(&self) -> time::Millis {
        self.started
    }

    /// Whether nothing (no result, no heartbeat) has been heard from `agent` for
    /// `SILENT_AFTER_HEARTBEATS` heartbeat intervals, at `now`.
    /// An agent that said goodbye is stopped, never silent; one known from before this
    /// collector started is given the same intervals from the start to be heard again.
    pub fn is_silent(&self, agent: &AgentInfo, now: time::Millis) -> bool {
        let limit = (self.heartbeat * SILENT_AFTER_HEARTBEATS).as_millis();
        !agent.stopped && now - agent.last_seen.max(self.started) > i64::try_from(limit).unwrap_or(i64::MAX)
    }

    /// Saves the agents whose record changed since the last save (`durable`: waits for the
    /// disk); returns how many. Blocking.
    pub fn save_agents(&self, durable: bool) -> Result<usize, crate::store::StoreError> {
        let Ok(_saving) = self.saving.lock() else { return Ok(0) };
        let changed: Vec<(String, Vec<u8>, (time::Millis, bool))> = {
            let (Ok(agents), Ok(saved)) = (self.agents.lock(), self.saved.lock()) else { return Ok(0) };
            agents
                .iter()
                .filter(|(id, a)| saved.get(*id) != Some(&(a.last_seen, a.stopped)))
                .map(|(id, a)| {
                    let record = serde_json::to_vec(&SavedAgent::of(a)).unwrap_or_default();
                    (id.clone(), record, (a.last_seen, a.stopped))
                })
                .collect()
        };
        if changed.is_empty() {
            return Ok(0);
        }
        let records: Vec<(String, Vec<u8>)> = changed.iter().map(|(id, r, _)| (id.clone(), r.clone())).collect();
        self.store.save_agents(&records, durable)?;
        if let Ok(mut saved) = self.saved.lock() {
            for (id, _, mark) in changed {
                saved.insert(id, mark);
            }
        }
        Ok(records.len())
    }

    /// The open Report streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Known agents and what was last heard of them.
    pub fn agents(&self) -> HashMap<String, AgentInfo> {
        self.agents.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn touch(&self, agent_id: &str, f: impl FnOnce(&mut AgentInfo)) {
        if let Ok(mut agents) = self.agents.lock()
            && let Some(a) = agents.get_mut(agent_id)
        {
            a.last_seen = time::now();
            f(a);
        }
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<CollectorMessage, Status>> + Send>>;

fn already_connected(agent_id: &str) -> Status {
    Status::already_exists(format!(
        "agent {agent_id:?} is connected already: another process is running with this agent_id, \
         or its previous connection has not been closed yet"
    ))
}

fn revoked(id: &AgentIdentity) -> Status {
    Status::permission_denied(format!("certificate {} of agent {:?} is revoked", id.serial, id.agent_id))
}

/// Whether `cert` expires within `ROTATE_WARNING` of `now`.
pub fn expires_soon(cert: &AgentIdentity, now: time::Millis) -> bool {
    cert.not_after.saturating_mul(1000) - now < ROTATE_WARNING.as_millis() as i64
}

/// Resolves when the stream's certificate is revoked (the CA directory reloaded with its
/// serial listed) or expires; never on a plaintext port.
async fn until_invalid(tls: Option<watch::Receiver<ServerTls>>, cert: Option<Arc<AgentIdentity>>) -> Status {
    let (Some(mut tls), Some(cert)) = (tls, cert) else { return std::future::pending().await };
    let left = u64::try_from(cert.not_after.saturating_mul(1000) - time::now()).unwrap_or(0);
    let expiry = tokio::time::sleep(std::time::Duration::from_millis(left));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            changed = tls.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                if tls.borrow_and_update().revoked.contains(&cert.serial) {
                    return revoked(&cert);
                }
            }
            _ = &mut expiry => {
                return Status::unauthenticated(format!("certificate {} of agent {:?} expired", cert.serial, cert.agent_id));
            }
        }
    }
}

fn msg(kind: collector_message::Kind) -> Result<CollectorMessage, Status> {
    Ok(CollectorMessage { kind: Some(kind) })
}

/// The tonic service over shared ingest state.
#[derive(Clone)]
pub struct FleetService(pub Arc<Ingest>);

impl std::ops::Deref for FleetService {
    type Target = Ingest;
    fn deref(&self) -> &Ingest {
        &self.0
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let req = request.into_inner();
        if let Err(rule) = blockwatch_proto::id::check(&req.agent_id) {
            return Err(Status::invalid_argument(format!("agent_id {:?}: {rule}", req.agent_id)));
        }
        if let Err(rule) = blockwatch_proto::id::check(&req.region) {
            return Err(Status::invalid_argument(format!("region {:?}: {rule}", req.region)));
        }
        if !self.allowed.is_empty() && !self.allowed.contains(&req.agent_id) {
            tracing::warn!(agent_id = %req.agent_id, "refused unknown agent");
            return Err(Status::permission_denied(format!(
                "agent {:?} is not in the collector's agent list",
                req.agent_id
            )));
        }
        let cert = self.authenticate(peer.as_ref(), &req.agent_id, Some(&req.region))?;
        if req.version.len() > self.limits.max_field_bytes {
            return Err(Status::invalid_argument(format!(
                "version of {} bytes: at most {}",
                req.version.len(),
                self.limits.max_field_bytes
            )));
        }
        // A second process with the same id would interleave its results with the first's.
        if self.streams.is_open(&req.agent_id) {
            tracing::warn!(agent_id = %req.agent_id, "refused a second registration of a connected agent");
            return Err(already_connected(&req.agent_id));
        }
        {
            let Ok(mut agents) = self.agents.lock() else { return Err(Status::internal("agent table unavailable")) };
            if !agents.contains_key(&req.agent_id) && agents.len() >= self.limits.max_agents {
                tracing::warn!(agent_id = %req.agent_id, max_agents = self.limits.max_agents, "refused a new agent: agent table full");
                return Err(Status::resource_exhausted(format!(
                    "the collector tracks limits.max_agents = {} agents already",
                    self.limits.max_agents
                )));
            }
            let previous = agents.get(&req.agent_id);
            let info = AgentInfo {
                region: req.region.clone(),
                version: req.version.clone(),
                last_seen: time::now(),
                spooled: 0,
                dropped_total: previous.map_or(0, |a| a.dropped_total),
                refused_total: previous.map_or(0, |a| a.refused_total),
                cert: cert.clone(),
                egress: previous.and_then(|a| a.egress.clone()),
                stopped: false,
                last_refusal_logged: 0,
            };
            agents.insert(req.agent_id.clone(), info);
        }
        let ingest = Arc::clone(&self.0);
        if let Err(e) = tokio::task::spawn_blocking(move || ingest.save_agents(false)).await.unwrap_or(Ok(0)) {
            tracing::warn!(agent_id = %req.agent_id, error = %e, "cannot save the agent registry");
        }
        tracing::info!(agent_id = %req.agent_id, region = %req.region, version = %req.version, "agent registered");
        if let Some(c) = &cert
            && expires_soon(c, time::now())
        {
            tracing::warn!(
                agent_id = %req.agent_id,
                serial = %c.serial,
                expires = %time::format_rfc3339(c.not_after.saturating_mul(1000)),
                "agent certificate expires within 30 days: issue a new one (`blockwatch-collector ca issue-agent`)"
            );
        }
        // An agent still on a plan from before a restart without `[plan]` goes back to its own.
        let plan = match self.plan.borrow().clone() {
            None if req.plan_version != 0 => Some(crate::plan::withdrawn()),
            plan => plan,
        };
        Ok(Response::new(RegisterResponse {
            plan,
            max_batch: self.max_batch,
            heartbeat_interval: Some(prost_types::Duration { seconds: self.heartbeat.as_secs() as i64, nanos: 0 }),
            backlog_per_second: self.pacer.rate(),
        }))
    }

    type ReportStream = ReportStream;

    /// Reached only when the generated server is served alone: the collector serves Report
    /// through [`ReportRoute`], which reads the stream through the ingest budget.
    async fn report(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<ReportStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let replies = self.0.open_report(peer, None, Box::pin(request.into_inner())).await?;
        Ok(Response::new(replies))
    }
}

/// An agent's messages on its Report stream, as decoded.
pub(crate) type Inbound = Pin<Box<dyn Stream<Item = Result<AgentMessage, Status>> + Send>>;

impl Ingest {
    /// Opens a Report stream: reads its hello, authenticates the agent, and serves the rest
    /// of the stream in a task of its own. `ledger` holds the budget's charges for the
    /// stream's messages; each is released once that message is done with.
    pub(crate) async fn open_report(
        self: &Arc<Self>,
        peer: Option<PeerInfo>,
        ledger: Option<Arc<Ledger>>,
        mut inbound: Inbound,
    ) -> Result<ReportStream, Status> {
        use futures_util::StreamExt;
        let hello = inbound.next().await.transpose()?;
        release(&ledger);
        let agent_id = match hello {
            Some(AgentMessage { kind: Some(agent_message::Kind::Hello(h)) }) => h.agent_id,
            _ => return Err(Status::invalid_argument("the first message of a Report stream must be hello")),
        };
        // Only ids by the rule ever register, so no other can be echoed back at length.
        if let Err(rule) = blockwatch_proto::id::check(&agent_id) {
            return Err(Status::invalid_argument(format!("hello agent_id {rule}")));
        }
        let cert = self.authenticate(peer.as_ref(), &agent_id, None)?;
        let region = self.agents.lock().ok().and_then(|a| a.get(&agent_id).map(|i| i.region.clone()));
        let Some(region) = region else {
            return Err(Status::failed_precondition(format!(
                "agent {agent_id:?} has not registered; call Register first"
            )));
        };
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let rate = || Some(self.pacer.rate()).filter(|r| *r > 0).map(pacer::pace);
        if !self.streams.open(&agent_id, region.clone(), tx.clone(), rate) {
            return Err(already_connected(&agent_id));
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let ended = this.serve_stream(&agent_id, &region, cert, inbound, ledger, &tx).await;
            this.streams.close(&agent_id, &tx);
            if let Err(status) = ended {
                tracing::warn!(agent_id = %agent_id, error = %status.message(), "report stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn serve_stream(
        self: &Arc<Self>,
        agent_id: &str,
        region: &str,
        cert: Option<Arc<AgentIdentity>>,
        mut inbound: Inbound,
        ledger: Option<Arc<Ledger>>,
        tx: &mpsc::Sender<Result<CollectorMessage, Status>>,
    ) -> Result<(), Status> {
        let invalidated = until_invalid(self.tls.clone(), cert);
        tokio::pin!(invalidated);
        let mut plan = self.plan.clone();
        plan.mark_unchanged();
        let mut plan_open = true;
        let mut stop = self.stop.subscribe();
        // One second's burst; past it the stream is read more slowly, refusing nothing.
        let per_second = self.limits.max_results_per_second;
        let mut pace = blockwatch_proto::pace::TokenBucket::new(per_second, f64::from(per_second));
        loop {
            let message = tokio::select! {
                m = futures_util::StreamExt::next(&mut inbound) => m.transpose()?,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
                status = &mut invalidated => {
                    tracing::warn!(agent_id, error = %status.message(), "closed a report stream");
                    return Err(status);
                }
                changed = plan.changed(), if plan_open => {
                    if changed.is_err() {
                        plan_open = false;
                        continue;
                    }
                    let current = plan.borrow_and_update().clone();
                    if let Some(p) = current
                        && tx.send(msg(collector_message::Kind::Plan(p))).await.is_err() {
                            return Ok(());
                        }
                    continue;
                }
            };
            let Some(message) = message else { return Ok(()) };
            // Done with once handled: a batch once stored (its replies are small).
            let _done = Released(&ledger);
            match message.kind {
                Some(agent_message::Kind::Batch(batch)) => {
                    pace.take(batch.results.len()).await;
                    for reply in self.ingest_batch(agent_id, region, batch).await? {
                        if tx.send(Ok(reply)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(agent_message::Kind::Heartbeat(h)) => self.touch(agent_id, |a| a.spooled = h.spooled),
                Some(agent_message::Kind::Goodbye(_)) => {
                    tracing::info!(agent_id, "agent stopping cleanly");
                    self.touch(agent_id, |a| a.stopped = true);
                    let ingest = Arc::clone(self);
                    if let Err(e) = tokio::task::spawn_blocking(move || ingest.save_agents(true)).await.unwrap_or(Ok(0))
                    {
                        tracing::warn!(agent_id, error = %e, "cannot save the agent registry");
                    }
                }
                Some(agent_message::Kind::Drops(d)) => {
                    tracing::warn!(
                        agent_id,
                        dropped_total = d.dropped_total,
                        first_seq = d.first_seq,
                        last_seq = d.last_seq,
                        "agent spool was full and dropped results"
                    );
                    self.touch(agent_id, |a| a.dropped_total = d.dropped_total);
                }
                Some(agent_message::Kind::Hello(_)) | None => {
                    return Err(Status::invalid_argument("unexpected message on an open Report stream"));
                }
            }
        }
    }

    async fn ingest_batch(
        &self,
        agent_id: &str,
        region: &str,
        batch: blockwatch_proto::v1::ResultBatch,
    ) -> Result<Vec<CollectorMessage>, Status> {
        let batch_id = batch.batch_id;
        if batch.results.len() > self.max_batch as usize {
            return Ok(vec![CollectorMessage {
                kind: Some(collector_message::Kind::Reject(Reject {
                    batch_id,
                    reason: format!("batch of {} results exceeds max_batch {}", batch.results.len(), self.max_batch),
                    probe_ids: batch.results.into_iter().map(|r| r.probe_id).collect(),
                })),
            }]);
        }
        let received_at = time::now();
        let from = validate::Sender { agent_id, region, received_at };
        let (good, bad): (Vec<_>, Vec<_>) = {
            let mut targets = self.targets.lock().map_err(|_| Status::internal("target table unavailable"))?;
            let known = targets.entry(agent_id.to_string()).or_default();
            batch
                .results
                .into_iter()
                .map(|r| {
                    let problem = validate::problem(&r, &from, &self.limits).or_else(|| {
                        let new = !known.contains(&r.target_id);
                        if new && known.len() >= self.limits.max_targets_per_agent {
                            return Some(format!(
                                "probe {}: target_id {:?} is new, and the agent reports limits.max_targets_per_agent = {} targets already",
                                r.probe_id, r.target_id, self.limits.max_targets_per_agent
                            ));
                        }
                        if new {
                            known.insert(r.target_id.clone());
                        }
                        None
                    });
                    (problem, r)
                })
                .partition(|(p, _)| p.is_none())
        };
        if !bad.is_empty() {
            self.note_refusals(agent_id, &bad, received_at);
            for (problem, r) in &bad {
                let reason = crate::metrics::reason_label(problem.as_deref().unwrap_or_default(), &r.probe_id);
                self.metrics.rejected.with_label_values(&[&reason]).inc();
            }
        }
        let good: Vec<_> = good.into_iter().map(|(_, r)| r).collect();
        let ids: Vec<String> = good.iter().map(|r| r.probe_id.clone()).collect();
        let outcomes: Vec<i32> = good.iter().map(|r| r.outcome).collect();
        let egress = good
            .iter()
            .rev()
            .find(|r| !r.egress_address.is_empty())
            .map(|r| (r.egress_address.clone(), r.egress_asn, r.egress_as_org.clone(), r.egress_country.clone()));
        let outcome = match &self.publisher {
            Some(p) => p
                .publish(good, received_at)
                .await
                .map_err(|e| Status::unavailable(blockwatch_proto::error::chain(&e)))?,
            None => self
                .store
                .write_results(good, received_at)
                .await
                .map_err(|e| Status::unavailable(format!("store: {e}")))?,
        };
        self.metrics
            .durable_seconds
            .with_label_values::<&str>(&[])
            .observe((time::now() - received_at).max(0) as f64 / 1000.0);
        let dups: HashSet<&str> = outcome.duplicates.iter().map(String::as_str).collect();
        for (id, o) in ids.iter().zip(&outcomes) {
            if !dups.contains(id.as_str()) {
                let name =
                    blockwatch_proto::Outcome::try_from(*o).unwrap_or(blockwatch_proto::Outcome::Unspecified).name();
                self.metrics.ingested.with_label_values(&[name]).inc();
            }
        }
        self.metrics.duplicates.with_label_values::<&str>(&[]).inc_by(dups.len() as u64);
        self.pacer.acked(ids.len());
        self.touch(agent_id, |a| {
            if egress.is_some() {
                a.egress = egress;
            }
        });
        let mut replies = Vec::with_capacity(2);
        if !bad.is_empty() {
            replies.push(CollectorMessage {
                kind: Some(collector_message::Kind::Reject(Reject {
                    batch_id,
                    reason: bad.iter().filter_map(|(p, _)| p.clone()).take(MAX_REASONS).collect::<Vec<_>>().join("; "),
                    probe_ids: bad.into_iter().map(|(_, r)| r.probe_id).collect(),
                })),
            });
        }
        replies.push(CollectorMessage {
            kind: Some(collector_message::Kind::Ack(Ack {
                batch_id,
                duplicates: outcome.duplicates.len() as u32,
                probe_ids: ids,
            })),
        });
        Ok(replies)
    }
}

/// Gives the stream's oldest admitted message's charge back to the budget.
fn release(ledger: &Option<Arc<Ledger>>) {
    if let Some(l) = ledger {
        l.release();
    }
}

/// Releases the message being handled when dropped, however its handling ends.
struct Released<'a>(&'a Option<Arc<Ledger>>);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Most reasons spelled out in one Reject (the probe ids list every refused result).
const MAX_REASONS: usize = 16;

impl Ingest {
    /// Counts refused results and logs them, at most once a minute per agent.
    fn note_refusals(
        &self,
        agent_id: &str,
        bad: &[(Option<String>, blockwatch_proto::v1::ProbeResult)],
        now: time::Millis,
    ) {
        let Ok(mut agents) = self.agents.lock() else { return };
        let Some(a) = agents.get_mut(agent_id) else { return };
        a.refused_total += bad.len() as u64;
        if now - a.last_refusal_logged >= REFUSAL_LOG_EVERY {
            a.last_refusal_logged = now;
            let reason = bad.iter().filter_map(|(p, _)| p.as_deref()).next().unwrap_or_default();
            tracing::warn!(agent_id, refused = bad.len(), refused_total = a.refused_total, %reason, "refused results");
        }
    }
}
