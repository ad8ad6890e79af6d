//! A tiny authoritative-looking DNS server over UDP, built on hickory-proto's message types,
//! answering each name the way a test asks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::{FaultError, FaultServer};

/// How the server answers one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// These addresses (A for IPv4, AAAA for IPv6; the other type gets an empty NOERROR).
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// REFUSED.
    Refused,
    /// NOERROR with no records.
    NoAnswer,
    /// No reply at all (the resolver times out).
    Silent,
}

/// Serves `zone` (names without the trailing dot, any case) on UDP `ip`, random port.
/// Names not in the zone are NXDOMAIN.
pub async fn serve_dns(ip: IpAddr, zone: BTreeMap<String, DnsAnswer>) -> Result<FaultServer, FaultError> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let addr = socket.local_addr()?;
    let zone: BTreeMap<String, DnsAnswer> =
        zone.into_iter().map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v)).collect();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
            // Garbage is dropped, as a real server would.
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            if let Some(reply) = answer(&zone, &query).and_then(|m| m.to_vec().ok()) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    Ok(FaultServer { addr, task })
}

fn answer(zone: &BTreeMap<String, DnsAnswer>, query: &Message) -> Option<Message> {
    let q = query.queries.first()?;
    let name = q.name().to_ascii();
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    match zone.get(&key).unwrap_or(&DnsAnswer::NxDomain) {
        DnsAnswer::Silent => return None,
        DnsAnswer::NxDomain => reply.metadata.response_code = ResponseCode::NXDomain,
        DnsAnswer::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
        DnsAnswer::Refused => reply.metadata.response_code = ResponseCode::Refused,
        DnsAnswer::NoAnswer => {}
        DnsAnswer::Addresses(addrs) => {
            for ip in addrs {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
            }
        }
    }
    Some(reply)
}
