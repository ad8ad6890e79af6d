//! What an agent sends cannot blind, erase or exhaust the collector. A well-behaved agent keeps
//! streaming on the same collector throughout, and every one of its batches is acked within a
//! second, while other clients try each attack; each attack gets a precise refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockwatch_proto::Outcome;
use blockwatch_proto::time::now;
use blockwatch_proto::v1::fleet_client::FleetClient;
use blockwatch_proto::v1::{AgentMessage, Hello, ProbeResult, RegisterRequest, agent_message};
use blockwatch_tests::session::{Session, plain_client, result};
use blockwatch_tests::*;
use tonic::transport::Channel;

async fn client(collector: &CollectorProc) -> FleetClient<Channel> {
    plain_client(collector.addr).await
}

async fn session(collector: &CollectorProc, agent: &str, region: &str) -> Session {
    Session::open(client(collector).await, agent, region).await.expect("register and report")
}

#[test]
fn no_agent_can_blind_erase_or_exhaust_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "[limits]\nmax_targets_per_agent = 50");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The bystander: a valid agent whose every batch must be acked within a second.
        let done = Arc::new(AtomicBool::new(false));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let bystander = {
            let (done, slowest_ms) = (Arc::clone(&done), Arc::clone(&slowest_ms));
            let mut s = session(&collector, "good-1", "eu").await;
            tokio::spawn(async move {
                let mut seq = 0;
                let mut batches = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let results: Vec<_> = (0..20)
                        .map(|_| {
                            seq += 1;
                            result("good-1", "eu", seq, "openai", now() - 500, Outcome::Ok)
                        })
                        .collect();
                    let t = Instant::now();
                    let a = s.send(results).await;
                    slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                    assert_eq!(a.acked.len(), 20, "the bystander's results are all stored: {a:?}");
                    batches += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                batches
            })
        };

        // Probe ids in another agent's namespace would be taken for its results (and erase
        // them as duplicates): refused.
        let mut evil = session(&collector, "evil-1", "hk").await;
        let hijack = ProbeResult {
            probe_id: "good-1/1/999999".into(),
            ..result("evil-1", "hk", 1, "openai", now(), Outcome::Ok)
        };
        let a = evil.send(vec![hijack]).await;
        assert_eq!(a.refused, ["good-1/1/999999"], "{a:?}");
        assert!(a.reason.contains("probe_id must start with the agent's id \"evil-1\""), "{}", a.reason);

        // Results from a region the agent did not register in.
        let a = evil.send(vec![result("evil-1", "eu", 2, "openai", now(), Outcome::HttpGeoBlocked)]).await;
        assert!(a.reason.contains("differs from the agent's registered region \"hk\""), "{}", a.reason);

        // A result dated an hour ahead (it would hold a cell's clock in the future), and
        // timestamps out of any range.
        let a = evil.send(vec![result("evil-1", "hk", 3, "openai", now() + 3_600_000, Outcome::Ok)]).await;
        assert!(a.reason.contains("after its receipt (limits.max_future 5m)"), "{}", a.reason);
        for (i, (seconds, nanos)) in
            [(i64::MAX, 0), (i64::MIN, 0), (-62_135_596_900, 0), (1_800_000_000, 1_000_000_000)].into_iter().enumerate()
        {
            let mut r = result("evil-1", "hk", 10 + i as u64, "openai", now(), Outcome::Ok);
            r.started_at = Some(prost_types::Timestamp { seconds, nanos });
            let a = evil.send(vec![r]).await;
            assert!(a.reason.contains("is not a valid time"), "{seconds} {nanos}: {}", a.reason);
        }

        // Oversized fields: each refused, naming the field.
        let mb = "x".repeat(1 << 20);
        for (field, r) in [
            ("target_id", ProbeResult { target_id: mb.clone(), ..result("evil-1", "hk", 20, "t", now(), Outcome::Ok) }),
            ("detail", ProbeResult { detail: mb.clone(), ..result("evil-1", "hk", 21, "t", now(), Outcome::Ok) }),
            (
                "provider_code",
                ProbeResult { provider_code: mb.clone(), ..result("evil-1", "hk", 22, "t", now(), Outcome::Ok) },
            ),
        ] {
            let a = evil.send(vec![r]).await;
            assert_eq!(a.refused.len(), 1, "{field}");
            assert!(a.reason.contains(field), "{field}: {}", &a.reason[..a.reason.len().min(200)]);
        }

        // A flood of new target ids: the agent's first 50 are taken, the rest refused.
        let flood: Vec<_> =
            (0..100).map(|i| result("evil-1", "hk", 100 + i, &format!("t{i}"), now(), Outcome::Ok)).collect();
        let a = evil.send(flood).await;
        assert_eq!((a.acked.len(), a.refused.len()), (50, 50), "{}", a.reason);
        assert!(a.reason.contains("limits.max_targets_per_agent = 50"), "{}", a.reason);

        // A second live process with the bystander's id: refused at Register and at Report.
        let mut c = client(&collector).await;
        let err = c
            .register(RegisterRequest { agent_id: "good-1".into(), region: "eu".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains("connected already"), "{}", err.message());
        let hello = AgentMessage { kind: Some(agent_message::Kind::Hello(Hello { agent_id: "good-1".into() })) };
        let err = c.report(tokio_stream::iter(vec![hello])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

        // After the future-dated attempt, a real geo block in hk is still detected: two
        // agents, an hour of reachable answers, then geo refusals.
        let mut a1 = session(&collector, "hk-1", "hk").await;
        let mut a2 = session(&collector, "hk-2", "hk").await;
        let t0 = now() - 3_600_000;
        for (s, agent) in [(&mut a1, "hk-1"), (&mut a2, "hk-2")] {
            let mut results: Vec<_> =
                (0..50).map(|i| result(agent, "hk", i, "openai", t0 + i as i64 * 60_000, Outcome::Ok)).collect();
            results.extend(
                (50..60).map(|i| result(agent, "hk", i, "openai", t0 + i as i64 * 60_000, Outcome::HttpGeoBlocked)),
            );
            let a = s.send(results).await;
            assert_eq!(a.acked.len(), 60, "{a:?}");
        }
        let events = wait_for("the hk block to be detected", Duration::from_secs(10), || {
            let (_, body) = http_get(collector.api, "/v1/events?kind=block_started&region=hk");
            body.contains("\"target\":\"openai\"").then_some(body)
        });
        assert!(events.contains("\"dominant_outcome\":\"http_geo_blocked\""), "{events}");

        done.store(true, Ordering::SeqCst);
        let batches = bystander.await.expect("bystander ran");
        let slowest = slowest_ms.load(Ordering::SeqCst);
        println!("bystander: {batches} batches, slowest ack {slowest} ms");
        assert!(batches >= 1, "{batches}");
        assert!(slowest < 1000, "the bystander waited {slowest} ms for an ack");
    });

    // The refusals are visible per agent.
    let (_, agents) = http_get(collector.api, "/v1/agents");
    let v: serde_json::Value = serde_json::from_str(&agents).unwrap();
    assert!(v["evil-1"]["refused_total"].as_u64().unwrap() >= 60, "{agents}");
    assert_eq!(v["good-1"]["refused_total"].as_u64(), Some(0), "{agents}");
    assert!(listening(collector.addr), "collector died");
    assert!(!collector.proc.log().contains("panicked"));
}

