//! A throwaway certificate authority and server certificate, made at start-up, so simulated
//! providers speak real, verifiable TLS on loopback.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server certificate it signed.
pub struct LocalPki {
    /// The CA certificate (PEM) that clients must trust.
    pub ca_pem: String,
    /// A rustls server config presenting the server certificate.
    pub server_config: Arc<ServerConfig>,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("building TLS server config: {0}")]
    Tls(#[from] rustls::Error),
}

impl LocalPki {
    /// Makes a CA and a server certificate for `names` (DNS names or IP literals).
    pub fn generate(names: &[&str]) -> Result<LocalPki, PkiError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "blockwatch local CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        leaf_params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain = vec![CertificateDer::from(leaf.der().to_vec())];
        let mut server_config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(LocalPki { ca_pem: ca.pem(), server_config: Arc::new(server_config) })
    }
}
