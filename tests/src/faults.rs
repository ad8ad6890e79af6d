//! The fault harness: a real collector and real agents on loopback, probing the simulated
//! provider every second, put through kill -9s of the collector and of agents at random
//! moments, a partition between agents and collector (through a proxy that black-holes
//! traffic), a stopped collector and a stopped agent (SIGSTOP), and crashes of export runs on
//! the store. At the end every result an agent completed must be stored exactly once, and the
//! live detector's event log must equal a replay of the stored results.
//!
//! `cargo build --release --bins && target/release/blockwatch-faults [--long]`; the test
//! suite runs [`Options::short`] (`tests/tests/faults.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::provider::Provider;
use crate::*;

/// How hard a run is.
#[derive(Debug, Clone)]
pub struct Options {
    pub agents: usize,
    /// Targets per agent, each probed every second.
    pub targets: usize,
    pub collector_kills: u32,
    pub agent_kills: u32,
    /// Time between kills: uniform in this range (ms).
    pub kill_gap_ms: (u64, u64),
    /// The partition's length; a geo block starts a quarter into it and ends half its length
    /// after it heals.
    pub partition: Duration,
    /// How long the collector, then one agent, stays stopped (SIGSTOP).
    pub stop: Duration,
    /// Export runs killed part-way through.
    pub export_kills: u32,
    pub seed: u64,
}

impl Options {
    /// The suite's run: about a minute and a half.
    pub fn short() -> Options {
        Options {
            agents: 4,
            targets: 3,
            collector_kills: 5,
            agent_kills: 5,
            kill_gap_ms: (300, 1500),
            partition: Duration::from_secs(16),
            stop: Duration::from_secs(5),
            export_kills: 2,
            seed: 1,
        }
    }

