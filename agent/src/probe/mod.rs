//! The layered probe engine: DNS → TCP → TLS → HTTP against one AI API endpoint, each phase
//! timed and each failure named at the phase where it happened.
//!
//! The HTTP request runs over the very connection the TCP and TLS phases measured, so what
//! is classified is what that path answered.

mod builtin;
pub mod catalogue;
pub mod classify;
mod credential;
mod dns;
pub mod egress;
pub(crate) mod entry;
pub mod failure;
pub mod geoip;
mod http;
mod tcp;
pub(crate) mod tls;
mod url;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_proto::v1::{DnsQuery, Header, PhaseDurations, ProbeResult};
use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::Empty;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::time::Instant;

pub use catalogue::{
    AuthStyle, Catalogue, CatalogueError, GeoSignature, LocationVisibility, Provider, ProviderConfig, Signature,
};
pub use credential::{Credential, CredentialError};
pub use dns::{is_bogon, is_sinkhole};
pub use failure::{Failure, ooni, operation};
pub use url::check_url;

use self::url::{ProbeUrl, Scheme, parse_url};

use self::failure::ooni as f;

/// Response headers that identify the edge or the origin, copied into results.
pub const EDGE_HEADERS: &[&str] = &["cf-ray", "server", "x-request-id", "x-amzn-requestid", "cf-mitigated", "via"];

/// Default cap on the response body read, in bytes.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// How the engine resolves, trusts and reads.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// DNS servers (`ip:port`); empty means the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Addresses that mean a forged DNS answer wherever they appear.
    pub poison: Vec<IpAddr>,
    /// Most response body bytes read.
    pub body_cap: usize,
    /// The catalogue whose signatures classify every answer (the target's provider first).
    pub catalogue: Arc<Catalogue>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            nameservers: Vec::new(),
            extra_ca_pem: None,
            poison: Vec::new(),
            body_cap: DEFAULT_BODY_CAP,
            catalogue: Arc::new(Catalogue::builtin()),
        }
    }
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The resolver could not be configured (for example no usable system configuration).
    #[error("resolver: {0}")]
    Resolver(String),
    /// `extra_ca_pem` holds no usable certificate.
    #[error("extra CA certificates: {0}")]
    Ca(String),
    /// The TLS configuration was refused.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// One probe to run.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// `https://host[:port]/path`, or `tcp://host:port` for a connect-only probe.
    pub url: String,
    /// The catalogue entry the target belongs to.
    pub provider: Arc<Provider>,
    /// The whole probe's budget, all phases together.
    pub timeout: Duration,
    /// Local address to connect from, when the agent has several.
    pub source_address: Option<IpAddr>,
    /// The target is local: private and loopback answers are not bogons.
    pub allow_private: bool,
    /// A key to send; only ever sent to one of the provider's own hosts.
    pub credential: Option<Credential>,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// The outcome.
    pub outcome: Outcome,
    /// OONI-style failure string; empty when no operation failed.
    pub failure: String,
    /// The operation that failed ([`operation`]), empty when none did.
    pub failed_operation: String,
    /// Per-phase durations in microseconds; a phase that did not run is 0.
    pub durations: PhaseDurations,
    /// HTTP status, 0 when none arrived.
    pub http_status: u32,
    /// The provider's or edge's error code.
    pub provider_code: String,
    /// The provider id of the spec.
    pub provider: String,
    /// `ip:port` connected to (or tried, when the connection failed), empty when none was tried.
    pub peer_address: String,
    /// `ip:port` connected from, empty when none.
    pub local_address: String,
    /// What DNS answered (also on a bogon failure).
    pub resolved: Vec<IpAddr>,
    /// Edge-identifying response headers ([`EDGE_HEADERS`]).
    pub edge_headers: BTreeMap<String, String>,
    /// Human-readable detail of the outcome.
    pub detail: String,
    /// True when a credential was sent.
    pub keyed: bool,
    /// The URL probed.
    pub url: String,
    /// The DNS queries, each with its records or its failure.
    pub dns_queries: Vec<DnsQuery>,
    /// The TLS session: version (`TLSv1.3`), cipher suite (IANA name), ALPN protocol.
    pub tls_version: String,
    pub tls_cipher_suite: String,
    pub tls_alpn: String,
    /// The request's headers as sent, without the credential's.
    pub request_headers: Vec<(String, String)>,
    /// The response's headers, as received (grouped by name).
    pub response_headers: Vec<(String, String)>,
    /// The body's first bytes ([`blockwatch_proto::bounds::BODY_PREFIX_BYTES`]), and whether
    /// it went on.
    pub body_prefix: Vec<u8>,
    pub body_truncated: bool,
}

