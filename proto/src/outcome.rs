//! Names of the outcome taxonomy and its mapping onto the trace format's outcomes.

use crate::v1::Outcome;

/// Every outcome with its lowercase name (the enum name without `OUTCOME_`), in enum order.
const NAMES: &[(Outcome, &str)] = &[
    (Outcome::Ok, "ok"),
    (Outcome::DnsNxdomain, "dns_nxdomain"),
    (Outcome::DnsTimeout, "dns_timeout"),
    (Outcome::DnsServfail, "dns_servfail"),
    (Outcome::DnsBogon, "dns_bogon"),
    (Outcome::DnsNoAnswer, "dns_no_answer"),
    (Outcome::TcpRefused, "tcp_refused"),
    (Outcome::TcpReset, "tcp_reset"),
    (Outcome::TcpTimeout, "tcp_timeout"),
    (Outcome::TcpUnreachable, "tcp_unreachable"),
    (Outcome::TlsReset, "tls_reset"),
    (Outcome::TlsTimeout, "tls_timeout"),
    (Outcome::TlsCertInvalid, "tls_cert_invalid"),
    (Outcome::TlsAlert, "tls_alert"),
    (Outcome::TlsEof, "tls_eof"),
    (Outcome::HttpGeoBlocked, "http_geo_blocked"),
    (Outcome::HttpRateLimited, "http_rate_limited"),
    (Outcome::HttpServerError, "http_server_error"),
    (Outcome::HttpUnexpected, "http_unexpected"),
    (Outcome::HttpAuthFailed, "http_auth_failed"),
    (Outcome::HttpTimeout, "http_timeout"),
    (Outcome::HttpReset, "http_reset"),
    (Outcome::HttpEdgeBlocked, "http_edge_blocked"),
    (Outcome::AgentError, "agent_error"),
];

impl Outcome {
    /// The lowercase name used in logs, JSON and the CLI (`tls_reset`).
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(o, _)| *o == self).map_or("unspecified", |(_, n)| n)
    }

    /// Parses a lowercase name; the inverse of [`Outcome::name`].
    pub fn from_name(name: &str) -> Option<Outcome> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(o, _)| *o)
    }

    /// The outcome as the trace format (`docs/trace-format.md`) names it. That format knows
    /// thirteen outcomes; the richer ones map onto the nearest of them:
    ///
    /// | ours | trace |
    /// |---|---|
    /// | `dns_servfail` | `dns_timeout` (the resolver gave no usable answer) |
    /// | `dns_no_answer` | `dns_nxdomain` |
    /// | `tcp_unreachable`, `agent_error` | `tcp_timeout` (nothing got through) |
    /// | `tls_alert`, `tls_eof`, `http_reset` | `tls_reset` (the session was cut) |
    /// | `http_timeout` | `tls_timeout` |
    /// | `http_edge_blocked` | `http_geo_blocked` (a refusal by the provider's edge) |
    /// | `http_unexpected`, `http_auth_failed` | `http_server_error` (an answer, not a block) |
    pub fn trace_name(self) -> &'static str {
        match self {
            Outcome::DnsServfail => "dns_timeout",
            Outcome::DnsNoAnswer => "dns_nxdomain",
            Outcome::TcpUnreachable | Outcome::AgentError => "tcp_timeout",
            Outcome::TlsAlert | Outcome::TlsEof | Outcome::HttpReset => "tls_reset",
            Outcome::HttpTimeout => "tls_timeout",
            Outcome::HttpEdgeBlocked => "http_geo_blocked",
            Outcome::HttpUnexpected | Outcome::HttpAuthFailed => "http_server_error",
            other => other.name(),
        }
    }

    /// The phase an outcome belongs to.
    pub fn phase(self) -> Phase {
        match self as i32 {
            10..=19 => Phase::Dns,
            20..=29 => Phase::Tcp,
            30..=39 => Phase::Tls,
            40..=49 => Phase::Http,
            1 => Phase::Done,
            _ => Phase::Agent,
        }
    }

    /// True for the outcomes a provider or an edge uses to refuse the caller's location.
    pub fn is_geo_signature(self) -> bool {
        matches!(self, Outcome::HttpGeoBlocked | Outcome::HttpEdgeBlocked)
    }

    /// True for answers that show the endpoint is reachable but busy or unhappy: rate
    /// limits, overload, server errors. None of them is evidence of a block.
    pub fn is_provider_noise(self) -> bool {
        matches!(
            self,
            Outcome::HttpRateLimited | Outcome::HttpServerError | Outcome::HttpUnexpected | Outcome::HttpAuthFailed
        )
    }

    /// All outcomes, in enum order.
    pub fn all() -> impl Iterator<Item = Outcome> {
        NAMES.iter().map(|(o, _)| *o)
    }
}

/// Where in a probe something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Dns,
    Tcp,
    Tls,
    Http,
    /// The probe finished as expected.
    Done,
    /// The agent itself failed.
    Agent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::all() {
            assert!(seen.insert(o.name()), "duplicate name {}", o.name());
            assert_eq!(Outcome::from_name(o.name()), Some(o));
            assert_eq!(format!("OUTCOME_{}", o.name().to_uppercase()), o.as_str_name());
        }
        assert_eq!(Outcome::from_name("nonsense"), None);
    }

    #[test]
    fn trace_names_are_in_the_trace_format() {
        const TRACE: &[&str] = &[
            "ok",
            "dns_nxdomain",
            "dns_timeout",
            "dns_bogon",
            "tcp_refused",
            "tcp_reset",
            "tcp_timeout",
            "tls_reset",
            "tls_timeout",
            "tls_cert_invalid",
            "http_geo_blocked",
            "http_rate_limited",
            "http_server_error",
        ];
        for o in Outcome::all() {
            assert!(TRACE.contains(&o.trace_name()), "{} maps to {}", o.name(), o.trace_name());
        }
        for name in TRACE {
            let o = Outcome::from_name(name).expect("trace outcome is ours too");
            assert_eq!(o.trace_name(), *name);
        }
    }
}