/// Opens `n` TCP connections to `addr` and leaves them idle.
fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()).collect()
}

/// How many of `conns` the server has closed: a read sees end of file or a reset (an open
/// connection times out, or shows the server's HTTP/2 preface).
fn closed_by_server(conns: &[std::net::TcpStream]) -> usize {
    use std::io::{ErrorKind, Read};
    conns
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 64];
            match (&mut &**c).read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            }
        })
        .count()
}

#[test]
fn idle_connection_floods_neither_spin_nor_starve_the_agents() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: no prlimit (util-linux) to lower the collector's open-file limit");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 200 idle connections against a collector allowed 256 open files and 128 connections: the
    // rest wait unaccepted, the connected agent keeps its acks, the API keeps answering, and
    // the collector does not spin.
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_with_file_limit(
        dir.path(),
        "[limits]\nmax_connections = 128\nmax_connections_per_address = 1000",
        256,
    );
    rt.block_on(async {
        let mut agent = session(&collector, "good-1", "eu").await;
        // 200: past the 128 accepted, the rest wait in the listen backlog (itself ~128).
        let flood = idle_connections(collector.addr, 200);
        assert_eq!(flood.len(), 200, "{} connections opened", flood.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = collector.proc.child.id();
        let before = cpu_time(pid);
        let t = Instant::now();
        for i in 0..10 {
            let sent = Instant::now();
            let a = agent.send(vec![result("good-1", "eu", i, "openai", now() - 500, Outcome::Ok)]).await;
            assert_eq!(a.acked.len(), 1);
            assert!(sent.elapsed() < Duration::from_secs(1), "ack took {:?}", sent.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, body) = http_get(collector.api, "/healthz");
        assert_eq!((status, body.trim()), (200, "ok"));
        let used = cpu_time(pid) - before;
        println!("collector CPU during the flood: {used:?} over {:?}", t.elapsed());
        assert!(used < t.elapsed() / 4, "the collector used {used:?} of CPU in {:?} while idle", t.elapsed());
        drop(flood);
    });
    assert!(!collector.proc.log().contains("panicked"));

    // A limit the file table reaches first: accepts fail (EMFILE) and the collector pauses
    // instead of spinning, then serves again once the connections go.
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_with_file_limit(
        dir.path(),
        "[limits]\nmax_connections = 1000\nmax_connections_per_address = 1000",
        64,
    );
    rt.block_on(async {
        let flood = idle_connections(collector.addr, 100);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = collector.proc.child.id();
        let (before, t) = (cpu_time(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_time(pid) - before;
        println!("collector CPU with its file table full: {used:?} over {:?}", t.elapsed());
        assert!(used < t.elapsed() / 4, "the collector used {used:?} of CPU in {:?}", t.elapsed());
        drop(flood);
        let mut agent = session(&collector, "good-2", "eu").await;
        let a = agent.send(vec![result("good-2", "eu", 1, "openai", now() - 500, Outcome::Ok)]).await;
        assert_eq!(a.acked.len(), 1);
    });
    assert!(collector.proc.log().contains("accept failed"), "{}", collector.proc.log());

    // One address may hold only `max_connections_per_address` connections.
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "[limits]\nmax_connections_per_address = 8");
    let flood = idle_connections(collector.addr, 20);
    let closed = wait_for("the server to close the connections past the limit", Duration::from_secs(5), || {
        let n = closed_by_server(&flood);
        (n >= 12).then_some(n)
    });
    assert_eq!(closed, 12, "20 connections, 8 allowed");
    assert!(collector.proc.log().contains("refused connections past the per-address limit"));
}

/// Sends `GET path` on a new connection and never reads the answer.
fn unread_get(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send request");
    s
}

/// The status line of the answer waiting on `s`.
fn status_of(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("an answer");
    String::from_utf8_lossy(&head[9..12]).to_string()
}

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).expect("Threads")
}

