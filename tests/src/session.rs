//! A hand-driven agent session over the real gRPC API, plaintext or mutual TLS: what the
//! attack tests speak to the collector with.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, to_timestamp};
use blockwatch_proto::v1::fleet_client::FleetClient;
use blockwatch_proto::v1::{
    AgentMessage, CollectorMessage, Hello, ProbeResult, RegisterRequest, ResultBatch, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A plaintext client of the collector at `addr`.
pub async fn plain_client(addr: SocketAddr) -> FleetClient<Channel> {
    FleetClient::connect(format!("http://{addr}")).await.expect("connect")
}

/// A TLS client of the collector at `addr` that trusts `ca` (PEM file) and presents the
/// certificate in `certs` (`agent.crt`, `agent.key`, as `ca issue-agent` writes them), or
/// none. Connection errors are returned: refusing them is what some tests expect.
pub async fn tls_client(addr: SocketAddr, ca: &Path, certs: Option<&Path>) -> Result<FleetClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("127.0.0.1");
    if let Some(dir) = certs {
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        tls = tls.identity(Identity::from_pem(read("agent.crt"), read("agent.key")));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    let channel = ep.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(FleetClient::new(channel))
}

/// A result of `agent` in `region`, probe id `AGENT/1/SEQ`.
pub fn result(agent: &str, region: &str, seq: u64, target: &str, started_at: Millis, outcome: Outcome) -> ProbeResult {
    let mut r = ProbeResult {
        probe_id: format!("{agent}/1/{seq}"),
        agent_id: agent.into(),
        region: region.into(),
        target_id: target.into(),
        started_at: Some(to_timestamp(started_at)),
        ..Default::default()
    };
    r.set_outcome(outcome);
    if outcome == Outcome::HttpGeoBlocked {
        r.http_status = 403;
        r.provider_code = "unsupported_country_region_territory".into();
    }
    r
}

/// One agent's session: Register, hello, then batches, each answered.
pub struct Session {
    tx: mpsc::Sender<AgentMessage>,
    replies: tonic::Streaming<CollectorMessage>,
    next_batch: u64,
}

impl Session {
    /// Registers as `agent` in `region` and opens its Report stream.
    pub async fn open(mut c: FleetClient<Channel>, agent: &str, region: &str) -> Result<Session, tonic::Status> {
        let reg = RegisterRequest {
            agent_id: agent.into(),
            region: region.into(),
            version: "t".into(),
            ..Default::default()
        };
        c.register(reg).await?;
        Session::report(c, agent).await
    }

    /// Opens a Report stream whose hello says `agent` (no Register first).
    pub async fn report(mut c: FleetClient<Channel>, agent: &str) -> Result<Session, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: agent.into() })) })
            .await
            .unwrap();
        let replies = c.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        Ok(Session { tx, replies, next_batch: 1 })
    }

    /// The next message, or how the stream ended.
    pub async fn next_message(&mut self) -> Result<Option<CollectorMessage>, tonic::Status> {
        self.replies.message().await
    }
}

/// What the collector answered to one batch: the probe ids acked, and the ids refused with
/// the reason.
#[derive(Debug, Default)]
pub struct Answer {
    pub acked: Vec<String>,
    pub refused: Vec<String>,
    pub reason: String,
}

impl Session {
    /// Sends one batch and waits for its answer.
    pub async fn send(&mut self, results: Vec<ProbeResult>) -> Answer {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let msg = AgentMessage { kind: Some(agent_message::Kind::Batch(ResultBatch { batch_id, results })) };
        self.tx.send(msg).await.expect("stream open");
        let mut answer = Answer::default();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.replies.message())
                .await
                .expect("an answer in time")
                .expect("stream healthy")
                .expect("stream open");
            match m.kind {
                Some(collector_message::Kind::Reject(r)) if r.batch_id == batch_id => {
                    answer.refused.extend(r.probe_ids);
                    answer.reason = r.reason;
                }
                Some(collector_message::Kind::Ack(a)) if a.batch_id == batch_id => {
                    answer.acked = a.probe_ids;
                    return answer;
                }
                // A batch refused whole has a reject and no ack.
                _ if !answer.refused.is_empty() && answer.acked.is_empty() && answer.reason.contains("max_batch") => {
                    return answer;
                }
                _ => {}
            }
        }
    }
}

