//! A reusable HTTPS responder that answers every request with a canned response chosen by
//! a handler, which sees the peer address, so demos can refuse by *source address*.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{FaultError, FaultServer, accept_loop};

/// A canned HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canned {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Canned {
    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// An HTML answer.
    pub fn html(status: u16, body: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type".into(), "text/html; charset=UTF-8".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=UTF-8".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut b = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        // A canned answer with an invalid status or header is a test bug; answer 500 with
        // the reason so the test that made it fails visibly.
        b.body(Full::new(self.body)).unwrap_or_else(|e| {
            let mut r = Response::new(Full::new(Bytes::from(format!("bad canned response: {e}"))));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

/// Serves HTTPS (HTTP/1.1) on `listener`: every request gets `handler(peer, request)`.
pub fn serve_https<H>(listener: TcpListener, tls: Arc<ServerConfig>, handler: H) -> Result<FaultServer, FaultError>
where
    H: Fn(SocketAddr, &Request<()>) -> Canned + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let handler = Arc::new(handler);
    accept_loop(listener, move |stream, peer| {
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = service_fn(move |req: Request<Incoming>| {
                let (parts, _body) = req.into_parts();
                let canned = handler(peer, &Request::from_parts(parts, ()));
                async move { Ok::<_, std::convert::Infallible>(canned.into_response()) }
            });
            // A client that goes away mid-answer is normal for probes; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        }
    })
}
