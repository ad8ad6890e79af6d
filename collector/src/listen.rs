//! The gRPC port's accept loop: a bound on connections in all and from one peer address, and
//! accept errors (a full file table: EMFILE) met with a pause instead of a spin, so a flood of
//! idle connections can neither exhaust the process nor starve the agents already connected.
//! With mutual TLS, each handshake runs in its own task under a deadline (a client that never
//! finishes one holds only its own slot), and the verified agent identity rides with the
//! connection to every request on it ([`PeerInfo`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::transport::server::Connected;

use crate::tls::{AgentIdentity, ServerTls, identity_of};

/// Accepted connections waiting for the gRPC server to take them. When full, accepting waits.
pub const ACCEPT_QUEUE: usize = 16;
/// Shortest and longest pause after a failed accept.
const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_secs(1);
/// How often refusals of one peer address are logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request on a connection knows of its peer (in the request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The agent its verified certificate names; `None` on a plaintext port.
    pub identity: Option<Arc<AgentIdentity>>,
}

/// An accepted connection holding its share of the limits until it closes.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    _total: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Logs a refusal of a peer address at most once per `REFUSAL_LOG_EVERY`.
#[derive(Clone, Default)]
struct RefusalLog(Arc<Mutex<HashMap<IpAddr, tokio::time::Instant>>>);

impl RefusalLog {
    fn should_log(&self, ip: IpAddr) -> bool {
        let Ok(mut seen) = self.0.lock() else { return false };
        if seen.len() > 4096 {
            seen.clear();
        }
        let now = tokio::time::Instant::now();
        if seen.get(&ip).is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY) {
            return false;
        }
        seen.insert(ip, now);
        true
    }
}

/// One connection's slot in the per-address count.
struct PeerSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock()
            && let Some(n) = c.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Accepts on `listener` until the receiver is dropped, at most `max_total` connections open
/// at once (past it, new ones wait in the kernel's backlog) and `max_per_address` from one
/// peer address (past it, new ones are closed at once). With `tls`, only connections that
/// complete a handshake with a client certificate the current configuration accepts are
/// handed on.
pub fn accept(
    listener: TcpListener,
    max_total: usize,
    max_per_address: usize,
    tls: Option<watch::Receiver<ServerTls>>,
) -> mpsc::Receiver<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let total = Arc::new(Semaphore::new(max_total));
    let counts: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let refusals = RefusalLog::default();
    tokio::spawn(async move {
        let mut pause = PAUSE_MIN;
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&total).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = tx.closed() => return,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => {
                        pause = PAUSE_MIN;
                        a
                    }
                    Err(e) => {
                        // EMFILE/ENFILE and friends: nothing is accepted until descriptors
                        // free up, so wait rather than spin.
                        tracing::warn!(error = %e, pause = %humantime::format_duration(pause), "accept failed");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(PAUSE_MAX);
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Some(slot) = take_slot(&counts, peer, max_per_address) else {
                if refusals.should_log(peer.ip()) {
                    tracing::warn!(peer = %peer.ip(), max_per_address, "refused connections past the per-address limit");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Some(tls) = &tls else {
                let info = PeerInfo { remote: Some(peer), identity: None };
                if tx.send(Ok(Conn { io: Io::Plain(stream), info, _total: permit, _peer: slot })).await.is_err() {
                    return;
                }
                continue;
            };
            let (config, agents) = {
                let t = tls.borrow();
                (Arc::clone(&t.config), t.agents)
            };
            let (tx, refusals) = (tx.clone(), refusals.clone());
            tokio::spawn(async move {
                match handshake(stream, config, agents).await {
                    Ok((io, identity)) => {
                        let info = PeerInfo { remote: Some(peer), identity: identity.map(Arc::new) };
                        let _ = tx.send(Ok(Conn { io, info, _total: permit, _peer: slot })).await;
                    }
                    // A connect-and-close (agents' control probes, health checks) is no refusal.
                    Err(Refused::Closed) => {
                        tracing::debug!(peer = %peer.ip(), "connection closed before a TLS handshake")
                    }
                    Err(Refused::Why(why)) => {
                        if refusals.should_log(peer.ip()) {
                            tracing::warn!(peer = %peer.ip(), %why, "refused a TLS connection (logged once a minute per address)");
                        }
                    }
                }
            });
        }
    });
    rx
}

/// Completes a server handshake under `HANDSHAKE_TIMEOUT` and, when `agents`, reads the agent
/// identity from the verified client certificate.
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    agents: bool,
) -> Result<(Io, Option<AgentIdentity>), Refused> {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(config).accept(stream))
        .await
        .map_err(|_| Refused::Why(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Refused::Closed,
            _ => Refused::Why(format!("TLS handshake: {e}")),
        })?;
    if !agents {
        return Ok((Io::Tls(Box::new(accepted)), None));
    }
    let identity = {
        let (_, conn) = accepted.get_ref();
        let leaf =
            conn.peer_certificates().and_then(|c| c.first()).ok_or(Refused::Why("no client certificate".into()))?;
        identity_of(leaf).map_err(Refused::Why)?
    };
    Ok((Io::Tls(Box::new(accepted)), Some(identity)))
}

/// Accepted connections as axum takes them (the HTTP API over TLS).
pub struct Incoming(pub mpsc::Receiver<std::io::Result<Conn>>);

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Conn, Option<SocketAddr>) {
        loop {
            match self.0.recv().await {
                Some(Ok(conn)) => {
                    let addr = conn.info.remote;
                    return (conn, addr);
                }
                Some(Err(_)) => continue,
                // The accept loop has ended: the server is stopping; wait for its shutdown.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        Ok(None)
    }
}

/// Why a connection was not handed on.
enum Refused {
    /// Closed by the client before a handshake.
    Closed,
    Why(String),
}

fn take_slot(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, peer: SocketAddr, max: usize) -> Option<PeerSlot> {
    let mut c = counts.lock().ok()?;
    let n = c.entry(peer.ip()).or_default();
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(PeerSlot { ip: peer.ip(), counts: Arc::clone(counts) })
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Forwards an I/O call to whichever stream the connection is.
macro_rules! io {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Io::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        io!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        io!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        io!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
