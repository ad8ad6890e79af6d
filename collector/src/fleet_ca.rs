//! The fleet CA: one directory holding the CA that signs every agent's certificate and the
//! collector's own, and the revocation list the collector enforces.
//!
//! ```text
//! DIR/ca.crt          the CA certificate: agents pin it, the collector verifies agents with it
//! DIR/ca.key          the CA key (0600); only `ca` commands read it
//! DIR/collector.crt   the collector's server certificate (its names as subject alt names)
//! DIR/collector.key
//! DIR/crl.pem         revoked agent certificates, signed by the CA; the collector re-reads it
//! DIR/issued/SERIAL.crt  every agent certificate issued, for `ca list` and `ca revoke --id`
//! ```
//!
//! An agent's identity is in its certificate: the subject alternative name
//! `urn:blockwatch:agent:ID:REGION` (ids follow `proto::id`, which has no `:`), the common
//! name repeating the id for people reading it.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

use crate::tls::{AgentIdentity, Revocations, identity_uri};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const COLLECTOR_CERT: &str = "collector.crt";
pub const COLLECTOR_KEY: &str = "collector.key";
pub const CRL: &str = "crl.pem";
pub const ISSUED: &str = "issued";

/// Default lifetimes, in days: the CA, the collector's certificate, an agent's.
pub const CA_DAYS: u32 = 3650;
pub const COLLECTOR_DAYS: u32 = 397;
pub const AGENT_DAYS: u32 = 397;
/// Longest lifetime `--days` accepts.
pub const MAX_DAYS: u32 = 3650 * 3;

/// What went wrong with the CA directory.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: a fleet CA exists there already (its key is {0}/{CA_KEY}); refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{path}: not a fleet CA directory (no {CA_KEY}); create one with `blockwatch-collector ca init`")]
    Missing { path: PathBuf },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_owned(), source }
}

/// An issued agent certificate as `ca list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedCert {
    pub agent_id: String,
    pub region: String,
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Unix seconds of the revocation, if revoked.
    pub revoked_at: Option<i64>,
}

/// A fleet CA directory.
pub struct FleetCa {
    dir: PathBuf,
}

impl FleetCa {
    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<FleetCa, CaError> {
        if !dir.join(CA_KEY).exists() {
            return Err(CaError::Missing { path: dir.to_owned() });
        }
        Ok(FleetCa { dir: dir.to_owned() })
    }