#[test]
fn api_clients_that_never_read_hold_only_their_share() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "max_batch = 1000");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Enough stored results (~15 MB exported) that an export outgrows the socket buffers.
        for (n, agent) in ["a-1", "a-2", "a-3"].into_iter().enumerate() {
            let mut s = session(&collector, agent, "eu").await;
            if n > 0 {
                continue;
            }
            for b in 0..30u64 {
                let results = (0..1000)
                    .map(|i| {
                        let mut r = result(agent, "eu", b * 1000 + i, "openai", now() - 1000, Outcome::TlsReset);
                        r.detail = "x".repeat(400);
                        r
                    })
                    .collect();
                assert_eq!(s.send(results).await.acked.len(), 1000);
            }
        }
    });
    let pid = collector.proc.child.id();
    let before = threads(pid);
    let mut readers: Vec<_> = (0..20).map(|_| unread_get(collector.api, "/v1/results")).collect();
    let statuses: Vec<String> = readers.iter_mut().map(status_of).collect();
    let ok = statuses.iter().filter(|s| *s == "200").count();
    let busy = statuses.iter().filter(|s| *s == "503").count();
    assert_eq!((ok, busy), (4, 16), "{statuses:?}");
    // The other routes still answer for everyone.
    let (status, _) = http_get(collector.api, "/v1/events");
    assert_eq!(status, 200);
    let (status, body) = http_get(collector.api, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let during = threads(pid);
    println!("collector threads: {before} before, {during} with 20 stalled readers");
    // The exports' threads and a few for other reads, not one per client.
    assert!(during <= before + 8, "{before} -> {during} threads");

    // /v1/agents pages by id.
    let (_, page) = http_get(collector.api, "/v1/agents?limit=2");
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["a-1", "a-2"]);
    let (_, page) = http_get(collector.api, "/v1/agents?after=a-2");
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["a-3"]);
    let (status, body) = http_get(collector.api, "/v1/agents?limit=0");
    assert_eq!(status, 400, "{body}");
    drop(readers);
}
