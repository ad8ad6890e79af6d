//! The one URL parser of blockwatch: probe targets (`https://host[:port]/path`), connect-only
//! control targets (`tcp://host:port`) and the collector's endpoint (`http://` or
//! `https://host[:port]`). Config checks, plan checks and the probe engine all read URLs
//! here, so what a config accepts is exactly what the engine can probe.

/// What a URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// DNS, TCP, TLS and one HTTP request.
    Https,
    /// Plain HTTP: only for the collector's endpoint.
    Http,
    /// DNS and TCP only: connected is all that is asked.
    Tcp,
}

/// The parts of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Host without brackets (IPv6 literals bare), as DNS, TCP and TLS need it.
    pub host: String,
    /// The port written, or the scheme's default (443 for https, 80 for http).
    pub port: u16,
    /// Path and query (`/` when none).
    pub path: String,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
}

impl Url {
    /// `tcp://host:port` of the same host and port (brackets around IPv6 literals).
    pub fn connect_url(&self) -> String {
        if self.host.contains(':') {
            format!("tcp://[{}]:{}", self.host, self.port)
        } else {
            format!("tcp://{}:{}", self.host, self.port)
        }
    }
}

/// A probe target: `https://host[:port]/path`.
pub fn target(url: &str) -> Result<Url, &'static str> {
    let u = parse(url)?;
    match u.scheme {
        Scheme::Https => Ok(u),
        _ => Err("must start with https://"),
    }
}

/// A probe: a target, or a connect-only `tcp://host:port` (no path or query).
pub fn probe(url: &str) -> Result<Url, &'static str> {
    let u = parse(url)?;
    match u.scheme {
        Scheme::Https | Scheme::Tcp => Ok(u),
        Scheme::Http => Err("must start with https://"),
    }
}

/// The collector's endpoint: `http://host[:port]` or `https://host[:port]`.
pub fn endpoint(url: &str) -> Result<Url, &'static str> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must be an http:// or https:// URL");
    }
    parse(url)
}

fn parse(url: &str) -> Result<Url, &'static str> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        (Scheme::Tcp, rest)
    } else {
        return Err("must start with https://");
    };
    let written = rest.split(['/', '?', '#']).next().unwrap_or("");
    if written.contains('@') {
        return Err("must not carry credentials");
    }
    if written.is_empty() {
        return Err("has no host");
    }
    if url.contains('#') {
        return Err("must not have a fragment");
    }
    let uri: http::Uri = url.parse().map_err(|_| "is not a valid URL")?;
    let authority = uri.authority().ok_or("has no host")?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host");
    }
    // `http::Uri` accepts any text after the colon and then reports no port; a port that is
    // written must be one.
    let port_text = authority.as_str().strip_prefix(authority.host()).and_then(|p| p.strip_prefix(':'));
    let port = match port_text {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err("port must be a number in 1..=65535"),
        },
        None => match scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::Tcp => return Err("tcp:// needs a port"),
        },
    };
    if scheme == Scheme::Tcp && (!matches!(uri.path(), "" | "/") || uri.query().is_some()) {
        return Err("tcp:// takes no path or query");
    }
    Ok(Url {
        scheme,
        host: host.to_string(),
        port,
        path: match uri.path_and_query().map_or("", |p| p.as_str()) {
            p if p.starts_with('/') => p.to_string(),
            p => format!("/{p}"),
        },
        authority: authority.as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_probes_and_endpoints() {
        let u = target("https://api.openai.com/v1/models?x=1").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str(), u.authority.as_str()),
            (Scheme::Https, "api.openai.com", 443, "/v1/models?x=1", "api.openai.com")
        );
        let u = probe("tcp://[::1]:7400").unwrap();
        assert_eq!((u.scheme, u.host.as_str(), u.port), (Scheme::Tcp, "::1", 7400));
        assert_eq!(u.connect_url(), "tcp://[::1]:7400");
        assert!(probe("tcp://collector:7400/").is_ok());
        let u = endpoint("http://collector:7400").unwrap();
        assert_eq!((u.scheme, u.port, u.connect_url().as_str()), (Scheme::Http, 7400, "tcp://collector:7400"));
        assert_eq!(endpoint("https://collector.example").unwrap().port, 443);
        assert_eq!(endpoint("http://collector.example/").unwrap().port, 80);
    }

    #[test]
    fn bad_urls_say_why() {
        assert_eq!(probe("tcp://collector"), Err("tcp:// needs a port"));
        assert_eq!(probe("tcp://collector:1/x"), Err("tcp:// takes no path or query"));
        assert_eq!(probe("tcp://u:p@collector:1"), Err("must not carry credentials"));
        assert_eq!(probe("http://plain.example/"), Err("must start with https://"));
        assert_eq!(probe("tcp://:80"), Err("has no host"));
        assert_eq!(target("tcp://collector:7400"), Err("must start with https://"));
        assert_eq!(target("https:///"), Err("has no host"));
        assert_eq!(endpoint("grpc://x"), Err("must be an http:// or https:// URL"));
        assert_eq!(endpoint("tcp://x:1"), Err("must be an http:// or https:// URL"));
        assert_eq!(endpoint("http://"), Err("has no host"));
    }

    #[test]
    fn what_the_engine_cannot_probe_is_refused_up_front() {
        for bad in ["https://exa mple.com/", "https://bücher.example/", "https://[::1/", "https://a:b:c/"] {
            assert_eq!(target(bad), Err("is not a valid URL"), "{bad}");
        }
        for bad in ["https://api.example.com:99999/", "https://h:abc/", "https://h:0/", "tcp://h:abc"] {
            assert_eq!(probe(bad), Err("port must be a number in 1..=65535"), "{bad}");
        }
        assert_eq!(target("https://h/#frag"), Err("must not have a fragment"));
    }
}
