//! A bound on what agents' messages hold in the collector's memory, across every Report
//! stream at once (`limits.ingest_buffer_mib`).
//!
//! Each Report stream's request body is read through [`Metered`], which follows the gRPC
//! framing (a 5-byte prefix giving each message's length) and lets a message's bytes through
//! to the decoder only once the message's length is charged to the shared [`Budget`]. The
//! charge stays until the stream's handler is done with that message (stored and acked, or
//! answered), then goes back through the stream's [`Ledger`]. A stream whose next message does
//! not fit waits, unread: HTTP/2 flow control then holds its agent to the stream's receive
//! window, and nothing is refused. So the messages read, decoded and waiting for the store
//! are bounded by the budget whatever the number of agents, not by agents × in-flight batches.
//!
//! Rules that keep it from deadlocking or being held hostage:
//! - a message is charged whole, once, when its prefix has arrived; the bytes before it (the
//!   end of the previous message) always go through without waiting, so a message that was
//!   charged can always complete;
//! - one message is charged at most the whole budget, so any message can be admitted;
//! - the semaphore is fair: a big message waiting is not overtaken forever by small ones;
//! - a charged message whose bytes stop arriving for [`MESSAGE_IDLE`] ends its stream
//!   (`DEADLINE_EXCEEDED`), returning its charge;
//! - a stream that ends for any reason returns everything it holds (the ledger's `Drop`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// How long a message that holds its charge may go without a byte of it arriving.
pub const MESSAGE_IDLE: Duration = Duration::from_secs(30);

/// The gRPC length prefix: a compression flag and a big-endian u32 length.
pub(super) const PREFIX: usize = 5;

/// The message length a gRPC prefix gives.
pub(super) fn message_len(prefix: &[u8; PREFIX]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

/// The shared budget, in bytes of messages as they arrive (their encoded length).
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
    /// Messages that had to wait for their charge, since start.
    waits: Arc<AtomicU64>,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let total = bytes.clamp(1, u32::MAX as usize);
        Budget { sem: Arc::new(Semaphore::new(total)), total, waits: Arc::new(AtomicU64::new(0)) }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes charged now, across every stream.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.sem.available_permits())
    }

    /// Messages that have had to wait for their charge since start: when it grows, agents
    /// offer more than the collector takes.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// A new stream's ledger.
    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::new(Ledger { sem: Arc::clone(&self.sem), held: Mutex::new(VecDeque::new()) })
    }
}

/// What one stream holds of the budget: the charge of each message admitted and not yet
/// released, oldest first (messages are decoded and handled in the order they arrive).
#[derive(Debug)]
pub struct Ledger {
    sem: Arc<Semaphore>,
    held: Mutex<VecDeque<usize>>,
}

impl Ledger {
    fn admit(&self, charge: usize) {
        if let Ok(mut held) = self.held.lock() {
            held.push_back(charge);
        } else {
            // Never poisoned (no code panics while holding it); if it were, the charge goes
            // straight back rather than being lost.
            self.sem.add_permits(charge);
        }
    }

    /// The stream's oldest admitted message is done with: its charge goes back.
    pub fn release(&self) {
        let charge = self.held.lock().ok().and_then(|mut h| h.pop_front()).unwrap_or(0);
        if charge > 0 {
            self.sem.add_permits(charge);
        }
    }

    /// Bytes this stream holds.
    pub fn holding(&self) -> usize {
        self.held.lock().map(|h| h.iter().sum()).unwrap_or(0)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let held: usize = self.held.get_mut().map(|h| h.iter().sum()).unwrap_or(0);
        if held > 0 {
            self.sem.add_permits(held);
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body read through the budget (see the module's documentation).
pub struct Metered<B> {
    inner: B,
    budget: Budget,
    ledger: Arc<Ledger>,
    /// The length prefix being read, and how much of it has arrived.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// Bytes received and not yet passed on (they follow a prefix whose charge is awaited).
    pending: Option<Bytes>,
    /// The charge being waited for.
    waiting: Option<(usize, Acquire)>,
    /// Armed while a charged message is incomplete; reset by each byte of it.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Metered<B> {
    pub fn new(inner: B, budget: Budget, ledger: Arc<Ledger>) -> Metered<B> {
        Metered {
            inner,
            budget,
            ledger,
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            pending: None,
            waiting: None,
            idle: None,
        }
    }

    /// Reads `data` through the framing. Returns where to cut it when a message's charge
    /// cannot be had at once: the bytes before the cut go on now, the rest wait for
    /// `self.waiting`.
    fn scan(&mut self, data: &Bytes) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() - i);
                self.remaining -= take;
                i += take;
                continue;
            }
            self.prefix[self.prefix_len] = data[i];
            self.prefix_len += 1;
            i += 1;
            if self.prefix_len < PREFIX {
                continue;
            }
            self.prefix_len = 0;
            let len = message_len(&self.prefix);
            self.remaining = len;
            let charge = (len + PREFIX).min(self.budget.total);
            match Arc::clone(&self.budget.sem).try_acquire_many_owned(charge as u32) {
                Ok(permit) => {
                    permit.forget();
                    self.ledger.admit(charge);
                }
                Err(_) => {
                    self.budget.waits.fetch_add(1, Ordering::Relaxed);
                    let acquire = Arc::clone(&self.budget.sem).acquire_many_owned(charge as u32);
                    self.waiting = Some((charge, Box::pin(acquire)));
                    return Some(i);
                }
            }
        }
        None
    }

