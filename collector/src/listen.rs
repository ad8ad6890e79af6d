//! The gRPC port's accept loop: a bound on connections in all and from one peer address, and
//! accept errors (a full file table: EMFILE) met with a pause instead of a spin, so a flood of
//! idle connections can neither exhaust the process nor starve the agents already connected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Accepted connections waiting for the gRPC server to take them. When full, accepting waits.
pub const ACCEPT_QUEUE: usize = 16;
/// Shortest and longest pause after a failed accept.
const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_secs(1);
/// How often refusals of one peer address are logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// An accepted connection holding its share of the limits until it closes.
pub struct Conn {
    stream: TcpStream,
    info: TcpConnectInfo,
    _total: OwnedSemaphorePermit,
    _peer: PeerSlot,
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
/// peer address (past it, new ones are closed at once).
pub fn accept(
    listener: TcpListener,
    max_total: usize,
    max_per_address: usize,
) -> mpsc::Receiver<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let total = Arc::new(Semaphore::new(max_total));
    let counts: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    tokio::spawn(async move {
        let mut pause = PAUSE_MIN;
        let mut last_refusal_log: HashMap<IpAddr, tokio::time::Instant> = HashMap::new();
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
                let now = tokio::time::Instant::now();
                if last_refusal_log.get(&peer.ip()).is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_EVERY) {
                    last_refusal_log.insert(peer.ip(), now);
                    tracing::warn!(peer = %peer.ip(), max_per_address, "refused connections past the per-address limit");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(peer) };
            if tx.send(Ok(Conn { stream, info, _total: permit, _peer: slot })).await.is_err() {
                return;
            }
            if last_refusal_log.len() > 4096 {
                last_refusal_log.clear();
            }
        }
    });
    rx
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
