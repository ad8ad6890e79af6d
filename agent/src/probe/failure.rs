//! OONI-style failure strings and the classification of I/O errors into them.
//!
//! Errors are classified by their *structure* (`io::ErrorKind`, the rustls error found in the
//! cause chain), never by matching message text, so a changed message in a dependency cannot
//! silently change a measurement.

use std::error::Error as StdError;
use std::io;

use blockwatch_proto::Outcome;

/// OONI failure strings (`df-007-errors`, as spelled by OONI's netxlite). Only the ones this
/// engine can produce are listed; anything else is `unknown_failure: REASON`, as in OONI.
pub mod ooni {
    /// ECONNREFUSED.
    pub const CONNECTION_REFUSED: &str = "connection_refused";
    /// ECONNRESET.
    pub const CONNECTION_RESET: &str = "connection_reset";
    /// ECONNABORTED.
    pub const CONNECTION_ABORTED: &str = "connection_aborted";
    /// One of the engine's own timers expired (DNS, connect, handshake, HTTP).
    pub const GENERIC_TIMEOUT: &str = "generic_timeout_error";
    /// The kernel's ETIMEDOUT (retransmissions given up).
    pub const TIMED_OUT: &str = "timed_out";
    /// NXDOMAIN.
    pub const DNS_NXDOMAIN: &str = "dns_nxdomain_error";
    /// NOERROR without address records.
    pub const DNS_NO_ANSWER: &str = "dns_no_answer";
    /// SERVFAIL.
    pub const DNS_SERVFAIL: &str = "dns_servfail_error";
    /// Any other error rcode but REFUSED, or an answer that makes no sense.
    pub const DNS_SERVER_MISBEHAVING: &str = "dns_server_misbehaving";
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
    /// Certificate not valid for the host name, or the server's `unrecognized_name` alert.
    pub const SSL_INVALID_HOSTNAME: &str = "ssl_invalid_hostname";
    /// Certificate chain does not lead to a trusted root.
    pub const SSL_UNKNOWN_AUTHORITY: &str = "ssl_unknown_authority";
    /// Any other certificate problem (expired, not yet valid, bad signature, ...).
    pub const SSL_INVALID_CERTIFICATE: &str = "ssl_invalid_certificate";
    /// An HTTP answer with a status of 400 or more that is not the reachable one.
    pub const HTTP_REQUEST_FAILED: &str = "http_request_failed";
    /// The prefix of everything else; OONI writes `unknown_failure: REASON`.
    pub const UNKNOWN: &str = "unknown_failure";

    /// `unknown_failure: REASON`.
    pub fn unknown(reason: impl std::fmt::Display) -> String {
        format!("{UNKNOWN}: {reason}")
    }

    /// The errno names OONI gives a canonical string (netxlite's list for Linux).
    pub(crate) fn errno(code: i32) -> Option<&'static str> {
        Some(match code {
            libc::ECONNREFUSED => CONNECTION_REFUSED,
            libc::ECONNRESET => CONNECTION_RESET,
            libc::EHOSTUNREACH => HOST_UNREACHABLE,
            libc::ETIMEDOUT => TIMED_OUT,
            libc::EAFNOSUPPORT => "address_family_not_supported",
            libc::EADDRINUSE => "address_in_use",
            libc::EADDRNOTAVAIL => ADDRESS_NOT_AVAILABLE,
            libc::EISCONN => "already_connected",
            libc::EFAULT => "bad_address",
            libc::EBADF => "bad_file_descriptor",
            libc::ECONNABORTED => CONNECTION_ABORTED,
            libc::EALREADY => "connection_already_in_progress",
            libc::EDESTADDRREQ => "destination_address_required",
            libc::EINTR => "interrupted",
            libc::EINVAL => "invalid_argument",
            libc::EMSGSIZE => "message_size",
            libc::ENETDOWN => "network_down",
            libc::ENETRESET => "network_reset",
            libc::ENETUNREACH => NETWORK_UNREACHABLE,
            libc::ENOBUFS => "no_buffer_space",
            libc::ENOPROTOOPT => "no_protocol_option",
            libc::ENOTSOCK => "not_a_socket",
            libc::ENOTCONN => "not_connected",
            libc::EWOULDBLOCK => "operation_would_block",
            libc::EACCES => "permission_denied",
            libc::EPROTONOSUPPORT => "protocol_not_supported",
            libc::EPROTOTYPE => "wrong_protocol_type",
            _ => return None,
        })
    }
}

/// The operation a probe failed in, as OONI's `failed_operation` names it.
pub mod operation {
    /// The DNS lookup.
    pub const RESOLVE: &str = "resolve";
    /// The TCP connect.
    pub const CONNECT: &str = "connect";
    /// The TLS handshake.
    pub const TLS_HANDSHAKE: &str = "tls_handshake";
    /// The HTTP request and the reading of its answer.
    pub const HTTP_ROUND_TRIP: &str = "http_round_trip";
    /// Nothing on the network: the probe could not be run as asked.
    pub const TOP_LEVEL: &str = "top_level";
    /// Every name, for checks on results from elsewhere.
    pub const ALL: &[&str] = &[RESOLVE, CONNECT, TLS_HANDSHAKE, HTTP_ROUND_TRIP, TOP_LEVEL];
}