    /// Creates a CA in `dir` (made if absent, refused if it holds a CA already), a collector
    /// certificate for `names` (DNS names or IP addresses agents use to reach it), and an
    /// empty revocation list.
    pub fn init(dir: &Path, names: &[String], ca_days: u32, collector_days: u32) -> Result<FleetCa, CaError> {
        check_days(ca_days)?;
        check_days(collector_days)?;
        if dir.join(CA_KEY).exists() {
            return Err(CaError::Exists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir.join(ISSUED)).map_err(io(dir))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("blockwatch fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        (params.not_before, params.not_after) = validity(ca_days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = FleetCa { dir: dir.to_owned() };
        ca.write_secret(CA_KEY, &key.serialize_pem())?;
        ca.write(CA_CERT, &cert.pem())?;
        ca.issue_collector(names, collector_days)?;
        ca.write_crl(Vec::new(), 1)?;
        Ok(ca)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key_path = self.dir.join(CA_KEY);
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert_path = self.dir.join(CA_CERT);
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// Issues (or renews) the collector's server certificate for `names`.
    pub fn issue_collector(&self, names: &[String], days: u32) -> Result<(), CaError> {
        check_days(days)?;
        if names.is_empty() {
            return Err(CaError::Invalid(
                "the collector certificate needs at least one --name (the host or address agents connect to)".into(),
            ));
        }
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(&names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        self.write_secret(COLLECTOR_KEY, &key.serialize_pem())?;
        self.write(COLLECTOR_CERT, &cert.pem())
    }

    /// Issues an agent certificate for `agent_id` in `region`; writes `agent.crt`,
    /// `agent.key` and `ca.crt` into `out` (made if absent). Returns what was issued.
    pub fn issue_agent(&self, agent_id: &str, region: &str, days: u32, out: &Path) -> Result<IssuedCert, CaError> {
        check_days(days)?;
        blockwatch_proto::id::check(agent_id).map_err(|rule| CaError::Invalid(format!("--id {agent_id:?}: {rule}")))?;
        blockwatch_proto::id::check(region).map_err(|rule| CaError::Invalid(format!("--region {region:?}: {rule}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(agent_id);
        params.subject_alt_names = vec![SanType::URI(identity_uri(agent_id, region).try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        (params.not_before, params.not_after) = validity(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let serial = hex(serial.as_ref());
        self.write(&format!("{ISSUED}/{serial}.crt"), &cert.pem())?;
        std::fs::create_dir_all(out).map_err(io(out))?;
        write_file(&out.join("agent.key"), &key.serialize_pem(), true)?;
        write_file(&out.join("agent.crt"), &cert.pem(), false)?;
        let ca_path = self.dir.join(CA_CERT);
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
        write_file(&out.join("ca.crt"), &ca_pem, false)?;
        Ok(IssuedCert {
            agent_id: agent_id.to_string(),
            region: region.to_string(),
            serial,
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            revoked_at: None,
        })
    }

    /// Every agent certificate issued, oldest expiry first, with its revocation.
    pub fn list(&self) -> Result<Vec<IssuedCert>, CaError> {
        let revoked = self.revoked()?;
        let dir = self.dir.join(ISSUED);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "crt") {
                continue;
            }
            let pem = std::fs::read(&path).map_err(io(&path))?;
            let id = parse_pem_cert(&pem).map_err(|why| CaError::Parse { path: path.clone(), why })?;
            out.push(IssuedCert {
                revoked_at: revoked.iter().find(|(s, _)| *s == id.serial).map(|(_, t)| *t),
                agent_id: id.agent_id,
                region: id.region,
                serial: id.serial,
                not_before: id.not_before,
                not_after: id.not_after,
            });
        }
        out.sort_by(|a, b| (a.not_after, &a.serial).cmp(&(b.not_after, &b.serial)));
        Ok(out)
    }

    /// Revokes every unrevoked certificate of `agent_id`, or the one with `serial`; returns
    /// those revoked now. The collector picks the new list up within seconds and closes the
    /// agents' open streams.
    pub fn revoke(&self, agent_id: Option<&str>, serial: Option<&str>) -> Result<Vec<IssuedCert>, CaError> {
        let serial = serial.map(str::to_ascii_lowercase);
        let chosen: Vec<IssuedCert> = self
            .list()?
            .into_iter()
            .filter(|c| c.revoked_at.is_none())
            .filter(|c| agent_id.is_none_or(|id| c.agent_id == id) && serial.as_ref().is_none_or(|s| c.serial == *s))
            .collect();
        if chosen.is_empty() {
            return Err(CaError::Invalid(match (agent_id, serial) {
                (Some(id), _) => format!("no unrevoked certificate of agent {id:?} was issued from this CA"),
                (None, Some(s)) => format!("no unrevoked certificate with serial {s} was issued from this CA"),
                (None, None) => "say which certificate: --id or --serial".into(),
            }));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let (mut entries, number) = self.crl_entries()?;
        entries.extend(chosen.iter().map(|c| (unhex(&c.serial), now)));
        self.write_crl(entries, number + 1)?;
        Ok(chosen.into_iter().map(|c| IssuedCert { revoked_at: Some(now), ..c }).collect())
    }

    /// Revoked serials (hex) with their revocation times.
    fn revoked(&self) -> Result<Vec<(String, i64)>, CaError> {
        Ok(self.crl_entries()?.0.into_iter().map(|(s, t)| (hex(&s), t)).collect())
    }

    /// The revocation list's entries (raw serial, unix seconds) and its number.
    fn crl_entries(&self) -> Result<(Revocations, u64), CaError> {
        let path = self.dir.join(CRL);
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io(&path)(e)),
        };
        crate::tls::parse_crl(&pem).map_err(|why| CaError::Parse { path, why })
    }

    fn write_crl(&self, entries: Revocations, number: u64) -> Result<(), CaError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            // The collector does not enforce an expiry on the list: it is the list, re-read
            // whenever it changes, not a cache fetched from a distribution point.
            next_update: now + time::Duration::days(i64::from(CA_DAYS)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .into_iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        self.write(CRL, &crl.pem()?)
    }

    fn write(&self, name: &str, text: &str) -> Result<(), CaError> {
        write_file(&self.dir.join(name), text, false)
    }

    fn write_secret(&self, name: &str, text: &str) -> Result<(), CaError> {
        write_file(&self.dir.join(name), text, true)
    }
}

/// Writes through a temporary file and a rename, so a reader (the collector polling the
/// revocation list) sees the old file or the new one, never half of one. Keys are 0600.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CaError> {
    write_atomic(path, text, secret).map_err(|(path, source)| CaError::Io { path, source })
}

/// Writes `text` to `path` through `path.tmp`, synced, then renamed over it: readers see
/// the old file or the new one. Mode 0600 when `secret`, else 0644. The error names the
/// file it is about.
pub(crate) fn write_atomic(path: &Path, text: &str, secret: bool) -> Result<(), (PathBuf, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    fn at(p: &Path) -> impl FnOnce(std::io::Error) -> (PathBuf, std::io::Error) + '_ {
        move |e| (p.to_owned(), e)
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(at(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))
}

fn check_days(days: u32) -> Result<(), CaError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CaError::Invalid(format!("--days {days}: must be 1..={MAX_DAYS}")));
    }
    Ok(())
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "blockwatch");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from an hour ago (clocks of agents differ) for `days`.
fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(i64::from(days)))
}

/// 16 random bytes, the top bit clear so the serial is positive.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Invalid("the system random generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The identity in a PEM agent certificate.
fn parse_pem_cert(pem: &[u8]) -> Result<AgentIdentity, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    crate::tls::identity_of(&der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_list_revoke() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = FleetCa::init(&dir, &["127.0.0.1".into(), "localhost".into()], CA_DAYS, COLLECTOR_DAYS).unwrap();
        assert!(matches!(FleetCa::init(&dir, &["x".into()], 1, 1), Err(CaError::Exists(_))));
        let a = ca.issue_agent("a1", "eu", 30, &tmp.path().join("a1")).unwrap();
        let b = ca.issue_agent("b1", "us", 30, &tmp.path().join("b1")).unwrap();
        assert_ne!(a.serial, b.serial);
        let listed = ca.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|c| c.revoked_at.is_none()));
        let pem = std::fs::read(tmp.path().join("a1/agent.crt")).unwrap();
        let id = parse_pem_cert(&pem).unwrap();
        assert_eq!((id.agent_id.as_str(), id.region.as_str(), id.serial.as_str()), ("a1", "eu", a.serial.as_str()));
        let revoked = ca.revoke(Some("a1"), None).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(ca.revoke(Some("a1"), None).is_err(), "nothing left to revoke");
        let listed = ca.list().unwrap();
        assert!(listed.iter().find(|c| c.agent_id == "a1").unwrap().revoked_at.is_some());
        assert!(listed.iter().find(|c| c.agent_id == "b1").unwrap().revoked_at.is_none());
        let (entries, number) = ca.crl_entries().unwrap();
        assert_eq!((entries.len(), number), (1, 2));
        assert_eq!(hex(&entries[0].0), a.serial);
    }

    #[test]
    fn bad_input_is_refused_precisely() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = FleetCa::init(tmp.path(), &["localhost".into()], CA_DAYS, COLLECTOR_DAYS).unwrap();
        let out = tmp.path().join("x");
        let e = ca.issue_agent("a:b", "eu", 30, &out).unwrap_err().to_string();
        assert!(e.contains("--id"), "{e}");
        let e = ca.issue_agent("a", "eu", 0, &out).unwrap_err().to_string();
        assert!(e.contains("--days"), "{e}");
        let e = ca.issue_collector(&[], 30).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        assert!(matches!(FleetCa::open(&tmp.path().join("nope")), Err(CaError::Missing { .. })));
    }
}
