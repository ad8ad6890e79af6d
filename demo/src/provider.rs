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