/// Why a probe stopped: the outcome, its OONI failure string, the operation that failed and
/// a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The taxonomy outcome.
    pub outcome: Outcome,
    /// OONI-style failure string.
    pub failure: String,
    /// The failed operation ([`operation`]); set by the phase that failed.
    pub operation: &'static str,
    /// Free text for humans (never parsed).
    pub detail: String,
}

impl Failure {
    /// A failure with the given outcome, OONI string and detail, not yet placed in an
    /// operation (the phase that returns it does that).
    pub fn new(outcome: Outcome, failure: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure { outcome, failure: failure.into(), operation: operation::TOP_LEVEL, detail: detail.into() }
    }

    /// The agent could not run the probe as asked (a bad URL, a withheld credential):
    /// `agent_error`, `unknown_failure: DETAIL`, no network operation.
    pub fn agent(detail: impl Into<String>) -> Failure {
        let detail = detail.into();
        Failure::new(Outcome::AgentError, ooni::unknown(&detail), detail)
    }

    /// The same failure, placed in `op`.
    pub fn during(mut self, op: &'static str) -> Failure {
        self.operation = op;
        self
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
    /// EHOSTUNREACH / ENETUNREACH / ENETDOWN.
    Unreachable,
    /// Anything else.
    Other,
}

/// Classifies an I/O error into an [`IoKind`] and its OONI failure string: by errno when the
/// error came from the kernel (netxlite's table), else by its kind; what OONI has no name for
/// is `unknown_failure: REASON` (EPIPE, for one, is not `connection_reset`).
pub fn classify_io(e: &io::Error) -> (IoKind, String) {
    use io::ErrorKind as K;
    // The kind, and OONI's name for an error of that kind that did not come from the kernel.
    let (kind, by_kind) = match e.kind() {
        K::ConnectionRefused => (IoKind::Refused, Some(ooni::CONNECTION_REFUSED)),
        K::ConnectionReset => (IoKind::Reset, Some(ooni::CONNECTION_RESET)),
        K::ConnectionAborted => (IoKind::Reset, Some(ooni::CONNECTION_ABORTED)),
        K::BrokenPipe => (IoKind::Reset, None),
        K::UnexpectedEof => (IoKind::Eof, Some(ooni::EOF)),
        // Not the kernel's: one of our own timers.
        K::TimedOut => (IoKind::Timeout, Some(ooni::GENERIC_TIMEOUT)),
        K::HostUnreachable => (IoKind::Unreachable, Some(ooni::HOST_UNREACHABLE)),
        K::NetworkUnreachable => (IoKind::Unreachable, Some(ooni::NETWORK_UNREACHABLE)),
        K::NetworkDown => (IoKind::Unreachable, None),
        K::AddrNotAvailable => (IoKind::Other, Some(ooni::ADDRESS_NOT_AVAILABLE)),
        _ => (IoKind::Other, None),
    };
    let name = match e.raw_os_error() {
        Some(code) => ooni::errno(code),
        None => by_kind,
    };
    (kind, name.map_or_else(|| ooni::unknown(e), str::to_string))
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
        let got = |e: io::Error| {
            let (k, f) = classify_io(&e);
            (k, f)
        };
        let s = |k, f: &str| (k, f.to_string());
        assert_eq!(got(io::ErrorKind::ConnectionRefused.into()), s(IoKind::Refused, "connection_refused"));
        assert_eq!(got(io::ErrorKind::ConnectionReset.into()), s(IoKind::Reset, "connection_reset"));
        assert_eq!(got(io::ErrorKind::UnexpectedEof.into()), s(IoKind::Eof, "eof_error"));
        assert_eq!(got(io::ErrorKind::HostUnreachable.into()), s(IoKind::Unreachable, "host_unreachable"));
        assert_eq!(got(io::ErrorKind::TimedOut.into()), s(IoKind::Timeout, "generic_timeout_error"));
    }

    /// Errors from the kernel are named by errno as netxlite names them; the kernel's
    /// ETIMEDOUT is not one of our timers, and EPIPE has no OONI name.
    #[test]
    fn errnos_map_as_netxlite_maps_them() {
        let os = |code| classify_io(&io::Error::from_raw_os_error(code));
        assert_eq!(os(libc::ETIMEDOUT), (IoKind::Timeout, "timed_out".to_string()));
        assert_eq!(os(libc::ECONNRESET), (IoKind::Reset, "connection_reset".to_string()));
        assert_eq!(os(libc::ENETDOWN), (IoKind::Unreachable, "network_down".to_string()));
        assert_eq!(os(libc::EACCES).1, "permission_denied");
        assert_eq!(os(libc::ENETUNREACH), (IoKind::Unreachable, "network_unreachable".to_string()));
        let (kind, failure) = os(libc::EPIPE);
        assert_eq!(kind, IoKind::Reset);
        assert!(failure.starts_with("unknown_failure: ") && failure.contains("roken pipe"), "{failure}");
        assert!(os(libc::EPERM).1.starts_with("unknown_failure: "));
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
