//! The fault kit: local servers (on 127.0.0.0/8, random ports) that misbehave the ways
//! networks and providers do, so the probe engine can be tested end to end.
//!
//! Every server is a [`FaultServer`]: dropping it stops the server and every connection it
//! holds.

pub mod canned;
mod dns;
mod https;
mod pki;
mod tcp;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub use dns::{DnsAnswer, serve_dns};
pub use https::{Canned, serve_https};
pub use pki::TestPki;
pub use tcp::{
    RawEnd, closed_port, http_raw, http_reset, silent, tls_alert, tls_eof_after_hello, tls_reset_after_hello,
    tls_silent_after_handshake,
};

/// Why a fault server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// Binding or another socket operation failed.
    #[error("fault server socket")]
    Io(#[from] std::io::Error),
    /// Certificate generation failed.
    #[error("test certificate")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// A running fault server. Stops (with all its connections) when dropped.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FaultServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://HOST:PORT/path` for this server, `host` being the name the client uses.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections on `listener` and runs `on_conn` for each. The connection tasks live
/// in a `JoinSet` owned by the accept task, so aborting it ends them all.
pub(crate) fn accept_loop<F, Fut>(listener: TcpListener, on_conn: F) -> Result<FaultServer, FaultError>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // As on the client: no Nagle delay in what the probe measures.
                        let _ = stream.set_nodelay(true);
                        conns.spawn(on_conn(stream, peer));
                    }
                    // Transient accept errors (EMFILE, aborted handshakes) must not end the server.
                    Err(_) => tokio::task::yield_now().await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(FaultServer { addr, task })
}
