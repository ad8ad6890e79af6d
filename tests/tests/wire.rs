//! The collector against bad peers: unknown agents, streams without registration, malformed
//! results, oversized batches, and raw garbage on its port. Each gets a precise answer and the
//! collector keeps serving.

use std::io::Write;
use std::time::Duration;

use blockwatch_proto::v1::fleet_client::FleetClient;
use blockwatch_proto::v1::{
    AgentMessage, Hello, ProbeResult, RegisterRequest, ResultBatch, agent_message, collector_message,
};
use blockwatch_tests::session::{Session, plain_client};
use blockwatch_tests::*;

fn register(agent: &str) -> RegisterRequest {
    RegisterRequest { agent_id: agent.into(), region: "r".into(), version: "test".into(), ..Default::default() }
}

fn result(id: &str, agent: &str, outcome: i32) -> ProbeResult {
    ProbeResult {
        probe_id: id.into(),
        agent_id: agent.into(),
        region: "r".into(),
        target_id: "t".into(),
        // A second ago: results must have started near their receipt.
        started_at: Some(blockwatch_proto::time::to_timestamp(blockwatch_proto::time::now() - 1000)),
        outcome,
        ..Default::default()
    }
}

#[test]
fn collector_answers_bad_peers_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "agents = [\"known\"]\nmax_batch = 10");
    // Raw garbage first: the collector must shrug it off.
    {
        let mut s = std::net::TcpStream::connect(collector.addr).unwrap();
        let _ = s.write_all(b"\x16\x03\x01 this is not http/2 at all \xff\xfe\x00\x00");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = FleetClient::connect(format!("http://{}", collector.addr)).await.unwrap();

        let err = client.register(register("stranger")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("\"stranger\""), "{}", err.message());
        // Ids follow the one rule everywhere, at ingest as in the agent's config.
        let err = client.register(register("bad id")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "agent_id \"bad id\": must be 1-64 of [A-Za-z0-9._-]");
        let mut bad_region = register("known");
        bad_region.region = "r/1".into();
        let err = client.register(bad_region).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("region \"r/1\""), "{}", err.message());

        // A stream from an agent that never registered.
        let hello = AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: "known".into() })) };
        let err = client.report(tokio_stream::iter(vec![hello.clone()])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

        client.register(register("known")).await.unwrap();
        let ok = blockwatch_proto::Outcome::Ok as i32;
        let msgs = vec![
            hello,
            AgentMessage {
                kind: Some(agent_message::Kind::Batch(ResultBatch {
                    batch_id: 1,
                    results: vec![
                        result("known/1/1", "known", ok),
                        result("known/1/2", "known", 999),
                        result("known/1/3", "other", ok),
                        ProbeResult { target_id: "no such/target".into(), ..result("known/1/4", "known", ok) },
                    ],
                })),
            },
            AgentMessage {
                kind: Some(agent_message::Kind::Batch(ResultBatch {
                    batch_id: 2,
                    results: (0..11).map(|i| result(&format!("known/1/{}", 10 + i), "known", ok)).collect(),
                })),
            },
        ];
        let mut inbound = client.report(tokio_stream::iter(msgs)).await.unwrap().into_inner();
        let mut replies = Vec::new();
        while replies.len() < 3 {
            let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
                .await
                .expect("reply in time")
                .expect("stream healthy")
                .expect("stream open");
            replies.push(m.kind.expect("message kind"));
        }
        let reject = match &replies[0] {
            collector_message::Kind::Reject(r) => r,
            other => panic!("wanted a reject first, got {other:?}"),
        };
        assert_eq!(reject.probe_ids, ["known/1/2", "known/1/3", "known/1/4"]);
        assert!(reject.reason.contains("target_id \"no such/target\": must be 1-64"), "{}", reject.reason);
        assert!(reject.reason.contains("outcome 999 is not a known outcome"), "{}", reject.reason);
        assert!(reject.reason.contains("differs from the stream's agent"), "{}", reject.reason);
        match &replies[1] {
            collector_message::Kind::Ack(a) => assert_eq!(a.probe_ids, ["known/1/1"]),
            other => panic!("wanted an ack, got {other:?}"),
        }
        match &replies[2] {
            collector_message::Kind::Reject(r) => assert!(r.reason.contains("exceeds max_batch 10"), "{}", r.reason),
            other => panic!("wanted a reject of the oversized batch, got {other:?}"),
        }
    });
    assert!(listening(collector.addr), "collector died");
    assert!(!collector.proc.log().contains("panicked"));
}

