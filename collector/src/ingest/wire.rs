//! The Report stream's gRPC framing, read and written here rather than by the gRPC library.
//!
//! The library's stream decoder keeps, for each stream, one buffer as large as the largest
//! message the stream has carried, for as long as the stream lives: with 10 000 agents
//! flushing their spools in batches of 50 results, about 48 KiB per agent, near 480 MB held by
//! streams that are between messages. Here each message is assembled in a buffer of exactly
//! its own length (or read in place when one HTTP/2 frame holds it whole), decoded, and let
//! go; each reply is encoded into its own exact buffer. A stream between messages holds
//! nothing but its HTTP/2 state.
//!
//! [`ReportRoute`] serves `/blockwatch.v1.Fleet/Report` this way, reading each body through
//! the ingest budget ([`Metered`]), and hands every other method to the generated server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use blockwatch_proto::v1::fleet_server::FleetServer;
use blockwatch_proto::v1::{AgentMessage, CollectorMessage};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::{Body, Frame};
use prost::Message;
use tonic::Status;

use super::budget::{Budget, Metered, PREFIX, message_len};
use super::{FleetService, Ingest, ReportStream};
use crate::listen::PeerInfo;

/// The agent messages of one Report stream's request body, decoded one at a time.
pub struct Inbound<B> {
    body: B,
    /// Received bytes not yet read.
    chunk: Bytes,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// The message being assembled across frames, with its full length.
    partial: Option<(usize, BytesMut)>,
    /// Messages decoded so far (named in errors).
    count: u64,
    max: usize,
    done: bool,
}

impl<B> Inbound<B> {
    pub fn new(body: B, max: usize) -> Inbound<B> {
        Inbound {
            body,
            chunk: Bytes::new(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            partial: None,
            count: 0,
            max,
            done: false,
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<AgentMessage, Status> {
        self.count += 1;
        AgentMessage::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("message {} of the stream does not decode: {e}", self.count)))
    }

    /// Reads what `self.chunk` holds: a message once one is complete.
    fn read(&mut self) -> Result<Option<AgentMessage>, Status> {
        while !self.chunk.is_empty() {
            if let Some((len, buf)) = &mut self.partial {
                let len = *len;
                if buf.is_empty() && self.chunk.len() >= len {
                    self.partial = None;
                    let whole = self.chunk.split_to(len);
                    return self.decode(&whole).map(Some);
                }
                // Its buffer is taken when its first byte arrives, not at its prefix: the
                // bytes after a prefix wait for the budget's charge, and a stream waiting
                // for one holds nothing.
                if buf.capacity() == 0 {
                    buf.reserve(len);
                }
                let take = (len - buf.len()).min(self.chunk.len());
                buf.put(self.chunk.split_to(take));
                if buf.len() < len {
                    continue;
                }
                let (_, buf) = self.partial.take().unwrap_or_default();
                return self.decode(&buf).map(Some);
            }
            let take = (PREFIX - self.prefix_len).min(self.chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&self.chunk[..take]);
            self.chunk.advance(take);
            self.prefix_len += take;
            if self.prefix_len < PREFIX {
                continue;
            }
            self.prefix_len = 0;
            match self.prefix[0] {
                0 => {}
                1 => {
                    return Err(Status::unimplemented(
                        "compressed messages are not accepted: send them uncompressed (grpc-encoding identity)",
                    ));
                }
                flag => return Err(Status::internal(format!("invalid compression flag {flag} (0 or 1)"))),
            }
            let len = message_len(&self.prefix);
            if len > self.max {
                return Err(Status::out_of_range(format!(
                    "message {} of the stream is {len} bytes: at most {}",
                    self.count + 1,
                    self.max
                )));
            }
            if self.chunk.len() >= len {
                let whole = self.chunk.split_to(len);
                return self.decode(&whole).map(Some);
            }
            self.partial = Some((len, BytesMut::new()));
        }
        Ok(None)
    }
}

impl<B> Stream for Inbound<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<AgentMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.read() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers from an agent carry nothing the collector reads.
                    if let Ok(data) = frame.into_data() {
                        this.chunk = data;
                    }
                }
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    if this.prefix_len == 0 && this.partial.is_none() {
                        return Poll::Ready(None);
                    }
                    let had = this.partial.as_ref().map_or(this.prefix_len, |(_, buf)| PREFIX + buf.len());
                    return Poll::Ready(Some(Err(Status::invalid_argument(format!(
                        "the stream ended {had} bytes into message {}",
                        this.count + 1
                    )))));
                }
            }
        }
    }
}

