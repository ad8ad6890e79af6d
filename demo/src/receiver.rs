//! The demo's webhook receiver: plain HTTP on loopback, checking each notification's
//! signature the way the README shows, and handing what arrived to the demo to print.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::faultkit::{FaultError, FaultServer, accept_loop};

/// One notification as it arrived.
#[derive(Debug, Clone)]
pub struct Notification {
    pub payload: serde_json::Value,
    /// The `X-Blockwatch-Signature` checked out against the secret and the clock.
    pub verified: bool,
}

/// Whether `header` (`t=SECONDS,v1=HEX`) signs `body` with `secret`, within five minutes.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (blockwatch_proto::time::now() / 1000 - t).abs() > 300 {
        return false;
    }
    let tag: Option<Vec<u8>> =
        (0..v1.len() / 2).map(|i| u8::from_str_radix(v1.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    tag.is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok())
}

/// Receives on `listener`; every notification goes to `tx`, answered 200.
pub fn serve(
    listener: TcpListener,
    secret: Vec<u8>,
    tx: mpsc::Sender<Notification>,
) -> Result<FaultServer, FaultError> {
    accept_loop(listener, move |stream, _peer: SocketAddr| {
        let (secret, tx) = (secret.clone(), tx.clone());
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (secret, tx) = (secret.clone(), tx.clone());
                async move {
                    let sig = req
                        .headers()
                        .get("x-blockwatch-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let verified = verify(&secret, &sig, &body);
                    if let Ok(payload) = serde_json::from_slice(&body) {
                        let _ = tx.send(Notification { payload, verified }).await;
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        }
    })
}
