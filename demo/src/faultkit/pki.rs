//! A throwaway CA and server certificates for the fault kit, made with rcgen.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::FaultError;

/// A test CA. Its PEM goes into `EngineConfig::extra_ca_pem`; its server configurations go
/// to the fault kit's TLS servers.
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Generates a new CA.
    pub fn new() -> Result<TestPki, FaultError> {
        let (ca_pem, ca_der, issuer) = new_ca("blockwatch fault kit CA")?;
        Ok(TestPki { ca_pem, ca_der, issuer })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &[u8] {
        self.ca_pem.as_bytes()
    }

    /// A server configuration with a certificate for `names` (DNS names or IP addresses).
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>, FaultError> {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        self.config_for(params, &self.issuer, &self.ca_der)
    }

    /// Like [`server_config`](Self::server_config), with a certificate that expired in 2020.
    pub fn expired_server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>, FaultError> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        self.config_for(params, &self.issuer, &self.ca_der)
    }

    /// A certificate for `names` and its key, PEM (the certificate followed by the CA's), for
    /// servers that read files (an SMTP server in Python, say).
    pub fn server_pem(&self, names: &[&str]) -> Result<(String, String), FaultError> {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", cert.pem(), self.ca_pem), key.serialize_pem()))
    }

    /// A certificate for `names` issued by a CA nobody trusts.
    pub fn untrusted_server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>, FaultError> {
        let (_, other_der, other) = new_ca("untrusted CA")?;
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        self.config_for(params, &other, &other_der)
    }

    fn config_for(
        &self,
        params: CertificateParams,
        issuer: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
    ) -> Result<Arc<ServerConfig>, FaultError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca_der.clone()], key_der)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn new_ca(name: &str) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), FaultError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), cert.der().clone(), Issuer::new(params, key)))
}