    /// After bytes of a message went on: the idle timer runs while the message is incomplete.
    fn progressed(&mut self) {
        if self.remaining == 0 {
            self.idle = None;
            return;
        }
        let at = tokio::time::Instant::now() + MESSAGE_IDLE;
        match &mut self.idle {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.idle = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some((charge, acquire)) = &mut this.waiting {
                let charge = *charge;
                match ready!(acquire.as_mut().poll(cx)) {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Poll::Ready(Some(Err(Status::unavailable("the collector is shutting down")))),
                }
                this.ledger.admit(charge);
                this.waiting = None;
            }
            if let Some(mut data) = this.pending.take() {
                let head = match this.scan(&data) {
                    None => std::mem::take(&mut data),
                    Some(cut) => data.split_to(cut),
                };
                if !data.is_empty() {
                    this.pending = Some(data);
                }
                if head.is_empty() {
                    continue;
                }
                this.progressed();
                return Poll::Ready(Some(Ok(Frame::data(head))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = Some(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Pending => {
                    if let Some(idle) = &mut this.idle {
                        ready!(idle.as_mut().poll(cx));
                        this.idle = None;
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                            "a message stopped arriving for {}s midway ({} bytes still to come)",
                            MESSAGE_IDLE.as_secs(),
                            this.remaining
                        )))));
                    }
                    return Poll::Pending;
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by the test, frame by frame.
    pub(in crate::ingest) struct Fed(pub(in crate::ingest) mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    fn fed(budget: &Budget) -> (mpsc::UnboundedSender<Bytes>, Metered<Fed>, Arc<Ledger>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ledger = budget.ledger();
        (tx, Metered::new(Fed(rx), budget.clone(), Arc::clone(&ledger)), ledger)
    }

    async fn next(body: &mut Metered<Fed>) -> Option<Vec<u8>> {
        let polled = tokio::time::timeout(Duration::from_millis(100), body.frame()).await.ok()?;
        Some(polled.expect("a frame").expect("no error").into_data().expect("data").to_vec())
    }

    #[tokio::test]
    async fn messages_are_charged_whole_and_released_in_order() {
        let budget = Budget::new(1000);
        let (tx, mut body, ledger) = fed(&budget);
        let mut two = message(100);
        two.extend(message(200));
        tx.send(Bytes::from(two.clone())).unwrap();
        assert_eq!(next(&mut body).await.unwrap(), two);
        assert_eq!(budget.in_use(), 105 + 205);
        assert_eq!(ledger.holding(), 310);
        ledger.release();
        assert_eq!(budget.in_use(), 205);
        ledger.release();
        assert_eq!(budget.in_use(), 0);
        // More releases than messages change nothing.
        ledger.release();
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_message_that_does_not_fit_waits_and_the_bytes_before_it_go_on() {
        let budget = Budget::new(300);
        let (tx_a, mut a, ledger_a) = fed(&budget);
        let (tx_b, mut b, ledger_b) = fed(&budget);
        // A holds 205 of 300.
        tx_a.send(Bytes::from(message(200))).unwrap();
        assert_eq!(next(&mut a).await.unwrap().len(), 205);
        // B's frame ends its first message (charged: 55) and starts a second of 105, which does
        // not fit: the first goes on, the second waits.
        let mut frame = message(50);
        let second = message(100);
        frame.extend_from_slice(&second[..30]);
        tx_b.send(Bytes::from(frame.clone())).unwrap();
        assert_eq!(next(&mut b).await.unwrap(), frame[..55 + PREFIX].to_vec());
        assert_eq!(next(&mut b).await, None, "the second message waits for the budget");
        assert_eq!(ledger_b.holding(), 55);
        // The waiting charge reserves what is free meanwhile (the semaphore is fair).
        assert_eq!(budget.in_use(), 300);
        // A is done with its message: B's second is admitted and its bytes go on.
        ledger_a.release();
        assert_eq!(next(&mut b).await.unwrap(), second[PREFIX..30].to_vec());
        assert_eq!(budget.in_use(), 55 + 105);
        assert_eq!(ledger_b.holding(), 160);
        drop(b);
        drop(ledger_b);
        drop(a);
        drop(ledger_a);
        assert_eq!(budget.in_use(), 0, "a stream that ends returns what it held");
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_takes_all_of_it() {
        let budget = Budget::new(64);
        let (tx, mut body, ledger) = fed(&budget);
        tx.send(Bytes::from(message(1000))).unwrap();
        assert_eq!(next(&mut body).await.unwrap().len(), 1005);
        assert_eq!(budget.in_use(), 64);
        ledger.release();
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn prefixes_split_across_frames_are_read() {
        let budget = Budget::new(10_000);
        let (tx, mut body, ledger) = fed(&budget);
        let m = message(300);
        for chunk in [&m[..2], &m[2..4], &m[4..7], &m[7..]] {
            tx.send(Bytes::copy_from_slice(chunk)).unwrap();
            assert_eq!(next(&mut body).await.unwrap(), chunk.to_vec());
        }
        assert_eq!(ledger.holding(), 305);
    }

    #[tokio::test(start_paused = true)]
    async fn a_charged_message_that_stops_arriving_ends_the_stream() {
        let budget = Budget::new(10_000);
        let (tx, mut body, ledger) = fed(&budget);
        let m = message(300);
        tx.send(Bytes::copy_from_slice(&m[..100])).unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 100);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("205 bytes still to come"), "{}", err.message());
        drop(body);
        drop(ledger);
        assert_eq!(budget.in_use(), 0);
        drop(tx);
    }
}
