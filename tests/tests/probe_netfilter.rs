//! Outcomes that need the path to misbehave, not the server: a black hole (SYN dropped),
//! an ICMP host-unreachable, and a RST injected right after the TCP handshake.
//!
//! Each runs inside a fresh network namespace (`unshare -n`) holding only a loopback
//! interface and an nftables rule, so nothing outside this machine's namespaces is touched.
//! That needs root, `unshare` and `nft`; without them each test prints why and skips.
//!
//! Mechanics: the outer test re-runs this test binary inside the namespace with
//! `BW_NETNS_INNER=1` and `--exact inner_*`; the inner test does the probing.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_tests::faultkit::TestPki;
use common::*;

const INNER: &str = "BW_NETNS_INNER";
const BLACKHOLE_PORT: u16 = 4431;
const UNREACHABLE_PORT: u16 = 4432;
const RESET_PORT: u16 = 4433;

/// The namespace's only ruleset (output hook: loopback traffic passes it once).
fn rules() -> String {
    format!(
        "table inet bw {{
  chain out {{
    type filter hook output priority 0; policy accept;
    tcp dport {BLACKHOLE_PORT} drop
    tcp dport {UNREACHABLE_PORT} reject with icmpx type host-unreachable
    tcp dport {RESET_PORT} tcp flags & (syn | ack | fin | rst) == ack reject with tcp reset
  }}
}}
"
    )
}

/// Why the namespace cannot be made here, if it cannot.
fn cannot_isolate() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !root {
        return Some("not root".into());
    }
    for tool in ["unshare", "ip", "nft"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            return Some(format!("{tool} not installed (apt-get install -y util-linux iproute2 nftables)"));
        }
    }
    None
}

/// Runs `inner` (a test of this binary) inside a new network namespace with [`rules`].
/// Returns false when the test was skipped.
fn run_isolated(inner: &str) -> bool {
    if let Some(why) = cannot_isolate() {
        eprintln!("SKIPPED: cannot build a network namespace: {why}");
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let script = r#"ip link set lo up && nft -f - && exec "$0" --exact "$1" --nocapture --test-threads=1"#;
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .arg(&exe)
        .arg(inner)
        .env(INNER, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    child.stdin.take().expect("stdin").write_all(rules().as_bytes()).expect("write rules");
    let out = child.wait_with_output().expect("wait for namespace run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("Operation not permitted") {
        eprintln!("SKIPPED: namespaces not permitted here: {stderr}");
        return false;
    }
    assert!(out.status.success() && stdout.contains("1 passed"), "inner run failed:\n{stdout}\n{stderr}");
    true
}

fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

#[test]
fn blackhole_is_tcp_timeout() {
    run_isolated("inner_blackhole");
}

#[test]
fn icmp_unreachable_is_tcp_unreachable() {
    run_isolated("inner_unreachable");
}

#[test]
fn rst_after_handshake_is_tcp_reset() {
    run_isolated("inner_reset");
}

fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/v1/models")
}

#[tokio::test]
async fn inner_blackhole() {
    if !inside() {
        return;
    }
    let pki = TestPki::new().unwrap();
    let eng = engine(&pki, vec![]);
    let started = std::time::Instant::now();
    let rep = eng.probe(&spec(url(BLACKHOLE_PORT), provider("openai"), SHORT)).await;
    let took = started.elapsed();
    check(&rep, Outcome::TcpTimeout, "generic_timeout_error", ran_ip(true, false, false));
    assert!(took < SHORT + Duration::from_millis(300), "took {took:?} with a {SHORT:?} budget");
}

#[tokio::test]
async fn inner_unreachable() {
    if !inside() {
        return;
    }
    let pki = TestPki::new().unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(url(UNREACHABLE_PORT), provider("openai"), QUICK)).await;
    check(&rep, Outcome::TcpUnreachable, "host_unreachable", ran_ip(true, false, false));
}

#[tokio::test]
async fn inner_reset() {
    if !inside() {
        return;
    }
    // The kernel completes the handshake from the backlog; no accept is needed.
    let _listener = tokio::net::TcpListener::bind((LO, RESET_PORT)).await.unwrap();
    let pki = TestPki::new().unwrap();
    let rep = engine(&pki, vec![]).probe(&spec(url(RESET_PORT), provider("openai"), QUICK)).await;
    // The RST lands while connect() is completing, so the TCP phase reports it.
    check(&rep, Outcome::TcpReset, "connection_reset", ran_ip(true, false, false));
}
