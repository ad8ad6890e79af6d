//! The agent's footprint, measured: stripped binary size, resident memory while probing 20
//! HTTPS targets every 60 s, and CPU per HTTPS probe as a ratio against Prometheus
//! blackbox_exporter probing the same local TLS server in the same run.
//!
//! `cargo build --release --bins && cargo bench -p blockwatch-tests --bench footprint`
//! Options (after `--`): `--rss-seconds N` (default 130: two full rounds), `--cpu-seconds N`
//! (default 30). blackbox_exporter comes from Debian (`prometheus-blackbox-exporter`); without
//! it the ratio is skipped with a note.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use blockwatch_tests::fake_collector::{cpu_seconds, rss_kib};
use blockwatch_tests::provider::Provider;
use blockwatch_tests::*;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

fn agent_cfg(id: &str, collector: SocketAddr, provider: &Provider, dir: &Path, source: &str, interval: &str) -> String {
    let mut s = format!(
        "agent_id = \"{id}\"\nregion = \"bench\"\n{}interval = \"{interval}\"\ntimeout = \"900ms\"\n\
         source_address = \"{source}\"\nspool_dir = \"{}\"\nca_file = \"{}\"\n[confirm]\ncount = 0\n",
        blockwatch_tests::uplink(dir, collector, id, "bench"),
        dir.join(format!("spool-{id}")).display(),
        provider.ca_file.display()
    );
    for i in 0..20 {
        s.push_str(&format!(
            "[[target]]\nid = \"t{i}\"\nurl = \"{}\"\nprovider = \"openai\"\nlocal = true\n",
            provider.url_at(&format!("/t{i}/v1/models"))
        ));
    }
    s
}

