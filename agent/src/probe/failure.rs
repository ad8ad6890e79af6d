//! OONI-style failure strings and the classification of I/O errors into them.
//!
//! Errors are classified by their *structure* (`io::ErrorKind`, the rustls error found in the
//! cause chain), never by matching message text, so a changed message in a dependency cannot
//! silently change a measurement.

use std::error::Error as StdError;
use std::io;

use blockwatch_proto::Outcome;

/// OONI failure strings (`df-007-errors`, as spelled by OONI's netxlite). Only the ones this
/// engine can produce are listed.
pub mod ooni {
    /// ECONNREFUSED.
    pub const CONNECTION_REFUSED: &str = "connection_refused";
    /// ECONNRESET (and EPIPE after a reset).
    pub const CONNECTION_RESET: &str = "connection_reset";
    /// ECONNABORTED.
    pub const CONNECTION_ABORTED: &str = "connection_aborted";
    /// Any timer that expired (DNS, connect, handshake, HTTP).
    pub const GENERIC_TIMEOUT: &str = "generic_timeout_error";
    /// NXDOMAIN.
    pub const DNS_NXDOMAIN: &str = "dns_nxdomain_error";
    /// NOERROR without address records.
    pub const DNS_NO_ANSWER: &str = "dns_no_answer";
    /// SERVFAIL (and other error rcodes but REFUSED).
    pub const DNS_SERVER_FAILURE: &str = "dns_server_failure";
    /// REFUSED.
    pub const DNS_REFUSED: &str = "dns_refused_error";
    /// A bogon or poisoned address in the answer.
    pub const DNS_BOGON: &str = "dns_bogon_error";
    /// Unexpected EOF.
    pub const EOF: &str = "eof_error";
    /// EHOSTUNREACH.
    pub const HOST_UNREACHABLE: &str = "host_unreachable";
    /// ENETUNREACH.
    pub const NETWORK_UNREACHABLE: &str = "network_unreachable";
    /// EADDRNOTAVAIL (binding a source address this host does not have).
    pub const ADDRESS_NOT_AVAILABLE: &str = "address_not_available";
    /// Certificate not valid for the host name.
    pub const SSL_INVALID_HOSTNAME: &str = "ssl_invalid_hostname";
    /// Certificate chain does not lead to a trusted root.
    pub const SSL_UNKNOWN_AUTHORITY: &str = "ssl_unknown_authority";
    /// Any other certificate problem (expired, not yet valid, bad signature, ...).
    pub const SSL_INVALID_CERTIFICATE: &str = "ssl_invalid_certificate";
    /// The TLS handshake failed for another reason (an alert, a protocol violation).
    pub const SSL_FAILED_HANDSHAKE: &str = "ssl_failed_handshake";
    /// An HTTP answer arrived but it is not the reachable one (OONI uses this for >= 400).
    pub const HTTP_REQUEST_FAILED: &str = "http_request_failed";
    /// The agent itself failed; OONI prefixes unclassified errors the same way.
    pub const UNKNOWN: &str = "unknown_failure";
}

/// Why a probe stopped: the outcome, its OONI failure string and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The taxonomy outcome.
    pub outcome: Outcome,
    /// OONI-style failure string.
    pub failure: String,
    /// Free text for humans (never parsed).
    pub detail: String,
}

impl Failure {
    /// A failure with the given outcome, OONI string and detail.
    pub fn new(outcome: Outcome, failure: &str, detail: impl Into<String>) -> Failure {
        Failure { outcome, failure: failure.to_string(), detail: detail.into() }
    }

    /// A phase timer expired.
    pub fn timeout(outcome: Outcome, what: &str) -> Failure {
        Failure::new(outcome, ooni::GENERIC_TIMEOUT, format!("{what} timed out"))
    }
}

/// The coarse kind of a transport error, independent of the phase it happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// ECONNREFUSED.
    Refused,
    /// ECONNRESET / ECONNABORTED / EPIPE: the peer or the path cut the connection.
    Reset,
    /// The peer closed the connection (FIN) before we were done.
    Eof,
    /// ETIMEDOUT from the kernel (or a timer).
    Timeout,
    /// EHOSTUNREACH / ENETUNREACH.
    Unreachable,
    /// Anything else.
    Other,
}

/// Classifies an I/O error into an [`IoKind`] and its OONI failure string.
pub fn classify_io(e: &io::Error) -> (IoKind, &'static str) {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => (IoKind::Refused, ooni::CONNECTION_REFUSED),
        K::ConnectionReset | K::BrokenPipe => (IoKind::Reset, ooni::CONNECTION_RESET),
        K::ConnectionAborted => (IoKind::Reset, ooni::CONNECTION_ABORTED),
        K::UnexpectedEof => (IoKind::Eof, ooni::EOF),
        K::TimedOut => (IoKind::Timeout, ooni::GENERIC_TIMEOUT),
        K::HostUnreachable => (IoKind::Unreachable, ooni::HOST_UNREACHABLE),
        K::NetworkUnreachable => (IoKind::Unreachable, ooni::NETWORK_UNREACHABLE),
        K::AddrNotAvailable => (IoKind::Other, ooni::ADDRESS_NOT_AVAILABLE),
        _ => (IoKind::Other, ooni::UNKNOWN),
    }
}

/// Walks an error's cause chain (including the payload of `io::Error`s, which `source()`
/// skips for custom errors) and returns the first cause of type `T`.
pub fn find_cause<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        // An io::Error wrapping a custom error exposes it through get_ref(), not source().
        let inner =
            err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).map(|inner| inner as &(dyn StdError + 'static));
        cur = inner.or_else(|| err.source());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_map_to_ooni_strings() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), (IoKind::Refused, "connection_refused"));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset), (IoKind::Reset, "connection_reset"));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(&eof), (IoKind::Eof, "eof_error"));
        let unreach = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(classify_io(&unreach), (IoKind::Unreachable, "host_unreachable"));
    }

    #[test]
    fn finds_rustls_error_inside_io_error() {
        let inner = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        let outer = io::Error::new(io::ErrorKind::InvalidData, inner);
        let found = find_cause::<rustls::Error>(&outer);
        assert!(matches!(found, Some(rustls::Error::AlertReceived(_))));
        assert!(find_cause::<std::fmt::Error>(&outer).is_none());
    }
}
