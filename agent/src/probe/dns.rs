//! DNS phase: resolve the target's name with hickory, and check the answer for bogons.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_proto::v1::{DnsAnswer, DnsQuery};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::time::{Instant, timeout_at};

use super::EngineError;
use super::failure::{Failure, classify_io, ooni};

/// Builds the resolver: the system's when `nameservers` is empty, else exactly those servers
/// (UDP, each with its own port, so a local test server on `127.0.0.1:5353` works).
pub(crate) fn resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, EngineError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| EngineError::Resolver(e.to_string()))?
    } else {
        let servers = nameservers
            .iter()
            .map(|ns| {
                let mut conn = ConnectionConfig::udp();
                conn.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![conn])
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
        // Configured servers are the measurement: /etc/hosts must not answer for them.
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    // Every probe must really ask: a cached answer would hide a change in what the network
    // says and would time nothing.
    opts.cache_size = 0;
    // The probe's own deadline bounds the lookup; these only shape retries inside it.
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().map_err(|e| EngineError::Resolver(e.to_string()))
}

/// How long the second query of a lookup may take once the first has addresses.
pub const SECOND_QUERY_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// What the DNS phase learnt: the addresses to connect to (AAAA answers first, as the
/// resolver orders a dual-stack lookup), and each query with its records or its failure.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub queries: Vec<DnsQuery>,
}

/// One query: its record, and its addresses or why it has none.
async fn query(resolver: &TokioResolver, fqdn: &str, ty: RecordType, deadline: Instant) -> Queried {
    let mut q = DnsQuery { query_type: ty.to_string(), ..Default::default() };
    let res = match timeout_at(deadline, resolver.lookup(fqdn, ty)).await {
        Err(_) => Err(Failure::timeout(Outcome::DnsTimeout, "DNS lookup")),
        Ok(Err(e)) => Err(classify_net_error(&e)),
        Ok(Ok(lookup)) => {
            let mut addrs = Vec::new();
            for rec in lookup.answers() {
                let (kind, value) = match &rec.data {
                    RData::A(a) => {
                        addrs.push(IpAddr::V4(a.0));
                        ("A", a.0.to_string())
                    }
                    RData::AAAA(a) => {
                        addrs.push(IpAddr::V6(a.0));
                        ("AAAA", a.0.to_string())
                    }
                    RData::CNAME(c) => ("CNAME", c.0.to_string()),
                    _ => continue,
                };
                q.answers.push(DnsAnswer { answer_type: kind.into(), value, ttl: rec.ttl });
            }
            if addrs.is_empty() {
                Err(Failure::new(Outcome::DnsNoAnswer, ooni::DNS_NO_ANSWER, "no address records"))
            } else {
                Ok(addrs)
            }
        }
    };
    if let Err(f) = &res {
        q.failure = f.failure.clone();
    }
    (q, res)
}

/// One query's record and outcome.
type Queried = (DnsQuery, Result<Vec<IpAddr>, Failure>);

/// The other query of a lookup, once the first is done: when the first has addresses, the
/// other gets [`SECOND_QUERY_GRACE`] more, not the probe's whole budget (a dropped AAAA
/// query must not spend the time the connection needs), and is recorded as timed out past it.
async fn second(
    first_answered: bool,
    other: std::pin::Pin<&mut impl std::future::Future<Output = Queried>>,
    ty: RecordType,
    deadline: Instant,
) -> Queried {
    if !first_answered {
        return other.await;
    }
    timeout_at(deadline.min(Instant::now() + SECOND_QUERY_GRACE), other).await.unwrap_or_else(|_| {
        let f = Failure::timeout(Outcome::DnsTimeout, "DNS lookup");
        (DnsQuery { query_type: ty.to_string(), failure: f.failure.clone(), answers: Vec::new() }, Err(f))
    })
}