/// One gRPC message: the prefix and the encoded message, in a buffer of exactly that size.
pub fn frame(message: &CollectorMessage) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // A BytesMut grows as needed, so encoding into one cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// The response body of a Report stream: each reply framed as it comes, then the trailers
/// with the stream's status.
pub struct Outbound {
    replies: ReportStream,
    done: bool,
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(self.replies.as_mut().poll_next(cx)) {
            Some(Ok(reply)) => return Poll::Ready(Some(Ok(Frame::data(frame(&reply))))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unencodable) = status.add_header(&mut trailers) {
            trailers.clear();
            let _ = unencodable.add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

type Response = http::Response<tonic::body::Body>;

/// The Fleet service as served: Report streams read and written here (see the module's
/// documentation), every other method by the generated server.
#[derive(Clone)]
pub struct ReportRoute {
    inner: FleetServer<FleetService>,
    ingest: Arc<Ingest>,
    max_message: usize,
}

impl ReportRoute {
    pub fn new(ingest: Arc<Ingest>, max_message: usize) -> ReportRoute {
        let inner = FleetServer::new(FleetService(Arc::clone(&ingest)))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        ReportRoute { inner, ingest, max_message }
    }
}

impl tonic::server::NamedService for ReportRoute {
    const NAME: &'static str = <FleetServer<FleetService> as tonic::server::NamedService>::NAME;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for ReportRoute {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <FleetServer<FleetService> as tower_service::Service<http::Request<tonic::body::Body>>>::poll_ready(
            &mut self.inner,
            cx,
        )
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let is_report = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(<Self as tonic::server::NamedService>::NAME))
            == Some("/Report");
        if !is_report {
            return Box::pin(self.inner.call(req));
        }
        let ingest = Arc::clone(&self.ingest);
        let max = self.max_message;
        Box::pin(async move { Ok(report(ingest, req, max).await) })
    }
}

/// Serves one Report stream.
async fn report(ingest: Arc<Ingest>, req: http::Request<tonic::body::Body>, max: usize) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        let mut refused = Status::unimplemented(format!(
            "grpc-encoding {:?} is not accepted: send messages uncompressed",
            String::from_utf8_lossy(encoding.as_bytes())
        ))
        .into_http::<tonic::body::Body>();
        refused.headers_mut().insert("grpc-accept-encoding", http::HeaderValue::from_static("identity"));
        return refused;
    }
    let peer = parts.extensions.get::<PeerInfo>().cloned();
    let budget: &Budget = ingest.budget();
    let ledger = budget.ledger();
    let inbound = Inbound::new(Metered::new(body, budget.clone(), Arc::clone(&ledger)), max);
    match ingest.open_report(peer, Some(ledger), Box::pin(inbound)).await {
        Ok(replies) => {
            let mut response = http::Response::new(tonic::body::Body::new(Outbound { replies, done: false }));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => status.into_http(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::budget::tests::Fed;
    use super::*;
    use blockwatch_proto::v1::{Heartbeat, agent_message};
    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    fn heartbeat(spooled: u64) -> AgentMessage {
        AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Heartbeat { spooled })) }
    }

    fn framed(m: &AgentMessage) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn inbound(chunks: Vec<Vec<u8>>, max: usize) -> Inbound<Fed> {
        let (tx, rx) = mpsc::unbounded_channel();
        for c in chunks {
            tx.send(Bytes::from(c)).unwrap();
        }
        Inbound::new(Fed(rx), max)
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames_decode_in_order() {
        let mut wire = Vec::new();
        for n in 1..=3 {
            wire.extend(framed(&heartbeat(n)));
        }
        // Every split: one byte at a time, and all three in one frame.
        let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
        for chunks in [bytes, vec![wire.clone()]] {
            let got: Vec<_> = inbound(chunks, 1024).map(|m| m.unwrap()).collect().await;
            assert_eq!(got, vec![heartbeat(1), heartbeat(2), heartbeat(3)]);
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_by_its_prefix() {
        let mut s = inbound(vec![vec![0, 0, 0, 4, 1]], 1024);
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("1025 bytes: at most 1024"), "{err:?}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn compressed_truncated_and_undecodable_messages_are_named() {
        let mut s = inbound(vec![vec![1, 0, 0, 0, 1, 0]], 1024);
        assert_eq!(s.next().await.unwrap().unwrap_err().code(), tonic::Code::Unimplemented);

        let mut whole = framed(&heartbeat(7));
        whole.pop();
        let mut s = inbound(vec![framed(&heartbeat(1)), whole], 1024);
        assert_eq!(s.next().await.unwrap().unwrap(), heartbeat(1));
        let err = s.next().await.unwrap().unwrap_err();
        assert!(err.message().contains("into message 2"), "{err:?}");

        let mut s = inbound(vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]], 1024);
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("message 1 of the stream does not decode"), "{err:?}");
    }

    #[tokio::test]
    async fn a_message_takes_its_buffer_with_its_first_byte_not_its_prefix() {
        let whole = framed(&heartbeat(9));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Inbound::new(Fed(rx), 1024);
        tx.send(Bytes::copy_from_slice(&whole[..PREFIX])).unwrap();
        let pending = |s: &mut Inbound<Fed>| futures_util::FutureExt::now_or_never(s.next()).is_none();
        assert!(pending(&mut s));
        assert_eq!(s.partial.as_ref().map(|(len, buf)| (*len, buf.capacity())), Some((whole.len() - PREFIX, 0)));
        tx.send(Bytes::copy_from_slice(&whole[PREFIX..PREFIX + 1])).unwrap();
        assert!(pending(&mut s));
        assert_eq!(s.partial.as_ref().map(|(_, buf)| buf.capacity() >= whole.len() - PREFIX), Some(true));
        tx.send(Bytes::copy_from_slice(&whole[PREFIX + 1..])).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), heartbeat(9));
        assert!(s.partial.is_none(), "let go once decoded");
    }

    #[test]
    fn a_frame_is_exactly_the_prefix_and_the_message() {
        let reply = CollectorMessage::default();
        assert_eq!(&frame(&reply)[..], &[0, 0, 0, 0, 0]);
    }
}