/// Agents that offer more than the collector takes are told a backlog pace, a stream opened
/// meanwhile is told it at once, and the pace is lifted once they stop.
#[test]
fn a_collector_that_falls_behind_paces_backlogs_and_lifts_the_pace() {
    use blockwatch_proto::v1::CollectorMessage;
    const AGENTS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    // A 1 MiB budget that batches of 500 results (~0.5 MB each), four in flight from each of
    // six agents, overrun at once; a per-agent cap of 200 a second, so a lifted pace comes soon.
    let collector = CollectorProc::start_insecure(
        dir.path(),
        None,
        "max_batch = 500\n[limits]\ningest_buffer_mib = 1\nmax_results_per_second = 200\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pace_of = |m: &CollectorMessage| match &m.kind {
        Some(collector_message::Kind::Pace(p)) => Some(p.backlog_per_second),
        _ => None,
    };
    rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (paced_tx, mut paced) = tokio::sync::mpsc::channel::<(usize, u32)>(64);
        for a in 0..AGENTS {
            let (addr, stop, paced_tx) = (collector.addr, stop.clone(), paced_tx.clone());
            tokio::spawn(async move {
                let agent = format!("pace-{a}");
                let mut client = FleetClient::connect(format!("http://{addr}")).await.unwrap();
                client.register(register(&agent)).await.unwrap();
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: agent.clone() })) })
                    .await
                    .unwrap();
                let mut replies =
                    client.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
                let (mut sent, mut acked, mut seq) = (0u64, 0u64, 0u64);
                loop {
                    while sent - acked < 4 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sent += 1;
                        let results = (0..500)
                            .map(|_| {
                                seq += 1;
                                let mut r = result(&format!("{agent}/1/{seq}"), &agent, 1);
                                r.detail = "x".repeat(1000);
                                r
                            })
                            .collect();
                        let batch = ResultBatch { batch_id: sent, results };
                        tx.send(AgentMessage { kind: Some(agent_message::Kind::Batch(batch)) }).await.unwrap();
                    }
                    let Ok(Some(m)) = replies.message().await else { return };
                    match &m.kind {
                        Some(collector_message::Kind::Ack(_)) => acked += 1,
                        Some(collector_message::Kind::Pace(p)) => {
                            let _ = paced_tx.send((a, p.backlog_per_second)).await;
                        }
                        _ => {}
                    }
                }
            });
        }
        // Every agent is told a pace while they overrun the budget.
        let mut told = std::collections::BTreeSet::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            while told.len() < AGENTS {
                let (a, rate) = paced.recv().await.unwrap();
                if rate > 0 {
                    told.insert(a);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only agents {told:?} were told a pace"));
        let (_, metrics) = http_get(collector.api, "/metrics");
        let pace: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("blockwatch_ingest_backlog_pace "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pace gauge in:\n{metrics}"));
        assert!((1.0..200.0).contains(&pace), "pace gauge {pace}");

        // An agent registering while the pace is set is told it there, and its stream hears
        // it first.
        let mut late_client = plain_client(collector.addr).await;
        let reg = late_client.register(register("pace-late")).await.unwrap().into_inner();
        assert!(reg.backlog_per_second > 0, "registered while paced: {reg:?}");
        let mut late = Session::report(late_client, "pace-late").await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), late.next_message()).await.unwrap().unwrap().unwrap();
        assert!(pace_of(&first).is_some_and(|r| r > 0), "first message to a new stream: {first:?}");

        // Once the agents stop, the pace grows past the per-agent cap and is lifted.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let m = late.next_message().await.unwrap().unwrap();
                if pace_of(&m) == Some(0) {
                    break;
                }
            }
        })
        .await
        .expect("the pace lifted once the agents stopped");
    });
    let log = collector.proc.log();
    assert!(!log.contains("panicked"), "{log}");
}