/// Resolves `host` before `deadline`: AAAA and A asked together, the lookup failing only when
/// both do (with the AAAA query's failure, as the resolver's own dual-stack lookup, unless
/// that query merely had no answer: then the A query's). Bogon answers fail unless
/// `allow_private`; answers in `poison` always fail. What was learnt is returned on success
/// and inside every failure.
pub(crate) async fn resolve(
    resolver: &TokioResolver,
    host: &str,
    deadline: Instant,
    allow_private: bool,
    poison: &[IpAddr],
) -> Result<Resolved, (Failure, Resolved)> {
    // A trailing dot makes the name absolute, so search domains are never appended.
    let fqdn = if host.ends_with('.') { host.to_string() } else { format!("{host}.") };
    let aaaa = query(resolver, &fqdn, RecordType::AAAA, deadline);
    let a = query(resolver, &fqdn, RecordType::A, deadline);
    tokio::pin!(aaaa, a);
    let ((q6, r6), (q4, r4)) = tokio::select! {
        six = &mut aaaa => {
            let four = second(six.1.is_ok(), a, RecordType::A, deadline).await;
            (six, four)
        }
        four = &mut a => {
            let six = second(four.1.is_ok(), aaaa, RecordType::AAAA, deadline).await;
            (six, four)
        }
    };
    let mut resolved = Resolved { addrs: Vec::new(), queries: vec![q6, q4] };
    match (r6, r4) {
        // Both failed: an IPv4-only name whose A query is blocked is a blocked name.
        (Err(f6), Err(f4)) => return Err((if f6.failure == ooni::DNS_NO_ANSWER { f4 } else { f6 }, resolved)),
        (r6, r4) => {
            resolved.addrs = r6.unwrap_or_default();
            resolved.addrs.extend(r4.unwrap_or_default());
        }
    }
    let addrs = &resolved.addrs;
    let forged: Vec<String> = addrs
        .iter()
        .filter(|a| poison.contains(a) || is_sinkhole(**a) || (!allow_private && is_bogon(**a)))
        .map(|a| a.to_string())
        .collect();
    if !forged.is_empty() {
        let detail = format!("answer contains bogon or poisoned addresses: {}", forged.join(", "));
        return Err((Failure::new(Outcome::DnsBogon, ooni::DNS_BOGON, detail), resolved));
    }
    Ok(resolved)
}

fn classify_net_error(e: &NetError) -> Failure {
    let detail = format!("DNS: {e}");
    match e {
        _ if e.is_nx_domain() => Failure::new(Outcome::DnsNxdomain, ooni::DNS_NXDOMAIN, detail),
        _ if e.is_no_records_found() => Failure::new(Outcome::DnsNoAnswer, ooni::DNS_NO_ANSWER, detail),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            Failure::new(Outcome::DnsServfail, ooni::DNS_REFUSED, detail)
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Failure::new(Outcome::DnsServfail, ooni::DNS_SERVFAIL, detail)
        }
        NetError::Dns(DnsError::ResponseCode(_)) => {
            Failure::new(Outcome::DnsServfail, ooni::DNS_SERVER_MISBEHAVING, detail)
        }
        NetError::Timeout => Failure::new(Outcome::DnsTimeout, ooni::GENERIC_TIMEOUT, detail),
        // The resolver could not talk to its servers at all (ICMP port unreachable, no
        // route): it gave no usable answer, which the taxonomy files under servfail.
        NetError::Io(io) => Failure::new(Outcome::DnsServfail, classify_io(io).1, detail),
        // An answer that makes no sense (malformed, mismatched).
        _ => Failure::new(Outcome::DnsServfail, ooni::DNS_SERVER_MISBEHAVING, detail),
    }
}

/// True for the unspecified addresses `0.0.0.0` and `::` (and `::ffff:0.0.0.0`), the usual
/// sinkhole answers of a DNS filter: forged even for a local target, where connecting to
/// them would reach this very host.
pub fn is_sinkhole(ip: IpAddr) -> bool {
    ip.to_canonical().is_unspecified()
}

/// True for addresses no public service answers from: private, loopback, link-local,
/// shared (CGNAT), documentation, benchmarking, multicast, reserved and unspecified ranges.
pub fn is_bogon(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_bogon_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_bogon_v4(v4),
            None => is_bogon_v6(v6),
        },
    }
}

fn is_bogon_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // 100.64/10 shared address space
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24 IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18/15 benchmarking
        || a >= 240 // 240/4 reserved
}

fn is_bogon_v6(ip: Ipv6Addr) -> bool {
    let s0 = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s0 & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s0 == 0x2001 && ip.segments()[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s0 & 0xe000) != 0x2000 // outside 2000::/3, the global unicast space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bogons() {
        for b in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.1.1",
            "192.168.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(is_bogon(b.parse().unwrap()), "{b}");
        }
        for g in ["8.8.8.8", "104.18.1.1", "2606:4700::1111", "2a00:1450::1"] {
            assert!(!is_bogon(g.parse().unwrap()), "{g}");
        }
    }
}
