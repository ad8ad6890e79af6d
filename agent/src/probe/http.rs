//! HTTP phase: one HTTP/1.1 request over the already-measured TLS connection.

use std::time::Duration;

use blockwatch_proto::Outcome;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, timeout_at};

use super::failure::{Failure, IoKind, classify_io, find_cause, ooni};
use super::tls::Tls;

/// What came back.
pub(crate) struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, at most the engine's cap.
    pub body: Bytes,
    /// Request sent to the first byte of the response head.
    pub ttfb: Duration,
    /// Request sent to the end of the bounded body read.
    pub total: Duration,
    /// Why the body stopped before its end, when it did (reset, close, the deadline); a
    /// body cut at the cap is no failure.
    pub body_failure: Option<Failure>,
}

/// Aborts the connection task when the phase ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `req` on `tls` and reads the answer, at most `cap` body bytes, before `deadline`.
///
/// A body that stops early (reset, timeout, cap) still yields the answer: the status and
/// the body start are what the classifier needs.
pub(crate) async fn exchange(
    tls: Tls,
    req: Request<Empty<Bytes>>,
    cap: usize,
    deadline: Instant,
) -> Result<Answer, (Failure, Duration)> {
    let started = Instant::now();
    let (mut sender, conn) = match timeout_at(deadline, http1::handshake(TokioIo::new(tls))).await {
        Err(_) => return Err((Failure::timeout(Outcome::HttpTimeout, "HTTP"), started.elapsed())),
        Ok(Err(e)) => return Err((classify_hyper(&e), started.elapsed())),
        Ok(Ok(pair)) => pair,
    };
    // The connection future drives the socket; it must run while we wait on the response.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Its error, if any, also surfaces through send_request, where it is classified.
        let _ = conn.await;
    }));
    let sent = Instant::now();
    let resp = match timeout_at(deadline, sender.send_request(req)).await {
        Err(_) => return Err((Failure::timeout(Outcome::HttpTimeout, "HTTP response"), sent.elapsed())),
        Ok(Err(e)) => return Err((classify_hyper(&e), sent.elapsed())),
        Ok(Ok(resp)) => resp,
    };
    let ttfb = sent.elapsed();
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    let mut body_failure = None;
    while buf.len() < cap {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap - buf.len();
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Ok(None) => break,
            // A cut body or the deadline: what arrived is still classified, and the cut is
            // recorded with it.
            Ok(Some(Err(e))) => {
                body_failure = Some(classify_hyper(&e));
                break;
            }
            Err(_) => {
                body_failure = Some(Failure::timeout(Outcome::HttpTimeout, "HTTP body"));
                break;
            }
        }
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: buf.freeze(),
        ttfb,
        total: sent.elapsed(),
        body_failure,
    })
}

/// Classifies a hyper error by the I/O error in its cause chain, or by hyper's own kind.
fn classify_hyper(e: &hyper::Error) -> Failure {
    if let Some(io) = find_cause::<std::io::Error>(e) {
        let (kind, failure) = classify_io(io);
        let outcome = match kind {
            IoKind::Timeout => Outcome::HttpTimeout,
            _ => Outcome::HttpReset,
        };
        return Failure::new(outcome, failure, format!("HTTP: {e}"));
    }
    if e.is_incomplete_message() || e.is_canceled() {
        // The peer closed the connection before a complete response head.
        return Failure::new(Outcome::HttpReset, ooni::EOF, format!("HTTP: {e}"));
    }
    if e.is_timeout() {
        return Failure::timeout(Outcome::HttpTimeout, "HTTP");
    }
    // A malformed response: the connection works, but what answered is not HTTP as expected.
    // OONI has no name for it (`http_request_failed` is for statuses of 400 and more).
    Failure::new(Outcome::HttpUnexpected, ooni::unknown(e), format!("HTTP: {e}"))
}
