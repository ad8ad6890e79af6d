//! The demo: the whole system on loopback. A collector, two simulated
//! providers (real HTTPS with a locally made certificate, answering like the real APIs), and
//! agents in three regions, each agent connecting from its own 127.0.0.x address. Part-way
//! through, the simulated OpenAI starts refusing one region's addresses with its real
//! `unsupported_country_region_territory` answer, and the detector has to notice. The
//! collector's webhook sink delivers the block to a local receiver, which checks its
//! signature.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockwatch_agent::Agent;
use blockwatch_agent::config::{AgentConfig, ConfirmConfig, TargetConfig, UplinkTls};
use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, format_rfc3339};
use tokio::net::TcpListener;

use blockwatch_collector::config::{CollectorConfig, TlsConfig};
use blockwatch_collector::fleet_ca::{self, FleetCa};
use blockwatch_collector::server::Collector;
use blockwatch_detector::{Event, EventKind};

use crate::faultkit::{Canned, FaultServer, TestPki, canned, serve_https};

/// The demo's regions and the loopback addresses their agents connect from.
pub const REGIONS: &[(&str, [u8; 2])] = &[("eu-west", [2, 3]), ("us-east", [4, 5]), ("hk", [6, 7])];
/// The region the simulated OpenAI blocks.
pub const BLOCKED_REGION: &str = "hk";

/// What a demo run saw.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub block_began: Option<Millis>,
    pub detected: Option<Event>,
    pub false_alarms: Vec<Event>,
    /// The block's notification reached the local webhook receiver, signature verified.
    pub notified: bool,
}

