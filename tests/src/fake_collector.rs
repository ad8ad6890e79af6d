//! A stand-in collector for agent tests that need a collector misbehaving on purpose: one
//! that never acknowledges, acknowledges slowly, or pushes a given plan. It records what it
//! was sent.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockwatch_proto::v1::fleet_server::{Fleet, FleetServer};
use blockwatch_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Plan, RegisterRequest, RegisterResponse, agent_message, collector_message,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How the fake answers batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AckMode {
    /// Never acknowledges.
    Never,
    /// Acknowledges each batch after this delay.
    After(Duration),
}

/// What the fake saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub registrations: u32,
    pub batches: u32,
    pub results: u64,
    /// Most batches sent but not yet acknowledged at any moment.
    pub max_unacked: u32,
    pub unacked: u32,
    /// `spooled` of every heartbeat, in order.
    pub heartbeats: Vec<u64>,
}

#[derive(Clone)]
struct Svc {
    mode: AckMode,
    plan: Option<Plan>,
    seen: Arc<Mutex<Seen>>,
}

type Out = Pin<Box<dyn Stream<Item = Result<CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Fleet for Svc {
    async fn register(&self, _req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.seen.lock().unwrap().registrations += 1;
        Ok(Response::new(RegisterResponse {
            plan: self.plan.clone(),
            max_batch: 50,
            heartbeat_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            backlog_per_second: 0,
        }))
    }

    type ReportStream = Out;

    async fn report(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Out>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match m.kind {
                    Some(agent_message::Kind::Batch(b)) => {
                        {
                            let mut s = this.seen.lock().unwrap();
                            s.batches += 1;
                            s.results += b.results.len() as u64;
                            s.unacked += 1;
                            s.max_unacked = s.max_unacked.max(s.unacked);
                        }
                        if let AckMode::After(d) = this.mode {
                            let (tx, seen) = (tx.clone(), Arc::clone(&this.seen));
                            tokio::spawn(async move {
                                tokio::time::sleep(d).await;
                                seen.lock().unwrap().unacked -= 1;
                                let ack = Ack {
                                    batch_id: b.batch_id,
                                    probe_ids: b.results.into_iter().map(|r| r.probe_id).collect(),
                                    duplicates: 0,
                                };
                                let _ = tx
                                    .send(Ok(CollectorMessage { kind: Some(collector_message::Kind::Ack(ack)) }))
                                    .await;
                            });
                        }
                    }
                    Some(agent_message::Kind::Heartbeat(h)) => this.seen.lock().unwrap().heartbeats.push(h.spooled),
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A running fake collector.
pub struct FakeCollector {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeCollector {
    /// Starts on a free port of 127.0.0.1.
    pub fn start(mode: AckMode, plan: Option<Plan>) -> FakeCollector {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let svc = Svc { mode, plan, seen: Arc::clone(&seen) };
        let addr = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(FleetServer::new(svc))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            addr
        });
        FakeCollector { addr, seen, _rt: rt }
    }

    /// A copy of what it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

/// CPU time (user + system) a process has used, in seconds (from `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, k): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            Some((u + k) / ticks_per_s)
        })
        .unwrap_or(0.0)
}

/// Resident memory of a process in KiB (from `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
