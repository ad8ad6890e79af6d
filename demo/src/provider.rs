//! A simulated provider for agent tests: real HTTPS on loopback with a locally made CA,
//! answering OpenAI's keyless 401, or its geo refusal to chosen source addresses.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::faultkit::{FaultServer, TestPki, canned, serve_https};

/// A running simulated provider.
pub struct Provider {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    /// Source addresses currently refused.
    pub blocked: Arc<Mutex<Vec<IpAddr>>>,
    /// Every source address that made a request, with the request path.
    pub seen: Arc<Mutex<std::collections::BTreeSet<(IpAddr, String)>>>,
    /// Requests per source address.
    pub requests: Arc<Mutex<std::collections::BTreeMap<IpAddr, u64>>>,
    // Dropped before the runtime it runs on.
    _server: FaultServer,
    _rt: tokio::runtime::Runtime,
}

impl Provider {
    /// Starts on a free port of 127.0.0.1 and writes its CA to `dir/ca.pem`.
    pub fn start(dir: &Path) -> Provider {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let pki = TestPki::new().expect("pki");
        let tls = pki.server_config(&["localhost", "127.0.0.1"]).expect("server certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, pki.ca_pem()).expect("write ca");
        let blocked: Arc<Mutex<Vec<IpAddr>>> = Arc::default();
        let refused = Arc::clone(&blocked);
        let seen: Arc<Mutex<std::collections::BTreeSet<(IpAddr, String)>>> = Arc::default();
        let record = Arc::clone(&seen);
        let requests: Arc<Mutex<std::collections::BTreeMap<IpAddr, u64>>> = Arc::default();
        let count = Arc::clone(&requests);
        let server = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            serve_https(listener, tls, move |peer, req| {
                if let Ok(mut s) = record.lock() {
                    s.insert((peer.ip(), req.uri().path().to_string()));
                }
                if let Ok(mut c) = count.lock() {
                    *c.entry(peer.ip()).or_default() += 1;
                }
                if refused.lock().map(|b| b.contains(&peer.ip())).unwrap_or(false) {
                    canned::openai_geo_blocked()
                } else {
                    canned::openai_reachable()
                }
            })
            .expect("serve")
        });
        Provider { addr: server.addr(), ca_file, blocked, seen, requests, _server: server, _rt: rt }
    }

    /// Requests seen from `ip` so far.
    pub fn requests_from(&self, ip: IpAddr) -> u64 {
        self.requests.lock().map(|c| c.get(&ip).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// The probe URL.
    pub fn url(&self) -> String {
        self.url_at("/v1/models")
    }

    /// A probe URL with another path (every path answers alike).
    pub fn url_at(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// `blockwatch-demo provider`: the simulated provider as a server of its own (for a compose
/// stack or a lab): HTTPS on `listen` with a fresh CA written to `ca_out`, a certificate for
/// `names`, OpenAI's keyless 401 to everyone, and its geo refusal to the `block` source
/// addresses once `block_after` has passed. Runs until SIGTERM or Ctrl-C.
pub async fn serve_standalone(
    listen: SocketAddr,
    names: &[String],
    ca_out: &Path,
    block: Vec<IpAddr>,
    block_after: std::time::Duration,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let pki = TestPki::new()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let tls = pki.server_config(&names)?;
    if let Some(dir) = ca_out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(ca_out, pki.ca_pem()).with_context(|| format!("cannot write {}", ca_out.display()))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let start = std::time::Instant::now();
    let announced = std::sync::atomic::AtomicBool::new(false);
    let server = serve_https(listener, tls, move |peer, _req| {
        if start.elapsed() >= block_after && block.contains(&peer.ip()) {
            if !announced.swap(true, std::sync::atomic::Ordering::Relaxed) {
                println!("refusing {block:?} from now on (geo block)");
            }
            canned::openai_geo_blocked()
        } else {
            canned::openai_reachable()
        }
    })?;
    println!(
        "simulated provider on https://{} (names {}), CA in {}",
        server.addr(),
        names.join(", "),
        ca_out.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