/// Runs the demo for `duration`, probing every `interval`, printing as it goes; then keeps
/// everything up for `stay` (or until Ctrl-C) so a person can open the dashboard.
pub async fn run(
    duration: Duration,
    interval: Duration,
    stay: Duration,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<DemoReport> {
    let work = tempfile_dir()?;
    let pki = TestPki::new()?;
    let tls = pki.server_config(&["localhost", "127.0.0.1"])?;
    let ca_file = work.join("demo-ca.pem");
    std::fs::write(&ca_file, pki.ca_pem())?;

    let blocking = Arc::new(AtomicBool::new(false));
    let blocked_ips: Vec<IpAddr> = REGIONS
        .iter()
        .filter(|(r, _)| *r == BLOCKED_REGION)
        .flat_map(|(_, hosts)| hosts.iter().map(|h| IpAddr::V4(Ipv4Addr::new(127, 0, 0, *h))))
        .collect();
    let openai = TcpListener::bind("127.0.0.1:0").await?;
    let anthropic = TcpListener::bind("127.0.0.1:0").await?;
    let (openai_addr, anthropic_addr) = (openai.local_addr()?, anthropic.local_addr()?);
    let servers: [FaultServer; 2] = [
        serve_https(openai, Arc::clone(&tls), openai_refusing(Arc::clone(&blocking), blocked_ips))?,
        serve_https(anthropic, tls, |_, _| canned::anthropic_reachable())?,
    ];

    // The fleet's own CA, as an operator makes one: agents and collector speak mutual TLS.
    let fleet = work.join("fleet-ca");
    let fleet_ca = FleetCa::init(&fleet, &["127.0.0.1".into()], fleet_ca::CA_DAYS, fleet_ca::COLLECTOR_DAYS)?;
    // A webhook receiver, as an SRE's integration would run one, and the sink that feeds it.
    let secret = format!("demo-{:016x}", fastrand::u64(..));
    let secret_file = work.join("webhook.secret");
    std::fs::write(&secret_file, &secret)?;
    let (hook_tx, mut hooks) = tokio::sync::mpsc::channel(64);
    let hook_listener = TcpListener::bind("127.0.0.1:0").await?;
    let hook_addr = hook_listener.local_addr()?;
    let _receiver = crate::receiver::serve(hook_listener, secret.into_bytes(), hook_tx)?;
    let sink: blockwatch_collector::alert::SinkConfig = toml::from_str(&format!(
        "name = \"demo-webhook\"\nkind = \"webhook\"\nurl = \"http://{hook_addr}/blockwatch\"\nsecret_file = {:?}\ngroup_window = \"2s\"\n",
        secret_file.display().to_string()
    ))?;
    let collector = Collector::start(&CollectorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: work.join("collector"),
        tls: Some(TlsConfig { ca_dir: fleet.clone() }),
        sinks: vec![sink],
        ..Default::default()
    })
    .await?;
    let mut events = collector.events.subscribe();
    let mut results = collector.results.subscribe();

    writeln!(out, "blockwatch demo: everything below runs on this machine, on loopback.\n")?;
    writeln!(
        out,
        "  collector        grpc+mTLS://{}   events: curl http://{}/v1/events",
        collector.addr, collector.api_addr
    )?;
    writeln!(
        out,
        "  dashboard            http://{}/   (metrics: http://{}/metrics)",
        collector.api_addr, collector.api_addr
    )?;
    writeln!(
        out,
        "  webhook receiver     http://{hook_addr}/blockwatch  (the collector's sink \"demo-webhook\", signed)"
    )?;
    writeln!(out, "  simulated OpenAI     https://{openai_addr}/v1/models  (keyless answer: 401 = reachable)")?;
    writeln!(out, "  simulated Anthropic  https://{anthropic_addr}/v1/models  (keyless answer: 401 = reachable)")?;
    let mut agents = Vec::new();
    for (region, hosts) in REGIONS {
        for (i, host) in hosts.iter().enumerate() {
            let id = format!("{region}-{}", i + 1);
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, *host));
            writeln!(out, "  agent {id:<12} region {region:<8} probes from {source}")?;
            let certs = work.join("agents").join(&id);
            fleet_ca.issue_agent(&id, region, 1, &certs)?;
            agents.push(
                Agent::start(agent_config(
                    &id,
                    region,
                    source,
                    &collector,
                    &work,
                    &certs,
                    &ca_file,
                    interval,
                    [openai_addr, anthropic_addr],
                ))
                .await?,
            );
        }
    }
    let block_at = duration / 3;
    writeln!(
        out,
        "\nEvery agent probes both providers every {}. After {} the simulated OpenAI starts",
        humantime::format_duration(interval),
        humantime::format_duration(block_at)
    )?;
    writeln!(
        out,
        "refusing region {BLOCKED_REGION:?} with its real 403 unsupported_country_region_territory answer.\n"
    )?;

    let mut report = DemoReport::default();
    let start = tokio::time::Instant::now();
    let deadline = start + duration;
    let mut block_timer = std::pin::pin!(tokio::time::sleep_until(start + block_at));
    let mut block_armed = true;
    let mut table = tokio::time::interval_at(start + interval * 5, interval * 5);
    let mut window: BTreeMap<(String, String), (u32, u32, Option<Outcome>)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = &mut block_timer, if block_armed => {
                block_armed = false;
                blocking.store(true, Ordering::SeqCst);
                let now = blockwatch_proto::time::now();
                report.block_began = Some(now);
                writeln!(out, "\n>>> {}  simulated OpenAI now refuses region {BLOCKED_REGION:?} (403 unsupported_country_region_territory)\n", clock(now))?;
            }
            _ = table.tick() => {
                print_window(out, &window, start.elapsed())?;
                window.clear();
            }
            Ok(batch) = results.recv() => {
                for s in batch.iter() {
                    let Some(r) = &s.result else { continue };
                    let e = window.entry((r.target_id.clone(), r.region.clone())).or_default();
                    if r.outcome() == Outcome::Ok { e.0 += 1 } else { e.1 += 1; e.2 = Some(r.outcome()) }
                }
            }
            Some(n) = hooks.recv() => {
                let p = &n.payload;
                let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                let regions: Vec<&str> =
                    p["regions"].as_array().map(|r| r.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
                let blocks: Vec<&str> = p["events"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|v| v["block_id"].as_str()).collect())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "--> webhook receiver got {} for {} in {} (notification {}, block {}, signature {})\n",
                    field("kind"),
                    field("target"),
                    regions.join(", "),
                    field("id"),
                    blocks.join(", "),
                    if n.verified { "verified" } else { "INVALID" }
                )?;
                if n.verified && field("kind") == "block_started" && field("target") == "openai" && regions.contains(&BLOCKED_REGION) {
                    report.notified = true;
                }
            }
            Ok(ev) = events.recv() => {
                print_event(out, &ev, report.block_began)?;
                let genuine = ev.kind == EventKind::BlockStarted && ev.target == "openai" && ev.region == BLOCKED_REGION && report.block_began.is_some();
                if genuine && report.detected.is_none() {
                    report.detected = Some(ev);
                } else if ev.kind == EventKind::BlockStarted {
                    report.false_alarms.push(ev);
                }
            }
        }
    }
    writeln!(out)?;
    summarize(out, &report, interval)?;
    if !stay.is_zero() {
        writeln!(
            out,
            "\nThe dashboard stays up for {} at http://{}/ (Ctrl-C ends it sooner).",
            humantime::format_duration(stay),
            collector.api_addr
        )?;
        out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(stay) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    for a in agents {
        a.shutdown().await;
    }
    collector.shutdown(Duration::from_secs(5)).await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn agent_config(
    id: &str,
    region: &str,
    source: IpAddr,
    collector: &Collector,
    work: &std::path::Path,
    certs: &std::path::Path,
    ca_file: &std::path::Path,
    interval: Duration,
    [openai, anthropic]: [SocketAddr; 2],
) -> AgentConfig {
    let target = |id: &str, addr: SocketAddr, provider: &str| TargetConfig {
        id: id.into(),
        url: format!("https://{addr}/v1/models"),
        provider: provider.into(),
        interval: None,
        expect_status: Vec::new(),
        local: true,
        pin: false,
        credential_env: None,
        credential_file: None,
    };
    AgentConfig {
        agent_id: id.into(),
        region: region.into(),
        collector: format!("https://{}", collector.addr),
        failover: Vec::new(),
        tls: Some(UplinkTls {
            ca_file: certs.join("ca.crt"),
            cert_file: certs.join("agent.crt"),
            key_file: certs.join("agent.key"),
            server_name: None,
        }),
        insecure: false,
        interval,
        timeout: (interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(10)),
        source_address: Some(source),
        spool_dir: work.join(format!("spool-{id}")),
        spool_max_mb: 16,
        concurrency: 4,
        upload_rate: 200,
        confirm: ConfirmConfig { count: 1, min_delay: interval / 5, max_delay: interval / 4 },
        nameservers: Vec::new(),
        ca_file: Some(ca_file.to_owned()),
        poison: Vec::new(),
        targets: vec![target("openai", openai, "openai"), target("anthropic", anthropic, "anthropic")],
        providers: Vec::new(),
        control: None,
        egress_echo_url: None,
        geoip_db: Vec::new(),
        metrics_listen: None,
    }
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("blockwatch-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn clock(ms: Millis) -> String {
    format_rfc3339(ms)[11..23].to_string()
}

fn print_window(
    out: &mut (dyn std::io::Write + Send),
    window: &BTreeMap<(String, String), (u32, u32, Option<Outcome>)>,
    elapsed: Duration,
) -> std::io::Result<()> {
    writeln!(out, "t+{:>3}s  results in the last few intervals (ok / failed):", elapsed.as_secs())?;
    for (region, _) in REGIONS {
        let mut line = format!("    {region:<8}");
        for target in ["openai", "anthropic"] {
            let (ok, bad, last) = window.get(&(target.to_string(), region.to_string())).copied().unwrap_or_default();
            let why = last.map(|o| format!(" ({})", o.name())).unwrap_or_default();
            line.push_str(&format!("  {target:<9} {ok:>2} ok / {bad:>2} failed{why:<22}"));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn print_event(out: &mut (dyn std::io::Write + Send), ev: &Event, began: Option<Millis>) -> std::io::Result<()> {
    let kind = serde_json::to_value(ev.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    writeln!(out, "\n*** {kind}: target {} in region {}", ev.target, ev.region)?;
    writeln!(out, "    onset (estimated change point)  {}", clock(ev.onset))?;
    writeln!(out, "    detected at                     {}", clock(ev.detected_at))?;
    if let Some(b) = began {
        writeln!(
            out,
            "    block really began              {}  (onset error {:+.1}s, detected {:.1}s after)",
            clock(b),
            (ev.onset - b) as f64 / 1000.0,
            (ev.detected_at - b) as f64 / 1000.0
        )?;
    }
    writeln!(out, "    in words                        {}", ev.summary())?;
    writeln!(out, "    evidence                        {}\n", serde_json::to_string(&ev.evidence).unwrap_or_default())
}

fn summarize(out: &mut (dyn std::io::Write + Send), report: &DemoReport, interval: Duration) -> std::io::Result<()> {
    match (&report.detected, report.block_began) {
        (Some(ev), Some(began)) => writeln!(
            out,
            "Result: the block of openai in {BLOCKED_REGION} was detected {:.1}s ({:.1} probe intervals) after it began; {} false alarm(s).",
            (ev.detected_at - began) as f64 / 1000.0,
            (ev.detected_at - began) as f64 / interval.as_millis() as f64,
            report.false_alarms.len()
        ),
        _ => writeln!(out, "Result: the block was NOT detected in this run (try a longer --duration)."),
    }?;
    if report.notified {
        writeln!(out, "Notified: the block reached the webhook receiver, signed and verified.")
    } else {
        writeln!(out, "Notified: no verified notification of the block reached the webhook receiver in this run.")
    }
}

/// The simulated OpenAI: its real keyless answer, and its real location refusal to `blocked`
/// source addresses once `blocking` is set.
fn openai_refusing(
    blocking: Arc<AtomicBool>,
    blocked: Vec<IpAddr>,
) -> impl Fn(SocketAddr, &http::Request<()>) -> Canned + Send + Sync + 'static {
    move |peer, _req| {
        if blocking.load(Ordering::SeqCst) && blocked.contains(&peer.ip()) {
            canned::openai_geo_blocked()
        } else {
            canned::openai_reachable()
        }
    }
}
