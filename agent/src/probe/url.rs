//! Probe URLs: `https://host[:port]/path` for a full probe, `tcp://host:port` for a
//! connect-only one (a control target such as the collector's plaintext gRPC port).

use blockwatch_proto::Outcome;

use super::failure::{Failure, ooni};

/// How far a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// DNS, TCP, TLS and one HTTP request.
    Https,
    /// DNS and TCP only: connected is all that is asked.
    Tcp,
}

/// The parts of a probe URL.
#[derive(Debug)]
pub(crate) struct ProbeUrl {
    pub scheme: Scheme,
    /// Host without brackets (IPv6 literals bare), as DNS, TCP and SNI need it.
    pub host: String,
    pub port: u16,
    /// Path and query (`/` when none); unused for `tcp://`.
    pub path: String,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
}

/// Checks a probe URL the way the engine reads it; the error says what is wrong.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    parse(url).map(|_| ())
}

/// Parses a probe URL; a bad one is the agent's own error (it should have been refused when
/// the config or plan was loaded).
pub(crate) fn parse_url(url: &str) -> Result<ProbeUrl, Failure> {
    parse(url).map_err(|why| Failure::new(Outcome::AgentError, ooni::UNKNOWN, format!("bad probe URL {url:?}: {why}")))
}

fn parse(url: &str) -> Result<ProbeUrl, &'static str> {
    let scheme = if url.starts_with("tcp://") {
        Scheme::Tcp
    } else {
        blockwatch_proto::plan::check_url(url)?;
        Scheme::Https
    };
    let uri: ::http::Uri = url.parse().map_err(|_| "not a URI")?;
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials");
    }
    let port = match (scheme, authority.port_u16()) {
        (_, Some(port)) => port,
        (Scheme::Https, None) => 443,
        (Scheme::Tcp, None) => return Err("tcp:// needs a port"),
    };
    if scheme == Scheme::Tcp && (!matches!(uri.path(), "" | "/") || uri.query().is_some()) {
        return Err("tcp:// takes no path or query");
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err("has no host");
    }
    Ok(ProbeUrl {
        scheme,
        host,
        port,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        authority: authority.as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_and_tcp_urls() {
        let u = parse("https://api.openai.com/v1/models").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Https, "api.openai.com", 443, "/v1/models")
        );
        let u = parse("tcp://[::1]:7400").unwrap();
        assert_eq!((u.scheme, u.host.as_str(), u.port), (Scheme::Tcp, "::1", 7400));
        assert!(parse("tcp://collector:7400/").is_ok());
    }

    #[test]
    fn bad_urls_say_why() {
        assert_eq!(check_url("tcp://collector"), Err("tcp:// needs a port"));
        assert_eq!(check_url("tcp://collector:1/x"), Err("tcp:// takes no path or query"));
        assert_eq!(check_url("tcp://u:p@collector:1"), Err("must not carry credentials"));
        assert_eq!(check_url("http://plain.example/"), Err("must start with https://"));
        assert_eq!(check_url("tcp://:80"), Err("has no host"));
    }
}