/// Results per batch of [`stream_agent`].
const BATCH: usize = 64;

/// A generated trace, moved to end an hour ago: the collector takes only results that
/// started in a window around their receipt.
pub fn sample_trace(family: blockwatch_sim::Family, seed: u64) -> blockwatch_sim::Trace {
    let trace = blockwatch_sim::generate(&blockwatch_sim::Params::new(family, 60, 3, seed));
    let hour_ago = blockwatch_proto::time::now() - 3_600_000;
    trace.shifted(hour_ago - trace.end, "")
}

/// [`sample_trace`]'s records.
pub fn sample(family: blockwatch_sim::Family, seed: u64) -> Vec<blockwatch_proto::trace::TraceRecord> {
    sample_trace(family, seed).trace_records()
}

/// One agent: Register, then its results in trace order, a batch at a time, each acked.
pub async fn stream_agent(addr: std::net::SocketAddr, agent: String, region: String, results: Vec<ProbeResult>) {
    let mut client = FleetClient::connect(format!("http://{addr}")).await.expect("connect");
    client
        .register(RegisterRequest { agent_id: agent.clone(), region, version: "test".into(), ..Default::default() })
        .await
        .expect("register");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: agent.clone() })) }).await.unwrap();
    let mut replies =
        client.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("report").into_inner();
    for (i, chunk) in results.chunks(BATCH).enumerate() {
        let batch_id = i as u64 + 1;
        let batch = ResultBatch { batch_id, results: chunk.to_vec() };
        tx.send(AgentMessage { kind: Some(agent_message::Kind::Batch(batch)) }).await.unwrap();
        loop {
            let m = replies.message().await.expect("reply").expect("stream open");
            match m.kind {
                Some(collector_message::Kind::Ack(a)) if a.batch_id == batch_id => {
                    assert_eq!(a.probe_ids.len(), chunk.len(), "{agent}: every result acked");
                    break;
                }
                Some(collector_message::Kind::Reject(r)) => panic!("{agent}: rejected: {}", r.reason),
                _ => {}
            }
        }
    }
    // Half-close and wait for the collector to end the stream: it has then let go of the
    // agent id, so a caller streaming the same agent again is not refused as connected.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = replies.message().await {} })
        .await
        .unwrap_or_else(|_| panic!("{agent}: the collector ends the stream after a half-close"));
}

/// Every agent of `per_agent` (agent → region and results, in order) streams its results at
/// once to the collector at `addr`, each batch acked; returns when all are.
pub fn stream_all(addr: SocketAddr, per_agent: std::collections::BTreeMap<String, (String, Vec<ProbeResult>)>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = per_agent
            .into_iter()
            .map(|(agent, (region, results))| tokio::spawn(stream_agent(addr, agent, region, results)))
            .collect();
        for t in tasks {
            t.await.expect("agent task");
        }
    });
}

/// An enforcement wave: `target` refused in every region of `blocked` from the same round,
/// fine in `fine`; two agents a region, a probe a minute for the last hour.
pub fn wave(
    target: &str,
    blocked: &[&str],
    fine: &[&str],
) -> std::collections::BTreeMap<String, (String, Vec<ProbeResult>)> {
    let t0 = blockwatch_proto::time::now() - 3_600_000;
    let mut out = std::collections::BTreeMap::new();
    for (region, refused) in blocked.iter().map(|r| (r, true)).chain(fine.iter().map(|r| (r, false))) {
        for n in 1..=2 {
            let agent = format!("{region}-{n}");
            let results = (0..60u64)
                .map(|i| {
                    let outcome = if refused && i >= 40 { Outcome::HttpGeoBlocked } else { Outcome::Ok };
                    let at = t0 + i as i64 * 60_000 + n as i64 * 1000;
                    result(&agent, region, i + 1, target, at, outcome)
                })
                .collect();
            out.insert(agent, (region.to_string(), results));
        }
    }
    out
}
