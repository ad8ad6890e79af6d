//! Mutual TLS on the gRPC port: the server configuration built from a fleet CA directory
//! (see `fleet_ca`), the agent identity read from a verified client certificate, and a
//! watcher that re-reads the directory when it changes, so a revocation takes effect without
//! a restart (new handshakes are refused, open streams of the revoked certificate closed).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::fleet_ca::{CA_CERT, COLLECTOR_CERT, COLLECTOR_KEY, CRL};

/// How often the CA directory is checked for a new revocation list or certificate.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The URI an agent certificate names its identity with.
pub fn identity_uri(agent_id: &str, region: &str) -> String {
    format!("urn:blockwatch:agent:{agent_id}:{region}")
}

/// Who a verified client certificate says the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub region: String,
    /// Lowercase hex of the certificate's serial number.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the identity from an agent certificate (DER). The certificate must carry exactly one
/// `urn:blockwatch:agent:ID:REGION` name, both parts by the id rule.
pub fn identity_of(der: &[u8]) -> Result<AgentIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| format!("subject alternative names: {e}"))?;
    let mut found = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        let x509_parser::extensions::GeneralName::URI(uri) = name else { continue };
        let Some(rest) = uri.strip_prefix("urn:blockwatch:agent:") else { continue };
        if found.is_some() {
            return Err("the certificate names more than one blockwatch agent".into());
        }
        found = Some(rest.to_string());
    }
    let rest = found.ok_or("the certificate names no blockwatch agent (no urn:blockwatch:agent: name)")?;
    let (agent_id, region) = rest.split_once(':').ok_or("the agent name has no region")?;
    blockwatch_proto::id::check(agent_id).map_err(|rule| format!("agent id in the certificate: {rule}"))?;
    blockwatch_proto::id::check(region).map_err(|rule| format!("region in the certificate: {rule}"))?;
    Ok(AgentIdentity {
        agent_id: agent_id.to_string(),
        region: region.to_string(),
        serial: crate::fleet_ca::hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A revocation list's entries: (raw serial, unix seconds of the revocation).
pub type Revocations = Vec<(Vec<u8>, i64)>;

/// A revocation list's entries and its number.
pub fn parse_crl(pem: &[u8]) -> Result<(Revocations, u64), String> {
    let der = CertificateRevocationListDer::from_pem_slice(pem).map_err(|e| format!("not a PEM CRL: {e}"))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| format!("not a CRL: {e}"))?;
    let entries =
        crl.iter_revoked_certificates().map(|r| (r.raw_serial().to_vec(), r.revocation_date.timestamp())).collect();
    let number = crl
        .crl_number()
        .map(|n| n.to_bytes_be().iter().fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(u64::from(*b))))
        .unwrap_or(0);
    Ok((entries, number))
}

/// What a TLS port serves with: the rustls configuration and, on the agents' port, the
/// revoked serials (hex).
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub revoked: Arc<HashSet<String>>,
    /// Clients present agent certificates, and each connection carries the identity.
    pub agents: bool,
}

/// A server configuration for the HTTP API: the certificate chain and key in PEM files, no
/// client certificates (clients use bearer tokens), HTTP/1.1.
pub fn load_api(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
    let cert_pem = std::fs::read(cert_file).map_err(|e| file_error(cert_file)(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_file)(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert_file)("no certificate".into()));
    }
    let key_pem = std::fs::read(key_file).map_err(|e| file_error(key_file)(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| file_error(key_file)(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls { config: Arc::new(config), revoked: Arc::default(), agents: false })
}

/// Why the CA directory could not be served from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_error(path: &Path) -> impl FnOnce(String) -> TlsError + '_ {
    move |why| TlsError::File { path: path.to_owned(), why }
}

/// Builds the server configuration from a CA directory: the collector's certificate and key,
/// client certificates required and verified against the CA, the revocation list applied.
pub fn load(dir: &Path) -> Result<ServerTls, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| file_error(&path)(e.to_string())).map(|b| (path, b))
    };
    let (ca_path, ca_pem) = read(CA_CERT)?;
    let ca = CertificateDer::from_pem_slice(&ca_pem).map_err(|e| file_error(&ca_path)(e.to_string()))?;
    let (cert_path, cert_pem) = read(COLLECTOR_CERT)?;
    let mut chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&cert_path)(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(&cert_path)("no certificate".into()));
    }
    chain.push(ca.clone());
    let (key_path, key_pem) = read(COLLECTOR_KEY)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| file_error(&key_path)(e.to_string()))?;
    let (crl_path, crl_pem) = read(CRL)?;
    let crl =
        CertificateRevocationListDer::from_pem_slice(&crl_pem).map_err(|e| file_error(&crl_path)(e.to_string()))?;
    let (entries, _) = parse_crl(&crl_pem).map_err(file_error(&crl_path))?;
    let revoked: HashSet<String> = entries.iter().map(|(s, _)| crate::fleet_ca::hex(s)).collect();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| file_error(&ca_path)(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .with_crls([crl])
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls { config: Arc::new(config), revoked: Arc::new(revoked), agents: true })
}

/// When each file the server reads last changed.
fn stamp(dir: &Path) -> Vec<Option<(SystemTime, u64)>> {
    [CA_CERT, COLLECTOR_CERT, COLLECTOR_KEY, CRL]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// Loads `dir` and keeps re-loading it when a file changes, until every receiver is gone. A
/// directory that stops loading (a half-edited file) keeps the last good configuration and
/// says why once per change.
pub fn watch(dir: PathBuf) -> Result<watch::Receiver<ServerTls>, TlsError> {
    let mut last = stamp(&dir);
    let (tx, rx) = watch::channel(load(&dir)?);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let now = stamp(&dir);
            if now == last {
                continue;
            }
            last = now;
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || load(&d)).await {
                Ok(Ok(tls)) => {
                    tracing::info!(dir = %dir.display(), revoked = tls.revoked.len(), "fleet CA reloaded");
                    tx.send_replace(tls);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "fleet CA changed but does not load; keeping the last good one")
                }
                Err(e) => tracing::error!(error = %e, "fleet CA reload failed"),
            }
        }
    });
    Ok(rx)
}
