//! TLS phase: a rustls handshake over the measured TCP connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use blockwatch_proto::Outcome;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::EngineError;
use super::failure::{Failure, IoKind, classify_io, find_cause, ooni};

/// Builds the client configuration: the webpki roots plus any extra CA certificates (PEM),
/// offering only HTTP/1.1 since the HTTP phase speaks HTTP/1.1 on this same connection.
pub(crate) fn client_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, EngineError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| EngineError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| EngineError::Ca(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(EngineError::Ca("no PEM certificate found".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EngineError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What the TCP stream saw during the handshake, so a reset can be placed before or after
/// the ClientHello left.
#[derive(Default)]
struct Seen {
    written: AtomicU64,
    read: AtomicU64,
    write_failed: AtomicBool,
}

/// A TCP stream that counts bytes and notes a failed write.
pub(crate) struct Watched {
    inner: TcpStream,
    seen: Arc<Seen>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.seen.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &r {
            Poll::Ready(Ok(n)) => {
                this.seen.written.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Poll::Ready(Err(_)) => this.seen.write_failed.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The TLS stream the HTTP phase runs on.
pub(crate) type Tls = TlsStream<Watched>;

/// Runs the handshake for `name` before `deadline`.
pub(crate) async fn handshake(
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<Tls, Failure> {
    let seen = Arc::new(Seen::default());
    let stream = Watched { inner: tcp, seen: seen.clone() };
    match timeout_at(deadline, TlsConnector::from(cfg).connect(name, stream)).await {
        Err(_) => Err(Failure::timeout(Outcome::TlsTimeout, "TLS handshake")),
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(classify_handshake_error(&e, &seen)),
    }
}

fn classify_handshake_error(e: &io::Error, seen: &Seen) -> Failure {
    if let Some(tls) = find_cause::<rustls::Error>(e) {
        return classify_rustls(tls);
    }
    let (kind, failure) = classify_io(e);
    let written = seen.written.load(Ordering::Relaxed);
    let read = seen.read.load(Ordering::Relaxed);
    let detail = format!("TLS handshake: {e} (sent {written} B, received {read} B)");
    let outcome = match kind {
        // A reset that met our very first write came before the ClientHello left: the
        // connection was cut at the TCP level, not in answer to the SNI. (A RST that lands
        // while connect() completes is caught earlier, by the TCP phase.)
        IoKind::Reset if written == 0 && seen.write_failed.load(Ordering::Relaxed) => Outcome::TcpReset,
        IoKind::Reset => Outcome::TlsReset,
        IoKind::Eof => Outcome::TlsEof,
        IoKind::Timeout => Outcome::TlsTimeout,
        IoKind::Refused | IoKind::Unreachable | IoKind::Other => Outcome::TlsAlert,
    };
    Failure::new(outcome, failure, detail)
}

/// Maps a rustls error to an outcome; certificate problems carry a short reason.
fn classify_rustls(e: &rustls::Error) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(ce) => {
            let (failure, why) = match ce {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    (ooni::SSL_INVALID_HOSTNAME, "wrong host")
                }
                CertificateError::UnknownIssuer => (ooni::SSL_UNKNOWN_AUTHORITY, "unknown issuer"),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    (ooni::SSL_INVALID_CERTIFICATE, "expired")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    (ooni::SSL_INVALID_CERTIFICATE, "not yet valid")
                }
                CertificateError::Revoked => (ooni::SSL_INVALID_CERTIFICATE, "revoked"),
                _ => (ooni::SSL_INVALID_CERTIFICATE, "invalid certificate"),
            };
            Failure::new(Outcome::TlsCertInvalid, failure, format!("{why}: {e}"))
        }
        // A server that does not serve the name asked for says so with `unrecognized_name`,
        // which OONI files with the certificate name mismatch.
        rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName) => {
            Failure::new(Outcome::TlsAlert, ooni::SSL_INVALID_HOSTNAME, "alert received: unrecognized_name")
        }
        // Other alerts have no OONI name over TCP (`ssl_failed_handshake` is QUIC's): the
        // reason in the words of Go's TLS stack, which OONI's pipeline reads.
        rustls::Error::AlertReceived(alert) => {
            let words = alert_words(*alert);
            Failure::new(
                Outcome::TlsAlert,
                ooni::unknown(format!("remote error: tls: {words}")),
                format!("alert received: {alert:?}"),
            )
        }
        // Anything else (garbage instead of a ServerHello, a protocol violation) is the peer
        // refusing a proper handshake; it is grouped with alerts.
        other => Failure::new(
            Outcome::TlsAlert,
            ooni::unknown(format!("tls: {other}")),
            format!("handshake failed: {other}"),
        ),
    }
}

/// An alert's name as words (`HandshakeFailure` → `handshake failure`).
fn alert_words(alert: rustls::AlertDescription) -> String {
    let name = format!("{alert:?}");
    let mut words = String::with_capacity(name.len() + 4);
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_named_as_oonis_pipeline_reads_them() {
        let f = classify_rustls(&rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure));
        assert_eq!(f.failure, "unknown_failure: remote error: tls: handshake failure");
        let f = classify_rustls(&rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName));
        assert_eq!(f.failure, "ssl_invalid_hostname");
        let f = classify_rustls(&rustls::Error::AlertReceived(rustls::AlertDescription::InternalError));
        assert_eq!(f.failure, "unknown_failure: remote error: tls: internal error");
        let f = classify_rustls(&rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!((f.outcome, f.failure.as_str()), (Outcome::TlsCertInvalid, "ssl_unknown_authority"));
    }
}
