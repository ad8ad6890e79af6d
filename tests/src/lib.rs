//! Helpers for the end-to-end tests: find the built binaries, start them as processes on
//! loopback on port 0 (they report the ports they got), wait for conditions with deadlines,
//! read exports.
//!
//! The binaries must be built first (`cargo build --bins`); the README's test command does.

pub mod fake_collector;
pub mod faults;
pub mod mmdb;
pub mod nats;
pub mod receiver;
pub mod session;

pub use blockwatch_demo::{faultkit, provider};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockwatch_proto::trace::TraceRecord;

/// Path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    // A test or bench runs from `target/PROFILE/deps`, a binary of this crate from
    // `target/PROFILE`.
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("the executable's directory");
    let dir = if here.join(name).exists() { here } else { here.parent().expect("target profile dir") };
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --bins` first", path.display());
    path
}

/// A TCP port free on 127.0.0.1 right now, and maybe taken by the time it is used. Only for a
/// port that must be known before any process exists (an agent configured against a collector
/// that is not up yet); anything we start binds port 0 and reports what it got.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    wait_showing(what, limit, || f().ok_or_else(String::new))
}

/// Polls `f` every 50 ms until it returns `Ok`, or panics after `limit` naming `what` and
/// showing what `f` last saw instead (its last `Err`).
pub fn wait_showing<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= end => {
                let seen = if seen.is_empty() { String::new() } else { format!("; last seen:\n{seen}") };
                panic!("timed out after {limit:?} waiting for {what}{seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A child process that is killed when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin args…`, logging stderr to `log`; stdout is discarded.
    pub fn start(bin: &Path, args: &[&str], log: PathBuf) -> Proc {
        Proc::spawn(bin, args, log, Stdio::null())
    }

    /// Like [`Proc::start`], with stdout piped to `child.stdout`.
    pub fn start_piped(bin: &Path, args: &[&str], log: PathBuf) -> Proc {
        Proc::spawn(bin, args, log, Stdio::piped())
    }

    fn spawn(bin: &Path, args: &[&str], log: PathBuf, stdout: Stdio) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        // `info` unless BW_TEST_RUST_LOG says more (tests read info lines in the logs).
        let level = std::env::var("BW_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        let child =
            Command::new(bin).args(args).env("RUST_LOG", level).stdout(stdout).stderr(err).spawn().expect("spawn");
        Proc { child, log }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to 15 s) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("process did not exit within 15s of SIGTERM; log:\n{}", self.log());
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when something accepts TCP connections on `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A collector process with its own data directory.
pub struct CollectorProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The HTTP query API.
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

/// How long a collector may take to open its store and bind its listeners.
const COLLECTOR_START_LIMIT: Duration = Duration::from_secs(20);

impl CollectorProc {
    /// Starts `blockwatch-collector serve` in `dir` with `extra` config lines and waits until
    /// it listens. gRPC listens on `port` when given (a restart on the port agents already
    /// use), else on port 0; the API always on port 0. The addresses come from the line the
    /// collector prints on stdout once bound.
    ///
    /// Agents are authenticated with mutual TLS, as shipped: a fleet CA is made in
    /// `dir/fleet-ca` with the real `ca init` (kept across restarts in the same `dir`), and
    /// [`uplink`] issues each agent its certificate.
    pub fn start(dir: &Path, port: Option<u16>, extra: &str) -> CollectorProc {
        let ca = fleet_ca(dir);
        let tls = format!("[tls]\nca_dir = {:?}\n", ca.display().to_string());
        CollectorProc::launch(dir, port, "", extra, &tls, None)
    }

    /// Like [`CollectorProc::start`] with plaintext gRPC (`insecure = true`): for tests that
    /// speak to the ingest with their own plaintext client.
    pub fn start_insecure(dir: &Path, port: Option<u16>, extra: &str) -> CollectorProc {
        CollectorProc::launch(dir, port, "insecure = true\n", extra, "", None)
    }

    /// Like [`CollectorProc::start_insecure`], with the process's open-file limit set to
    /// `nofile` (through util-linux's `prlimit`).
    pub fn start_with_file_limit(dir: &Path, extra: &str, nofile: u32) -> CollectorProc {
        CollectorProc::launch(dir, None, "insecure = true\n", extra, "", Some(nofile))
    }

    /// Writes the config as `top` (top-level keys), the addresses, `extra` (keys, then
    /// tables), `tail` (tables) and starts the collector.
    fn launch(dir: &Path, port: Option<u16>, top: &str, extra: &str, tail: &str, nofile: Option<u32>) -> CollectorProc {
        let data_dir = dir.join("collector-data");
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "{top}listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n{tail}",
                port.unwrap_or(0),
                data_dir.display()
            ),
        )
        .expect("write config");
        let log = (1..).map(|n| dir.join(format!("collector-{n}.log"))).find(|p| !p.exists()).expect("a log name");
        let collector = bin("blockwatch-collector");
        let serve = [collector.to_str().unwrap(), "serve", "--config", config.to_str().unwrap()];
        let mut proc = match nofile {
            None => Proc::start_piped(&collector, &serve[1..], log),
            Some(n) => {
                let limit = format!("--nofile={n}:{n}");
                let mut args = vec![limit.as_str(), "--"];
                args.extend(serve);
                Proc::start_piped(Path::new("prlimit"), &args, log)
            }
        };
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let Some(line) = listening_line(stdout, COLLECTOR_START_LIMIT) else {
            panic!(
                "collector exited or did not report its addresses within {COLLECTOR_START_LIMIT:?}; log:\n{}",
                proc.log()
            );
        };
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= address in the collector's {line:?}"))
        };
        let (addr, api) = (field("grpc"), field("api"));
        CollectorProc { proc, addr, api, data_dir, config }
    }
}

/// The fleet CA of tests in `dir` (`dir/fleet-ca`), made with the real `ca init` when absent.
pub fn fleet_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("fleet-ca");
    if !ca.join("ca.key").exists() {
        let out =
            run(&bin("blockwatch-collector"), &["ca", "init", "--dir", ca.to_str().unwrap(), "--name", "127.0.0.1"]);
        assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    }
    ca
}

/// An agent certificate for `id` in `region`, issued with the real `ca issue-agent` into
/// `dir/fleet-ca/agents/ID`; returns that directory.
pub fn issue_agent(dir: &Path, id: &str, region: &str) -> PathBuf {
    let ca = fleet_ca(dir);
    let out = ca.join("agents").join(id);
    let issued = run(
        &bin("blockwatch-collector"),
        &[
            "ca",
            "issue-agent",
            "--dir",
            ca.to_str().unwrap(),
            "--id",
            id,
            "--region",
            region,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(issued.status.success(), "ca issue-agent: {}", String::from_utf8_lossy(&issued.stderr));
    out
}

/// The agent config keys that reach the collector at `addr`: `https://` with a certificate
/// for `id` in `region` when `dir` has a fleet CA (a collector from [`CollectorProc::start`]),
/// else plaintext with `insecure = true`. Top-level keys (an inline `tls` table), so they go
/// anywhere before the first table.
pub fn uplink(dir: &Path, addr: SocketAddr, id: &str, region: &str) -> String {
    if !dir.join("fleet-ca").join("ca.key").exists() {
        return format!("collector = \"http://{addr}\"\ninsecure = true\n");
    }
    let certs = issue_agent(dir, id, region);
    let file = |name: &str| format!("{:?}", certs.join(name).display().to_string());
    format!(
        "collector = \"https://{addr}\"\ntls = {{ ca_file = {}, cert_file = {}, key_file = {} }}\n",
        file("ca.crt"),
        file("agent.crt"),
        file("agent.key")
    )
}