fn main() {
    let rss_seconds = arg("--rss-seconds", 130);
    let cpu_seconds_window = arg("--cpu-seconds", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_bin = bin("blockwatch-agent");
    println!("footprint of {}", agent_bin.display());
    for name in ["blockwatch-agent", "blockwatch-collector"] {
        let size = std::fs::metadata(bin(name)).map(|m| m.len()).unwrap_or(0);
        println!(
            "  binary {name:<22} {:>6.2} MB (stripped release build; goal for the agent ≤ 10 MB)",
            size as f64 / 1e6
        );
    }

    let provider = Provider::start(dir.path());
    let mut collector = CollectorProc::start(dir.path(), None, "");

    // Memory: 20 HTTPS targets every 60 s.
    let mut agent =
        start_agent(dir.path(), "rss", &agent_cfg("rss", collector.addr, &provider, dir.path(), "127.0.0.2", "60s"));
    let pid = agent.child.id();
    let start = Instant::now();
    let from: IpAddr = "127.0.0.2".parse().unwrap();
    let mut peak = 0;
    // CPU counted from 5 s in, past start-up.
    let mut counted_from = None;
    while start.elapsed() < Duration::from_secs(rss_seconds) {
        peak = peak.max(rss_kib(pid));
        if counted_from.is_none() && start.elapsed() >= Duration::from_secs(5) {
            counted_from = Some((cpu_seconds(pid), provider.requests_from(from)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = rss_kib(pid);
    let probes = provider.requests_from(from);
    // Everything the agent spent (heartbeats and idle timers too) per probe: at this pace
    // each result is a spool commit and a batch of its own.
    let (cpu0, n0) = counted_from.unwrap_or((cpu_seconds(pid), probes));
    let slow = (cpu_seconds(pid) - cpu0, probes - n0);
    let slow_cpu = slow.0 / slow.1.max(1) as f64;
    agent.terminate();
    println!(
        "  RSS, 20 HTTPS targets every 60 s, {rss_seconds} s, {probes} probes: peak {:.1} MB, last {:.1} MB (goal ≤ 15 MB)",
        peak as f64 / 1024.0,
        last as f64 / 1024.0
    );
    println!(
        "  CPU per HTTPS probe at that pace:       {:.1} µs over {} probes (whole agent, from 5 s in)",
        slow_cpu * 1e6,
        slow.1
    );

    // CPU per probe: 20 targets every second; count from 5 s in to skip start-up.
    let src: IpAddr = "127.0.0.3".parse().unwrap();
    let mut agent =
        start_agent(dir.path(), "cpu", &agent_cfg("cpu", collector.addr, &provider, dir.path(), "127.0.0.3", "1s"));
    let pid = agent.child.id();
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, n0) = (cpu_seconds(pid), provider.requests_from(src));
    std::thread::sleep(Duration::from_secs(cpu_seconds_window));
    let (cpu1, n1) = (cpu_seconds(pid), provider.requests_from(src));
    agent.terminate();
    let ours = (cpu1 - cpu0) / (n1 - n0).max(1) as f64;
    println!(
        "  CPU per HTTPS probe, blockwatch-agent:  {:.1} µs over {} probes (whole agent: probe, spool fsync, uplink)",
        ours * 1e6,
        n1 - n0
    );

    match blackbox_cpu_per_probe(dir.path(), &provider, n1 - n0) {
        Ok((theirs, n)) => {
            println!(
                "  CPU per HTTPS probe, blackbox_exporter: {:.1} µs over {n} probes (same TLS server, same run)",
                theirs * 1e6
            );
            println!("  ratio blockwatch-agent / blackbox_exporter: {:.2}", ours / theirs);
        }
        Err(why) => println!("  blackbox_exporter reference skipped: {why}"),
    }
    collector.proc.terminate();
}

/// Runs blackbox_exporter against the same provider and returns CPU seconds per probe.
fn blackbox_cpu_per_probe(dir: &Path, provider: &Provider, probes: u64) -> Result<(f64, u64), String> {
    let exe = ["/usr/bin/prometheus-blackbox-exporter", "/usr/bin/blackbox_exporter"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("not installed (apt-get install prometheus-blackbox-exporter)")?;
    let cfg = dir.join("blackbox.yml");
    std::fs::write(
        &cfg,
        format!(
            "modules:\n  https_local:\n    prober: http\n    timeout: 5s\n    http:\n      valid_status_codes: [401]\n      preferred_ip_protocol: ip4\n      tls_config:\n        ca_file: {}\n",
            provider.ca_file.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    // blackbox_exporter is not ours: it takes a listen address but does not say which port
    // it got, so it is handed one that was free a moment ago.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proc = Proc::start(
        Path::new(exe),
        &[&format!("--config.file={}", cfg.display()), &format!("--web.listen-address={listen}")],
        dir.join("blackbox.log"),
    );
    let addr: SocketAddr = listen.parse().unwrap();
    wait_for("blackbox_exporter to listen", Duration::from_secs(20), || listening(addr).then_some(()));
    let target = provider.url_at("/bb/v1/models");
    // Warm up, then measure as many probes as the agent made, at its pace of 20 at a time.
    for _ in 0..20 {
        if !bb_probe(addr, &target)? {
            return Err(format!("blackbox_exporter's probe failed; its log:\n{}", proc.log()));
        }
    }
    // blackbox_exporter 0.23 cannot bind a source address for HTTP probes; it connects from
    // 127.0.0.1, which no agent of this benchmark uses.
    let src: IpAddr = "127.0.0.1".parse().unwrap();
    let (cpu0, n0) = (cpu_seconds(proc.child.id()), provider.requests_from(src));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || {
                for _ in 0..probes / 4 {
                    let _ = bb_probe(addr, &target);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let (cpu1, n1) = (cpu_seconds(proc.child.id()), provider.requests_from(src));
    proc.terminate();
    Ok(((cpu1 - cpu0) / (n1 - n0).max(1) as f64, n1 - n0))
}

/// One blackbox_exporter probe through its `/probe` endpoint; true when it succeeded.
fn bb_probe(addr: SocketAddr, target: &str) -> Result<bool, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(s, "GET /probe?module=https_local&target={target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body.contains("probe_success 1"))
}