impl ProbeReport {
    fn new(provider: &str) -> ProbeReport {
        ProbeReport {
            outcome: Outcome::Unspecified,
            failure: String::new(),
            failed_operation: String::new(),
            durations: PhaseDurations::default(),
            http_status: 0,
            provider_code: String::new(),
            provider: provider.to_string(),
            peer_address: String::new(),
            local_address: String::new(),
            resolved: Vec::new(),
            edge_headers: BTreeMap::new(),
            detail: String::new(),
            keyed: false,
            url: String::new(),
            dns_queries: Vec::new(),
            tls_version: String::new(),
            tls_cipher_suite: String::new(),
            tls_alpn: String::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            body_prefix: Vec::new(),
            body_truncated: false,
        }
    }

    /// Copies the report into a wire result, everything copied from the answer held to the
    /// result bounds ([`blockwatch_proto::bounds`]); the caller sets ids, times and flags.
    pub fn fill(&self, r: &mut ProbeResult) {
        r.outcome = self.outcome as i32;
        r.failure = self.failure.clone();
        r.failed_operation = self.failed_operation.clone();
        r.durations = Some(self.durations);
        r.http_status = self.http_status;
        r.provider_code = self.provider_code.clone();
        r.provider = self.provider.clone();
        r.peer_address = self.peer_address.clone();
        r.local_address = self.local_address.clone();
        r.resolved_addresses = self.resolved.iter().map(IpAddr::to_string).collect();
        r.edge_headers = self.edge_headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        r.detail = self.detail.clone();
        r.keyed = self.keyed;
        r.url = self.url.clone();
        r.dns_queries = self.dns_queries.clone();
        r.tls_version = self.tls_version.clone();
        r.tls_cipher_suite = self.tls_cipher_suite.clone();
        r.tls_alpn = self.tls_alpn.clone();
        let header = |(name, value): &(String, String)| Header { name: name.clone(), value: value.clone() };
        r.request_headers = self.request_headers.iter().map(header).collect();
        r.response_headers = self.response_headers.iter().map(header).collect();
        r.body_prefix = self.body_prefix.clone();
        r.body_truncated = self.body_truncated;
        // A hostile endpoint's huge header or code makes a bounded result, not a refused one.
        blockwatch_proto::bounds::cap_result(r);
    }
}

/// The probe engine. Cheap to clone and share: everything is behind one `Arc`.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    tls: Arc<ClientConfig>,
    poison: Vec<IpAddr>,
    body_cap: usize,
    catalogue: Arc<Catalogue>,
}