/// An agent config for the real binary: `targets` targets (`t0`, `t1`, …) on `provider`,
/// probed every second from `source`, no confirmations, spool in `dir/spool-ID`, reaching
/// the collector at `collector` through [`uplink`].
pub fn agent_toml(
    id: &str,
    region: &str,
    collector: SocketAddr,
    provider: &provider::Provider,
    dir: &Path,
    source: &str,
    targets: usize,
) -> String {
    let mut s = format!(
        "agent_id = \"{id}\"\nregion = \"{region}\"\n{}interval = \"1s\"\ntimeout = \"900ms\"\n\
         source_address = \"{source}\"\nspool_dir = \"{}\"\nca_file = \"{}\"\n[confirm]\ncount = 0\n",
        uplink(dir, collector, id, region),
        dir.join(format!("spool-{id}")).display(),
        provider.ca_file.display()
    );
    for i in 0..targets {
        s.push_str(&format!(
            "[[target]]\nid = \"t{i}\"\nurl = \"{}\"\nprovider = \"openai\"\nlocal = true\n",
            provider.url_at(&format!("/t{i}/v1/models"))
        ));
    }
    s
}

/// Opens an agent's spool after it stopped: (pending, last sequence number handed out).
pub fn spool_state(dir: &Path, id: &str) -> (u64, u64) {
    let spool = blockwatch_agent::spool::Spool::open(&dir.join(format!("spool-{id}")), 64 << 20).expect("open spool");
    (spool.stats().pending, spool.last_seq())
}

