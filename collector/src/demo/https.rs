//! A small HTTPS server that answers every request from a handler that sees the caller's
//! address: enough to replay a provider's real answers, and to refuse some callers by source
//! address the way a geo block does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A canned HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Canned {
    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Canned {
        Canned { status, headers: vec![("content-type", "application/json".into())], body: body.into() }
    }

    /// An HTML answer.
    pub fn html(status: u16, body: &str) -> Canned {
        Canned { status, headers: vec![("content-type", "text/html; charset=UTF-8".into())], body: body.into() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Canned {
        self.headers.push((name, value.into()));
        self
    }
}

/// Decides the answer to one request from the caller's address and the request head.
pub type Handler = Arc<dyn Fn(SocketAddr, &http::request::Parts) -> Canned + Send + Sync>;

/// Serves HTTPS on `listener` until the returned task is aborted.
pub fn serve_https(listener: TcpListener, tls: Arc<ServerConfig>, handler: Handler) -> JoinHandle<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let (acceptor, handler) = (acceptor.clone(), Arc::clone(&handler));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    async move {
                        let (parts, _body) = req.into_parts();
                        let canned = handler(peer, &parts);
                        let mut resp = hyper::Response::builder().status(canned.status);
                        for (k, v) in &canned.headers {
                            resp = resp.header(*k, v.as_str());
                        }
                        resp.body(Full::new(Bytes::from(canned.body)))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    })
}
