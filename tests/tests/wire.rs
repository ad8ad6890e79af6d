//! The collector against bad peers: unknown agents, streams without registration, malformed
//! results, oversized batches, and raw garbage on its port. Each gets a precise answer and the
//! collector keeps serving.

use std::io::Write;
use std::time::Duration;

use blockwatch_proto::v1::fleet_client::FleetClient;
use blockwatch_proto::v1::{
    AgentMessage, Hello, ProbeResult, RegisterRequest, ResultBatch, agent_message, collector_message,
};
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