/// CPU time (user and system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = f[11] + f[12];
    Duration::from_millis(ticks * 1000 / CLOCK_TICKS)
}

/// `sysconf(_SC_CLK_TCK)` on Linux, which is 100 on every platform Rust targets there.
const CLOCK_TICKS: u64 = 100;

/// Reads `stdout` on a thread until a line starting `listening ` and returns it, or `None` at
/// EOF or after `limit`. The thread keeps reading to EOF so the child never blocks on a full
/// pipe.
fn listening_line(stdout: ChildStdout, limit: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("listening ") {
                let _ = tx.send(text.trim_end().to_string());
                break;
            }
            line.clear();
        }
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(limit).ok()
}

/// Writes an agent config and starts `blockwatch-agent run`.
pub fn start_agent(dir: &Path, id: &str, config_body: &str) -> Proc {
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(&config, config_body).expect("write agent config");
    Proc::start(&bin("blockwatch-agent"), &["run", "--config", config.to_str().unwrap()], dir.join(format!("{id}.log")))
}

/// Runs a binary to completion.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run")
}

/// Exports a stopped collector's store and parses it.
pub fn export(data_dir: &Path) -> Vec<TraceRecord> {
    let out = run(&bin("blockwatch-collector"), &["export", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8 export")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad export line {l:?}: {e}")))
        .collect()
}

/// The results a running collector has stored, from its API (`GET /v1/results`).
pub fn stored(api: SocketAddr) -> Vec<TraceRecord> {
    let (status, body) = http_get(api, "/v1/results");
    assert_eq!(status, 200, "GET /v1/results: {body}");
    body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad result line {l:?}: {e}"))).collect()
}

/// The sequence number at the end of a probe id (`AGENT/EPOCH/SEQ`).
pub fn seq_of(record: &TraceRecord) -> u64 {
    record.probe_id.rsplit('/').next().and_then(|s| s.parse().ok()).expect("probe id ends in a sequence")
}

/// The sequence numbers of `agent`'s results that a running collector has stored.
pub fn stored_seqs(api: SocketAddr, agent: &str) -> BTreeSet<u64> {
    stored(api).iter().filter(|r| r.agent_id == agent).map(seq_of).collect()
}

/// Per agent: the sequence numbers of its stored results (from `AGENT/EPOCH/SEQ` ids),
/// sorted, and panics if any probe id appears twice.
pub fn seqs_by_agent(records: &[TraceRecord]) -> BTreeMap<String, Vec<u64>> {
    let mut ids = std::collections::HashSet::new();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        assert!(ids.insert(r.probe_id.clone()), "probe {} stored twice", r.probe_id);
        out.entry(r.agent_id.clone()).or_default().push(seq_of(r));
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// Reads a whole file to a string (empty when missing).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// `GET path` on a plain-HTTP server; returns (status, body). Enough HTTP/1.1 for the
/// collector's query API.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None, None)
}

/// One HTTP/1.1 request to the API: `method` `path`, with `Authorization: Bearer TOKEN` when
/// given, over TLS trusting the CA in the PEM file `tls_ca` when given (server name
/// `127.0.0.1`). Returns the status and the body (de-chunked).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    tls_ca: Option<&Path>,
) -> (u16, String) {
    http_exchange(addr, method, path, token, tls_ca, b"")
}

/// `method path` with a JSON `body` on a plain-HTTP server, no token; (status, body).
pub fn http_send(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_exchange(addr, method, path, None, None, body)
}

fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    tls_ca: Option<&Path>,
    body: &[u8],
) -> (u16, String) {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let kind = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut raw = Vec::new();
    match tls_ca {
        None => {
            s.write_all(&request).expect("send request");
            s.read_to_end(&mut raw).expect("read response");
        }
        Some(ca) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).expect("a PEM CA")).expect("a CA");
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("a TLS client");
            let mut tls = rustls::StreamOwned::new(conn, s);
            tls.write_all(&request).expect("send request over TLS");
            // A server closing without close_notify is an error to rustls; what was read counts.
            let _ = tls.read_to_end(&mut raw);
        }
    }
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
