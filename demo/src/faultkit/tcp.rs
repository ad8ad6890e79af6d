//! TCP and TLS misbehaviour: resets, silence, EOF and alerts at chosen moments.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{FaultError, FaultServer, accept_loop};

/// How long a fault server waits for a client's first bytes before giving up on it.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// A fatal `handshake_failure` alert record (TLS 1.2 record version, as middleboxes send).
const ALERT_HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

async fn listen(ip: IpAddr) -> Result<TcpListener, FaultError> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0)).await?)
}

/// Closes with RST instead of FIN: SO_LINGER 0, then drop.
fn reset(stream: TcpStream) {
    // If the option cannot be set the close is a FIN, which the test then reports as an
    // EOF, so the mistake is visible rather than hidden.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads one TLS record (the ClientHello) so the server acts only after it arrived.
async fn read_client_hello(stream: &mut TcpStream) -> bool {
    let read = async {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(header[0] == 0x16)
    };
    matches!(tokio::time::timeout(READ_LIMIT, read).await, Ok(Ok(true)))
}

/// An address on `ip` where nothing listens: connecting is refused.
pub fn closed_port(ip: IpAddr) -> Result<SocketAddr, FaultError> {
    // Bind to learn a free port, then close it. Another process could take the port in
    // between, but on a test machine's loopback that is vanishingly rare.
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(listener.local_addr()?)
}

/// Accepts and never sends a byte (a TLS handshake that never finishes).
pub async fn silent(ip: IpAddr) -> Result<FaultServer, FaultError> {
    accept_loop(listen(ip).await?, |stream, _| async move {
        let _held = stream;
        std::future::pending::<()>().await
    })
}

/// Reads the ClientHello, then resets: the SNI-filtering signature.
pub async fn tls_reset_after_hello(ip: IpAddr) -> Result<FaultServer, FaultError> {
    accept_loop(listen(ip).await?, |mut stream, _| async move {
        if read_client_hello(&mut stream).await {
            reset(stream);
        }
    })
}

/// Reads the ClientHello, then closes cleanly (FIN).
pub async fn tls_eof_after_hello(ip: IpAddr) -> Result<FaultServer, FaultError> {
    accept_loop(listen(ip).await?, |mut stream, _| async move {
        if read_client_hello(&mut stream).await {
            let _ = stream.shutdown().await;
        }
    })
}

/// Reads the ClientHello and answers with a fatal `handshake_failure` alert.
pub async fn tls_alert(ip: IpAddr) -> Result<FaultServer, FaultError> {
    accept_loop(listen(ip).await?, |mut stream, _| async move {
        if read_client_hello(&mut stream).await {
            let _ = stream.write_all(&ALERT_HANDSHAKE_FAILURE).await;
            let _ = stream.shutdown().await;
        }
    })
}

/// Completes the TLS handshake, then never answers the HTTP request.
pub async fn tls_silent_after_handshake(ip: IpAddr, tls: Arc<ServerConfig>) -> Result<FaultServer, FaultError> {
    let acceptor = TlsAcceptor::from(tls);
    accept_loop(listen(ip).await?, move |stream, _| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(_held) = acceptor.accept(stream).await {
                std::future::pending::<()>().await
            }
        }
    })
}

/// Completes the TLS handshake, reads the start of the request, then resets.
pub async fn http_reset(ip: IpAddr, tls: Arc<ServerConfig>) -> Result<FaultServer, FaultError> {
    http_raw(ip, tls, b"", RawEnd::Reset).await
}

/// How a raw HTTP answer ends, after its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// A TCP reset.
    Reset,
    /// A clean close (TLS close_notify, then FIN).
    Close,
    /// Nothing more, the connection held open.
    Hang,
}

/// Completes the TLS handshake, reads the start of the request, writes `raw` as the answer
/// (a head with a body cut short, or bytes that are not HTTP), then ends as `end` says.
pub async fn http_raw(
    ip: IpAddr,
    tls: Arc<ServerConfig>,
    raw: &'static [u8],
    end: RawEnd,
) -> Result<FaultServer, FaultError> {
    let acceptor = TlsAcceptor::from(tls);
    accept_loop(listen(ip).await?, move |stream, _| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else { return };
            let mut buf = [0u8; 1024];
            if !matches!(tokio::time::timeout(READ_LIMIT, tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0) {
                return;
            }
            if tls.write_all(raw).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            match end {
                RawEnd::Reset => {
                    // Give the bytes time to leave before the reset overtakes them.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let (tcp, _) = tls.into_inner();
                    reset(tcp);
                }
                RawEnd::Close => {
                    let _ = tls.shutdown().await;
                }
                RawEnd::Hang => std::future::pending::<()>().await,
            }
        }
    })
}