    /// The documented run: 50 kills of each, a one-minute partition (60 probe intervals).
    pub fn long() -> Options {
        Options {
            agents: 6,
            targets: 4,
            collector_kills: 50,
            agent_kills: 50,
            kill_gap_ms: (300, 2500),
            partition: Duration::from_secs(60),
            stop: Duration::from_secs(15),
            export_kills: 5,
            seed: 7,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Summary {
    pub collector_kills: u32,
    pub agent_kills: u32,
    pub export_kills: u32,
    /// Results the agents completed (their spools' sequence numbers).
    pub sent: u64,
    pub stored: u64,
    /// Probe ids stored more than once.
    pub duplicates_stored: u64,
    /// Re-sends the collector recognised and acked without storing (seen by the processes
    /// that lived long enough to be scraped).
    pub resends_acked: u64,
    /// Completed results missing from the store.
    pub lost: u64,
    /// From a kill -9 of the collector to the next process storing results again.
    pub longest_recovery: Duration,
    /// Stored results the partition delayed (received more than 5 s after they started).
    pub late_after_partition: u64,
    /// Agents' peak RSS growth while the collector was stopped (KiB).
    pub agent_rss_growth_kib: u64,
    /// Results the other agents stored while one agent was stopped, against what they probe
    /// in as long.
    pub others_while_one_stopped: (u64, u64),
    /// Detector events: live (the event log) and from `replay` over the stored results.
    pub live_events: usize,
    pub replayed_events: usize,
    pub live_equals_replay: bool,
    pub blocks_detected: usize,
    pub elapsed: Duration,
}

impl Summary {
    /// The table the harness prints.
    pub fn table(&self) -> String {
        let rows = [
            (
                "kills -9: collector / agents / export runs",
                format!("{} / {} / {}", self.collector_kills, self.agent_kills, self.export_kills),
            ),
            ("results completed by agents", self.sent.to_string()),
            ("results stored", self.stored.to_string()),
            ("stored twice", self.duplicates_stored.to_string()),
            ("re-sends acked as duplicates", self.resends_acked.to_string()),
            ("lost", self.lost.to_string()),
            ("longest recovery (kill -9 to storing again)", format!("{:.2} s", self.longest_recovery.as_secs_f64())),
            ("results delivered late by the partition", self.late_after_partition.to_string()),
            ("agent RSS growth, collector stopped", format!("{} KiB", self.agent_rss_growth_kib)),
            (
                "others' results while one agent stopped",
                format!("{} (they probe {})", self.others_while_one_stopped.0, self.others_while_one_stopped.1),
            ),
            (
                "detector events live / replayed",
                format!(
                    "{} / {} ({}; {} blocks)",
                    self.live_events,
                    self.replayed_events,
                    if self.live_equals_replay { "identical" } else { "DIFFERENT" },
                    self.blocks_detected
                ),
            ),
            ("wall time", format!("{:.0} s", self.elapsed.as_secs_f64())),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<46} {v}\n"));
        }
        out
    }
}

/// A TCP proxy that can black-hole everything: while partitioned, bytes already accepted are
/// held and new connections get no answer; at the heal, every connection it held is cut (as
/// connections through a long partition end), and new ones pass again.
pub struct Proxy {
    pub addr: SocketAddr,
    partitioned: Arc<AtomicBool>,
    /// Bumped at each heal: connections of an older generation close.
    generation: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let partitioned = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (p, g) = (Arc::clone(&partitioned), Arc::clone(&generation));
        rt.spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let (p, g) = (Arc::clone(&p), Arc::clone(&g));
                tokio::spawn(async move {
                    let born = g.load(Ordering::SeqCst);
                    while p.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if g.load(Ordering::SeqCst) != born {
                        return;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = tokio::spawn(pipe(dr, uw, Arc::clone(&p), Arc::clone(&g), born));
                    let b = tokio::spawn(pipe(ur, dw, p, g, born));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Proxy { addr, partitioned, generation, _rt: rt }
    }

    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.partitioned.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction; holds bytes while partitioned, and stops once the connection's
/// generation has passed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    partitioned: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = async { while generation.load(Ordering::SeqCst) == born { tokio::time::sleep(Duration::from_millis(50)).await } } => return,
        };
        while partitioned.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if generation.load(Ordering::SeqCst) != born || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Sum of a counter's series in a Prometheus exposition.
fn counter_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn scrape(api: SocketAddr, name: &str) -> Option<u64> {
    let (status, body) = http_get(api, "/metrics");
    (status == 200).then(|| counter_sum(&body, name))
}

/// Whether each of `ids` has a Report stream open to the collector (`/v1/agents`).
fn all_streaming(api: SocketAddr, ids: &[String]) -> bool {
    let (status, body) = http_get(api, "/v1/agents");
    let agents: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status == 200 && ids.iter().all(|id| agents[id.as_str()]["connected"] == true)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

struct Fleet {
    dir: PathBuf,
    ids: Vec<String>,
    sources: Vec<IpAddr>,
    configs: Vec<String>,
    procs: Vec<Proc>,
}

impl Fleet {
    fn restart(&mut self, i: usize) {
        self.procs[i] = start_agent(&self.dir, &self.ids[i], &self.configs[i]);
    }
}

/// Runs the harness in `dir` (kept for a look afterwards).
pub fn run(dir: &Path, opts: &Options) -> Summary {
    let started = Instant::now();
    let mut rng = blockwatch_sim::Rng::new(opts.seed);
    let mut summary = Summary::default();
    let provider = Provider::start(dir);
    let port = free_port();
    let extra = "";
    let mut collector = CollectorProc::start(dir, Some(port), extra);
    let proxy = Proxy::start(collector.addr);
    let mut resends = 0u64;
    let mut fleet =
        Fleet { dir: dir.to_owned(), ids: Vec::new(), sources: Vec::new(), configs: Vec::new(), procs: Vec::new() };
    for i in 0..opts.agents {
        let id = format!("f-{i}");
        let region = if i % 2 == 0 { "eu" } else { "as" };
        let source = format!("127.0.0.{}", 10 + i);
        let cfg = agent_toml(&id, region, proxy.addr, &provider, dir, &source, opts.targets);
        fleet.procs.push(start_agent(dir, &id, &cfg));
        fleet.ids.push(id);
        fleet.sources.push(source.parse().expect("source address"));
        fleet.configs.push(cfg);
    }
    wait_for("the first results", Duration::from_secs(30), || {
        scrape(collector.api, "blockwatch_results_ingested_total").filter(|n| *n > 0)
    });

    // Kills, in a random order of collector and agents.
    let mut turns: Vec<bool> =
        (0..opts.collector_kills).map(|_| true).chain((0..opts.agent_kills).map(|_| false)).collect();
    for i in (1..turns.len()).rev() {
        turns.swap(i, rng.below(i + 1));
    }
    for collector_turn in turns {
        let gap = opts.kill_gap_ms.0 + rng.below((opts.kill_gap_ms.1 - opts.kill_gap_ms.0) as usize) as u64;
        std::thread::sleep(Duration::from_millis(gap));
        if collector_turn {
            resends += scrape(collector.api, "blockwatch_results_duplicate_total").unwrap_or(0);
            let killed = Instant::now();
            collector.proc.kill9();
            summary.collector_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.below(800) as u64));
            collector = CollectorProc::start(dir, Some(port), extra);
            wait_for("the restarted collector to store results", Duration::from_secs(60), || {
                scrape(collector.api, "blockwatch_results_ingested_total").filter(|n| *n > 0)
            });
            summary.longest_recovery = summary.longest_recovery.max(killed.elapsed());
        } else {
            let i = rng.below(fleet.procs.len());
            fleet.procs[i].kill9();
            summary.agent_kills += 1;
            fleet.restart(i);
        }
    }

    // A partition; a geo block of region eu begins inside it and outlasts it. It starts with
    // every agent streaming: one still reconnecting after the last kill would fail its tries
    // through the partition and back off for up to its length, and its results (the block's
    // evidence) would arrive after the block has ended, which is no longer a block to start.
    wait_for("every agent streaming before the partition", Duration::from_secs(60), || {
        all_streaming(collector.api, &fleet.ids).then_some(())
    });
    let eu: Vec<IpAddr> = fleet.sources.iter().step_by(2).copied().collect();
    let part = opts.partition;
    proxy.partition();
    let partitioned_at = blockwatch_proto::time::now();
    std::thread::sleep(part / 4);
    provider.blocked.lock().expect("blocked list").extend(eu.iter().copied());
    std::thread::sleep(part * 3 / 4);
    proxy.heal();
    let healed_at = blockwatch_proto::time::now();
    // Each agent comes back after its reconnect backoff, which grew through the partition (up
    // to 30 s, jittered): the block holds until every agent has delivered results probed
    // since the heal (its spool, the block's evidence, drains alongside), and half a partition
    // beyond, so the evidence arrives while the block is still on.
    let since = blockwatch_proto::time::format_rfc3339(healed_at);
    wait_for("every agent delivering again after the partition", Duration::from_secs(90), || {
        fleet
            .ids
            .iter()
            .all(|id| {
                let (status, body) = http_get(collector.api, &format!("/v1/results?agent={id}&from={since}&limit=1"));
                status == 200 && !body.trim().is_empty()
            })
            .then_some(())
    });
    std::thread::sleep(part / 2);
    provider.blocked.lock().expect("blocked list").clear();
    std::thread::sleep(part / 2);

    // A stopped collector: the agents' memory stays bounded.
    let rss = |f: &Fleet| f.procs.iter().map(|p| crate::fake_collector::rss_kib(p.child.id())).collect::<Vec<_>>();
    let before = rss(&fleet);
    resends += scrape(collector.api, "blockwatch_results_duplicate_total").unwrap_or(0);
    let base = scrape(collector.api, "blockwatch_results_ingested_total").unwrap_or(0);
    signal(collector.proc.child.id(), "STOP");
    let mut peak = before.clone();
    let until = Instant::now() + opts.stop;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        for (p, now) in peak.iter_mut().zip(rss(&fleet)) {
            *p = (*p).max(now);
        }
    }
    signal(collector.proc.child.id(), "CONT");
    summary.agent_rss_growth_kib = peak.iter().zip(&before).map(|(p, b)| p.saturating_sub(*b)).max().unwrap_or(0);
    // Let the backlog of the stop drain, then measure a normal stretch and one with an agent
    // stopped mid-stream.
    wait_for("ingest after SIGCONT", Duration::from_secs(30), || {
        scrape(collector.api, "blockwatch_results_ingested_total").filter(|n| *n > base)
    });
    std::thread::sleep(Duration::from_secs(3));
    let others =
        |c: &CollectorProc| -> u64 { stored(c.api).iter().filter(|r| r.agent_id != fleet.ids[0]).count() as u64 };
    // What the others probe in that time (one result per target per second each); a count
    // taken just after the stop would carry its backlog.
    let normal = ((opts.agents - 1) * opts.targets) as u64 * opts.stop.as_secs();
    signal(fleet.procs[0].child.id(), "STOP");
    let n1 = others(&collector);
    std::thread::sleep(opts.stop);
    let while_stopped = others(&collector) - n1;
    signal(fleet.procs[0].child.id(), "CONT");
    summary.others_while_one_stopped = (while_stopped, normal);

    // Crashed exports: the collector dies, export runs are killed part-way, the collector
    // comes back on the same store.
    resends += scrape(collector.api, "blockwatch_results_duplicate_total").unwrap_or(0);
    collector.proc.kill9();
    summary.collector_kills += 1;
    for k in 0..opts.export_kills {
        let out = dir.join(format!("crashed-export-{k}.parquet"));
        let mut export = Proc::start(
            &bin("blockwatch-collector"),
            &[
                "export",
                "--data-dir",
                collector.data_dir.to_str().unwrap(),
                "--format",
                "parquet",
                "--output",
                out.to_str().unwrap(),
            ],
            dir.join(format!("export-{k}.log")),
        );
        std::thread::sleep(Duration::from_millis(30 + rng.below(150) as u64));
        export.kill9();
        summary.export_kills += 1;
    }
    collector = CollectorProc::start(dir, Some(port), extra);

    // The end: agents stop cleanly, each until its spool is empty.
    for round in 0.. {
        for p in &mut fleet.procs {
            let _ = p.terminate();
        }
        let pending: Vec<usize> = (0..fleet.ids.len()).filter(|&i| spool_state(dir, &fleet.ids[i]).0 > 0).collect();
        if pending.is_empty() {
            break;
        }
        assert!(round < 5, "spools still hold results after {round} clean stops: {pending:?}");
        for &i in &pending {
            fleet.restart(i);
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    resends += scrape(collector.api, "blockwatch_results_duplicate_total").unwrap_or(0);
    assert_eq!(collector.proc.terminate(), Some(0), "{}", collector.proc.log());
    summary.resends_acked = resends;

    // Every completed result stored exactly once.
    let records = export(&collector.data_dir);
    summary.stored = records.len() as u64;
    let mut by_agent: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for r in &records {
        if !ids.insert(r.probe_id.as_str()) {
            summary.duplicates_stored += 1;
        }
        by_agent.entry(r.agent_id.as_str()).or_default().push(seq_of(r));
        let (Ok(received), Ok(started)) = (r.received_ms(), r.started_ms()) else { continue };
        if received - started > 5_000 && started >= partitioned_at && started < healed_at {
            summary.late_after_partition += 1;
        }
    }
    for id in &fleet.ids {
        let (_, last) = spool_state(dir, id);
        summary.sent += last;
        let got: std::collections::BTreeSet<u64> = by_agent.get(id.as_str()).into_iter().flatten().copied().collect();
        summary.lost += (1..=last).filter(|s| !got.contains(s)).count() as u64;
    }

    // The live event log against a replay of the stored results.
    let stored_file = dir.join("stored.jsonl");
    let replayed_file = dir.join("replayed.jsonl");
    let events_file = dir.join("live-events.jsonl");
    let data = collector.data_dir.to_str().unwrap();
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(crate::run(
        &bin("blockwatch-collector"),
        &["export", "--data-dir", data, "--output", stored_file.to_str().unwrap()],
    ));
    ok(crate::run(
        &bin("blockwatch-collector"),
        &["replay", "--input", stored_file.to_str().unwrap(), "--output", replayed_file.to_str().unwrap()],
    ));
    // The live log, as the API serves it, from the same store.
    let reader = CollectorProc::start(dir, Some(port), extra);
    let (status, body) = http_get(reader.api, "/v1/events?limit=100000");
    assert_eq!(status, 200, "{body}");
    std::fs::write(&events_file, &body).expect("write the live events");
    drop(reader);
    let norm = |l: &str| {
        let mut v: serde_json::Value = serde_json::from_str(l).expect("event json");
        if let Some(m) = v.as_object_mut() {
            m.remove("seq");
        }
        serde_json::to_string(&v).expect("json")
    };
    let replayed: Vec<String> = read(&replayed_file).lines().map(norm).collect();
    let live: Vec<String> = read(&events_file).lines().filter(|l| !l.contains("\"kind\":\"agent_")).map(norm).collect();
    summary.live_events = live.len();
    summary.replayed_events = replayed.len();
    summary.live_equals_replay = live == replayed;
    summary.blocks_detected = live.iter().filter(|l| l.contains("\"kind\":\"block_started\"")).count();
    if !summary.live_equals_replay {
        std::fs::write(dir.join("live-filtered.jsonl"), live.join("\n")).ok();
        std::fs::write(dir.join("replayed-normalised.jsonl"), replayed.join("\n")).ok();
    }
    summary.elapsed = started.elapsed();
    summary
}
