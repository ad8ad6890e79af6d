//! TCP phase: one connect to one address, optionally from a chosen source address.

use std::net::{IpAddr, SocketAddr};

use blockwatch_proto::Outcome;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

use super::failure::{Failure, IoKind, classify_io, ooni};

/// Connects to `peer` before `deadline`, binding to `source` first when given.
///
/// A failure to set up the local socket (wrong family, an address this host does not have) is
/// the agent's fault, not the network's, so it becomes `agent_error`.
pub(crate) async fn connect(peer: SocketAddr, source: Option<IpAddr>, deadline: Instant) -> Result<TcpStream, Failure> {
    let agent = |what: &str, e: std::io::Error| {
        let (_, failure) = classify_io(&e);
        Failure::new(Outcome::AgentError, failure, format!("{what}: {e}"))
    };
    let socket = match peer {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| agent("creating socket", e))?;
    if let Some(src) = source {
        if src.is_ipv4() != peer.is_ipv4() {
            return Err(Failure::new(
                Outcome::AgentError,
                ooni::ADDRESS_NOT_AVAILABLE,
                format!("source address {src} and peer {peer} are of different families"),
            ));
        }
        socket.bind(SocketAddr::new(src, 0)).map_err(|e| agent(&format!("binding source address {src}"), e))?;
    }
    match timeout_at(deadline, socket.connect(peer)).await {
        Err(_) => Err(Failure::timeout(Outcome::TcpTimeout, "connect")),
        Ok(Ok(stream)) => {
            // Nagle's algorithm would hold back small TLS records behind delayed ACKs and
            // add tens of milliseconds to what is measured as network time.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            let (kind, failure) = classify_io(&e);
            let outcome = match kind {
                IoKind::Refused => Outcome::TcpRefused,
                IoKind::Reset | IoKind::Eof => Outcome::TcpReset,
                IoKind::Timeout => Outcome::TcpTimeout,
                IoKind::Unreachable => Outcome::TcpUnreachable,
                IoKind::Other => Outcome::AgentError,
            };
            Err(Failure::new(outcome, failure, format!("connect to {peer}: {e}")))
        }
    }
}
