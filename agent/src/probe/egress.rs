//! The agent's egress identity: the address an IP-echo endpoint (like `https://api.ipify.org`)
//! sees the agent connect from. Looked up through the probe engine, so it leaves by the same
//! resolver, trust roots and source address as the probes, and kept current in a `watch`,
//! with the network it belongs to when `geoip_db` names databases.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::geoip::{GeoIp, Network};
use super::{Engine, ProbeSpec};

/// The agent's egress identity, as every result records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// The address the echo endpoint saw; empty until the first look-up succeeds.
    pub address: String,
    /// Its network (ASN, AS organisation, country), from `geoip_db`; empty without one.
    pub network: Network,
}

impl Egress {
    /// Writes the identity into a result.
    pub fn fill(&self, r: &mut blockwatch_proto::v1::ProbeResult) {
        r.egress_address.clone_from(&self.address);
        r.egress_asn = self.network.asn;
        r.egress_as_org.clone_from(&self.network.as_org);
        r.egress_country.clone_from(&self.network.country);
    }
}

/// How often the egress address is looked up again.
pub const REFRESH: Duration = Duration::from_secs(3600);
/// How soon a failed look-up is retried; the last known address is kept meanwhile.
pub const RETRY: Duration = Duration::from_secs(60);
/// Longest answer shown in an error (the body is the engine's, already capped).
const SHOWN: usize = 64;

/// Why a look-up failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// No answer: the request failed in one of its phases.
    #[error("egress echo {url}: {outcome}: {detail}")]
    Fetch {
        /// The echo URL.
        url: String,
        /// The outcome name (`tcp_refused`).
        outcome: &'static str,
        /// What failed.
        detail: String,
    },
    /// The endpoint answered, but not with 200.
    #[error("egress echo {url}: status {status}")]
    Status {
        /// The echo URL.
        url: String,
        /// The status it answered.
        status: u16,
    },
    /// The answer is not a bare IP address.
    #[error("egress echo {url}: answer {answer:?} is not an IP address")]
    NotAnAddress {
        /// The echo URL.
        url: String,
        /// The start of the answer.
        answer: String,
    },
}

/// Looks the egress address up once: a GET of `spec.url` whose plain-text body is the address.
pub async fn lookup(engine: &Engine, spec: &ProbeSpec) -> Result<IpAddr, EgressError> {
    let url = || spec.url.clone();
    let (status, body) = engine.fetch(spec).await.map_err(|f| EgressError::Fetch {
        url: url(),
        outcome: f.outcome.name(),
        detail: f.detail,
    })?;
    if status != 200 {
        return Err(EgressError::Status { url: url(), status });
    }
    let text = String::from_utf8_lossy(&body);
    text.trim()
        .parse()
        .map_err(|_| EgressError::NotAnAddress { url: url(), answer: text.chars().take(SHOWN).collect() })
}

/// Keeps `tx` holding the egress identity until `stop`: looked up now, again every `every`,
/// and `retry` after a failed look-up (keeping the last known address, since a stale identity
/// says more than none). With databases in `geoip`, each look-up also names the address's
/// network; a database that cannot be read leaves the network unknown (and says why).
pub async fn keep_current(
    engine: Engine,
    spec: ProbeSpec,
    geoip: GeoIp,
    every: Duration,
    retry: Duration,
    tx: watch::Sender<Egress>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let wait = match lookup(&engine, &spec).await {
            Ok(ip) => {
                let network = network_of(&geoip, ip).await;
                let egress = Egress { address: ip.to_string(), network };
                if *tx.borrow() != egress {
                    let n = &egress.network;
                    tracing::info!(egress_address = %egress.address, asn = n.asn, as_org = %n.as_org,
                        country = %n.country, "egress address");
                }
                tx.send_replace(egress);
                every
            }
            Err(e) => {
                tracing::warn!(error = %e, retry = %humantime::format_duration(retry), "egress address look-up failed");
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return,
        }
    }
}

/// The network of `ip` from the databases (read on the blocking pool: they are files of
/// megabytes); unknown when there are none or they cannot be read.
async fn network_of(geoip: &GeoIp, ip: IpAddr) -> Network {
    if geoip.is_empty() {
        return Network::default();
    }
    let dbs = geoip.clone();
    match tokio::task::spawn_blocking(move || dbs.network(ip)).await {
        Ok(Ok(network)) => network,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "egress network unknown");
            Network::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "egress network look-up failed");
            Network::default()
        }
    }
}