fn micros(d: Duration) -> u64 {
    // At least 1 µs for a phase that ran, so "ran" and "did not run" stay distinguishable.
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Engine {
    /// Builds an engine: the resolver, and the TLS client configuration with the webpki roots
    /// plus `extra_ca_pem`.
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        Ok(Engine {
            inner: Arc::new(Inner {
                resolver: dns::resolver(&cfg.nameservers)?,
                tls: tls::client_config(cfg.extra_ca_pem.as_deref())?,
                poison: cfg.poison,
                body_cap: cfg.body_cap,
                catalogue: cfg.catalogue,
            }),
        })
    }

    /// Runs one probe. Never panics and returns within `spec.timeout` plus scheduling slack:
    /// every phase waits on the same deadline.
    pub async fn probe(&self, spec: &ProbeSpec) -> ProbeReport {
        let start = Instant::now();
        let mut rep = ProbeReport::new(spec.provider.id());
        rep.url = spec.url.clone();
        if let Err(f) = self.run(spec, start + spec.timeout, &mut rep).await {
            rep.outcome = f.outcome;
            rep.failure = f.failure;
            rep.failed_operation = f.operation.to_string();
            rep.detail = f.detail;
        }
        rep.durations.total_us = micros(start.elapsed());
        rep
    }

    /// GETs `spec.url` through the same phases, resolver, trust roots, source address and
    /// deadline as a probe, and returns the status and the body (at most the body cap). For
    /// the agent's own look-ups, such as its egress address; no credential is ever sent.
    pub async fn fetch(&self, spec: &ProbeSpec) -> Result<(u16, Bytes), Failure> {
        let target = parse_url(&spec.url)?;
        if target.scheme != Scheme::Https {
            return Err(Failure::agent(format!("fetch {:?}: not an https:// URL", spec.url)));
        }
        let mut rep = ProbeReport::new(spec.provider.id());
        let answer = self.phases(spec, &target, None, Instant::now() + spec.timeout, &mut rep).await?;
        // An https:// target always gets as far as an answer or a failure.
        let answer = answer.ok_or_else(|| Failure::agent("no answer"))?;
        match answer.body_failure {
            Some(cut) => Err(cut.during(operation::HTTP_ROUND_TRIP)),
            None => Ok((answer.status, answer.body)),
        }
    }

    async fn run(&self, spec: &ProbeSpec, deadline: Instant, rep: &mut ProbeReport) -> Result<(), Failure> {
        let target = parse_url(&spec.url)?;
        let provider = &spec.provider;
        let credential = match &spec.credential {
            Some(c) if provider.owns_host(&target.host) => Some(c),
            Some(_) => {
                return Err(Failure::agent(format!(
                    "credential withheld: {} is not a host of provider {}",
                    target.host,
                    provider.id()
                )));
            }
            None => None,
        };
        let Some(answer) = self.phases(spec, &target, credential, deadline, rep).await? else {
            // A tcp:// target asks only whether the path works as far as a connection.
            rep.outcome = Outcome::Ok;
            return Ok(());
        };
        let verdict = classify::classify(
            &self.inner.catalogue,
            provider,
            rep.keyed,
            answer.status,
            &answer.headers,
            &answer.body,
        );
        rep.provider_code = verdict.provider_code;
        if let Some(cut) = answer.body_failure {
            // What arrived was not a refusal and may be only part of the answer: a
            // truncated answer is not `ok`; the cut is what happened.
            if matches!(verdict.outcome, Outcome::Ok | Outcome::HttpUnexpected) {
                let got = answer.body.len();
                let detail = format!("status {}: body cut after {got} bytes: {}", answer.status, cut.detail);
                return Err(Failure { detail, ..cut }.during(operation::HTTP_ROUND_TRIP));
            }
            rep.detail = format!("{}; body cut: {}", verdict.detail, cut.detail);
        } else {
            rep.detail = verdict.detail;
        }
        rep.outcome = verdict.outcome;
        // OONI's `http_request_failed` is a status of 400 or more; an unexpected answer below
        // that (a redirect where a 401 was due) is no failed operation.
        if verdict.outcome != Outcome::Ok && answer.status >= 400 {
            rep.failure = f::HTTP_REQUEST_FAILED.to_string();
            rep.failed_operation = operation::HTTP_ROUND_TRIP.to_string();
        }
        Ok(())
    }

    /// DNS, TCP, then (for https://) TLS and one request, each timed into `rep`. Returns the
    /// answer, or `None` once connected to a tcp:// target.
    async fn phases(
        &self,
        spec: &ProbeSpec,
        target: &ProbeUrl,
        credential: Option<&Credential>,
        deadline: Instant,
        rep: &mut ProbeReport,
    ) -> Result<Option<http::Answer>, Failure> {
        let addrs = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let t = Instant::now();
                let res =
                    dns::resolve(&self.inner.resolver, &target.host, deadline, spec.allow_private, &self.inner.poison)
                        .await;
                rep.durations.dns_us = micros(t.elapsed());
                match res {
                    Ok(resolved) => {
                        rep.resolved = resolved.addrs.clone();
                        rep.dns_queries = resolved.queries;
                        resolved.addrs
                    }
                    Err((failure, resolved)) => {
                        rep.resolved = resolved.addrs;
                        rep.dns_queries = resolved.queries;
                        return Err(failure.during(operation::RESOLVE));
                    }
                }
            }
        };
        // Connect to the first address of the source address's family (IPv4 when unbound).
        let want_v6 = spec.source_address.is_some_and(|s| s.is_ipv6());
        let ip = addrs.iter().find(|a| a.is_ipv6() == want_v6).or(addrs.first()).copied().ok_or_else(|| {
            Failure::new(Outcome::DnsNoAnswer, f::DNS_NO_ANSWER, "no address to connect to").during(operation::RESOLVE)
        })?;
        let peer = SocketAddr::new(ip, target.port);

        let t = Instant::now();
        rep.peer_address = peer.to_string();
        let res = tcp::connect(peer, spec.source_address, deadline).await;
        rep.durations.connect_us = micros(t.elapsed());
        let tcp = res.map_err(|f| f.during(operation::CONNECT))?;
        rep.local_address = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        if target.scheme == Scheme::Tcp {
            return Ok(None);
        }

        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| Failure::agent(format!("server name {:?}: {e}", target.host)))?;
        let t = Instant::now();
        let res = tls::handshake(self.inner.tls.clone(), name, tcp, deadline).await;
        rep.durations.tls_us = micros(t.elapsed());
        let tls = res.map_err(|f| f.during(operation::TLS_HANDSHAKE))?;
        let session = tls.get_ref().1;
        rep.tls_version = session.protocol_version().and_then(|v| v.as_str()).unwrap_or_default().replace('_', ".");
        rep.tls_cipher_suite = session
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .map(|n| n.replacen("TLS13_", "TLS_", 1))
            .unwrap_or_default();
        rep.tls_alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();

        let req = build_request(target, &spec.provider, credential)?;
        rep.keyed = credential.is_some();
        // What was sent, except the credential: its header is left out whatever it is named.
        let secret = credential.map(|c| c.header(spec.provider.config().auth).0);
        rep.request_headers = req
            .headers()
            .iter()
            .filter(|(name, value)| {
                !value.is_sensitive()
                    && secret.is_none_or(|s| !name.as_str().eq_ignore_ascii_case(s))
                    && !blockwatch_proto::bounds::private_header(name.as_str())
            })
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let answer = match http::exchange(tls, req, self.inner.body_cap, deadline).await {
            Ok(a) => a,
            Err((failure, spent)) => {
                rep.durations.http_us = micros(spent);
                return Err(failure.during(operation::HTTP_ROUND_TRIP));
            }
        };
        rep.durations.http_ttfb_us = micros(answer.ttfb);
        rep.durations.http_us = micros(answer.total);
        rep.http_status = u32::from(answer.status);
        rep.response_headers = answer
            .headers
            .iter()
            .filter(|(name, _)| !blockwatch_proto::bounds::private_header(name.as_str()))
            .take(blockwatch_proto::bounds::LIST_LEN)
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let keep = answer.body.len().min(blockwatch_proto::bounds::BODY_PREFIX_BYTES);
        rep.body_prefix = answer.body[..keep].to_vec();
        rep.body_truncated = answer.body.len() > keep || answer.body.len() >= self.inner.body_cap;
        for name in EDGE_HEADERS {
            if let Some(v) = answer.headers.get(*name).and_then(|v| v.to_str().ok()) {
                rep.edge_headers.insert(name.to_string(), v.to_string());
            }
        }
        Ok(Some(answer))
    }
}

fn build_request(
    target: &ProbeUrl,
    provider: &Provider,
    credential: Option<&Credential>,
) -> Result<::http::Request<Empty<Bytes>>, Failure> {
    let mut b = ::http::Request::get(target.path.as_str())
        .header(::http::header::HOST, target.authority.as_str())
        .header(::http::header::USER_AGENT, concat!("blockwatch-probe/", env!("CARGO_PKG_VERSION")))
        .header(::http::header::ACCEPT, "application/json");
    for (k, v) in &provider.config().headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(c) = credential {
        let (name, value) = c.header(provider.config().auth);
        b = b.header(name, value);
    }
    b.body(Empty::new()).map_err(|e| Failure::agent(format!("building request: {e}")))
}
