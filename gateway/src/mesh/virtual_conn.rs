//! Virtual connections: the hand-off between a shard and its companion thread for one
//! request that arrived over TLS, HTTP/2 or HTTP/3 (docs/TRANSPORTS.md).
//!
//! The companion turns the request into HTTP/1.1 bytes and mails them to its shard
//! (`Mail::VirtualOpen` (mailbox.rs)) with a [`VirtualSink`]. The shard serves it as a
//! connection slot like any other (routing, refusals, publish, auth, the fan-out), except
//! that a write pushes its frames into the sink instead of a socket and is "in flight" until
//! the companion has handed every frame to hyper/h3 and mails
//! `Mail::VirtualWriteDone` (mailbox.rs). A stream whose peer stops reading keeps its
//! write in flight, so the fan-out laps and cuts it exactly as an HTTP/1.1 socket.
//!
//! A *tunnel* (an RFC 8441 WebSocket over HTTP/2, [`VirtualSink::tunnel`]) also carries the
//! client's bytes in, as a socket's receive would: the shard posts one receive at a time
//! ([`VirtualSink::post_recv`], with the room it has), the companion reads at most that
//! many bytes from the stream, leaves them in the sink ([`VirtualSink::deliver`]) and mails
//! `Mail::VirtualReceived`; the shard takes them ([`VirtualSink::take_received`]). Nothing
//! is read from the client while no receive is posted, so HTTP/2 flow control holds it
//! back: a tunnel holds at most one receive's bytes here, plus the stream's window in h2.

use crate::conn::key::ConnKey;
use bytes::Bytes;
use crossbeam_queue::{ArrayQueue, SegQueue};
use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Batches a sink holds. The shard has one write in flight per connection, so one batch
/// waits at most; the second place is slack, never used in steady state.
pub const SINK_BATCHES_MAX: usize = 2;

/// What the companion read from a tunnel's client for the shard's posted receive.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes (at most the receive's room, at least one).
    Data(Vec<u8>),
    /// The client sent no more: its stream ended, was reset, or its connection is gone.
    End,
}

/// A tunnel's inbound half (see the module comment).
struct InboundSlot {
    /// Bytes the shard's posted receive has room for; 0 while none waits for the
    /// companion (not posted, or already answered).
    room: AtomicUsize,
    /// A receive is posted and the shard has not taken its answer (shard side only).
    posted: AtomicBool,
    /// The answer to the posted receive: at most one.
    received: ArrayQueue<Inbound>,
}

/// The transports a companion thread serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Transport {
    /// HTTP/1.1 over TLS.
    Tls,
    /// HTTP/2 (over TLS or cleartext prior knowledge).
    H2,
    /// HTTP/3 over QUIC.
    H3,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 3] = [Transport::Tls, Transport::H2, Transport::H3];

    /// The `transport` label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::H2 => "h2",
            Transport::H3 => "h3",
        }
    }
}

/// The shard → companion wake-up path for batches, one per shard/companion pair.
///
/// The shard and its companion share a CPU, so every cross-thread wake-up is a context
/// switch. A push does not wake the companion's task: it queues the sink here, and the
/// shard rings the doorbell once at the end of its turn ([`Doorbell::ring`]). The
/// companion's dispatcher task ([`Doorbell::poll_ready`]) then wakes the sinks' tasks from
/// inside the runtime (no syscall), answers before streams, so a publisher's answer is
/// not queued behind the fan-out it caused, and every stream's task before the connection
/// tasks, so each connection writes once per round.
#[derive(Default)]
pub struct Doorbell {
    ready: SegQueue<Arc<VirtualSink>>,
    /// Sinks were queued since the last ring.
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Shard side, once per turn: wakes the companion's dispatcher if a sink was queued.
    pub fn ring(&self) {
        if self.pending.load(Ordering::Relaxed) && self.pending.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Companion side (the dispatcher task): takes the queued sinks, answers into `urgent`
    /// and streams into `streams`; `Pending` while none is queued.
    pub fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        urgent: &mut Vec<Arc<VirtualSink>>,
        streams: &mut Vec<Arc<VirtualSink>>,
    ) -> Poll<()> {
        self.waker.register(cx.waker());
        while let Some(sink) = self.ready.pop() {
            // Cleared before the task is woken: a later push queues the sink again.
            sink.queued.store(false, Ordering::Release);
            if sink.streaming.load(Ordering::Relaxed) {
                streams.push(sink);
            } else {
                urgent.push(sink);
            }
        }
        if urgent.is_empty() && streams.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// What a shard writes to one virtual connection, and how it learns the peer is gone.
pub struct VirtualSink {
    /// The connection's [`ConnKey::to_word`] on the shard once it opened it; 0 before.
    conn_key: AtomicU64,
    batches: ArrayQueue<Vec<Bytes>>,
    /// Set by the shard: no more batches will come.
    closed: AtomicBool,
    waker: AtomicWaker,
    /// Where a push queues the sink instead of waking its task (`None`: wake directly).
    doorbell: Option<Arc<Doorbell>>,
    /// The sink is in its doorbell's queue.
    queued: AtomicBool,
    /// Set by the companion once the answer is known to be a stream (SSE): the
    /// dispatcher wakes such sinks after the short answers.
    streaming: AtomicBool,
    /// A tunnel's inbound half (`None`: the request came whole with the mail).
    inbound: Option<Box<InboundSlot>>,
}

impl std::fmt::Debug for VirtualSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualSink")
            .field("conn", &self.key())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for VirtualSink {
    fn default() -> Self {
        Self::new(None)
    }
}

impl VirtualSink {
    /// A sink whose pushes are announced through `doorbell` (or wake its task directly).
    pub fn new(doorbell: Option<Arc<Doorbell>>) -> Self {
        Self {
            conn_key: AtomicU64::new(0),
            batches: ArrayQueue::new(SINK_BATCHES_MAX),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            doorbell,
            queued: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            inbound: None,
        }
    }

    /// A tunnel's sink (an RFC 8441 WebSocket): the client's bytes come in through it too.
    pub fn tunnel(doorbell: Option<Arc<Doorbell>>) -> Self {
        Self {
            inbound: Some(Box::new(InboundSlot {
                room: AtomicUsize::new(0),
                posted: AtomicBool::new(false),
                received: ArrayQueue::new(1),
            })),
            ..Self::new(doorbell)
        }
    }

    /// Whether this is a tunnel's sink.
    pub fn is_tunnel(&self) -> bool {
        self.inbound.is_some()
    }

    /// The doorbell the shard rings at the end of its turn.
    pub fn doorbell(&self) -> Option<&Arc<Doorbell>> {
        self.doorbell.as_ref()
    }

    // --- shard side ---

    /// Records the key the shard gave the connection.
    pub fn bind(&self, key: ConnKey) {
        self.conn_key.store(key.to_word(), Ordering::Release);
    }

    /// The connection's key, once bound.
    pub fn key(&self) -> Option<ConnKey> {
        ConnKey::from_word(self.conn_key.load(Ordering::Acquire))
    }

    /// Hands a batch of frames to the companion; gives it back if the sink is full (which
    /// one write in flight per connection rules out). With a doorbell the companion's task
    /// is woken when the shard rings it, at the end of the turn.
    pub fn push(self: &Arc<Self>, frames: Vec<Bytes>) -> Result<(), Vec<Bytes>> {
        self.batches.push(frames)?;
        self.announce();
        Ok(())
    }

    /// Posts a tunnel's receive of at most `room` bytes (at least 1), unless one is posted
    /// or this is no tunnel; the companion's task is woken like a push's (at the end of the
    /// shard's turn with a doorbell).
    pub fn post_recv(self: &Arc<Self>, room: usize) {
        let Some(inbound) = &self.inbound else {
            return;
        };
        if inbound.posted.swap(true, Ordering::AcqRel) {
            return;
        }
        assert!(
            inbound.received.is_empty(),
            "an answer is taken before the next receive"
        );
        inbound.room.store(room.max(1), Ordering::Release);
        self.announce();
    }

    /// Whether a tunnel's receive is posted and its answer not taken yet.
    pub fn receiving(&self) -> bool {
        self.inbound
            .as_ref()
            .is_some_and(|inbound| inbound.posted.load(Ordering::Acquire))
    }

    /// The answer to the posted receive, once the companion delivered it (the receive is
    /// then over); `None` before, and for a sink that is no tunnel.
    pub fn take_received(&self) -> Option<Inbound> {
        let inbound = self.inbound.as_ref()?;
        let received = inbound.received.pop()?;
        inbound.posted.store(false, Ordering::Release);
        Some(received)
    }

    /// Wakes the companion's task: directly, or through the doorbell at the end of the
    /// shard's turn.
    fn announce(self: &Arc<Self>) {
        match &self.doorbell {
            Some(doorbell) => {
                if !self.queued.swap(true, Ordering::AcqRel) {
                    doorbell.ready.push(self.clone());
                    doorbell.pending.store(true, Ordering::Release);
                }
            }
            None => self.waker.wake(),
        }
    }

    /// No more batches: the companion ends the stream once it has sent what it holds.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    // --- companion side (one task polls a sink) ---

    /// The answer is a stream: woken after short answers (see [`Doorbell`]).
    pub fn set_streaming(&self) {
        self.streaming.store(true, Ordering::Relaxed);
    }

    /// Wakes the task polling this sink (the dispatcher, on the companion thread).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The next batch; `Ready(None)` once the shard closed the connection and every batch
    /// was taken.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<Bytes>>> {
        if let Some(batch) = self.batches.pop() {
            return Poll::Ready(Some(batch));
        }
        self.waker.register(cx.waker());
        if let Some(batch) = self.batches.pop() {
            return Poll::Ready(Some(batch));
        }
        if self.closed.load(Ordering::Acquire) {
            // A batch pushed before the close is seen above (push happens-before close).
            return Poll::Ready(self.batches.pop());
        }
        Poll::Pending
    }

    /// The room of a tunnel's posted receive, once the shard posted one the companion has
    /// not answered; `Ready(None)` once the shard closed the connection (or for a sink that
    /// is no tunnel: nothing will ever be asked).
    pub fn poll_recv_room(&self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let Some(inbound) = &self.inbound else {
            return Poll::Ready(None);
        };
        for attempt in 0..2 {
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            let room = inbound.room.load(Ordering::Acquire);
            if room != 0 {
                return Poll::Ready(Some(room));
            }
            if attempt == 0 {
                self.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Answers the posted receive (companion side, after [`Self::poll_recv_room`] gave its
    /// room): `Data` holds at most that room. The caller then mails `VirtualReceived`.
    pub fn deliver(&self, received: Inbound) {
        let inbound = self.inbound.as_ref().expect("only a tunnel receives");
        let room = inbound.room.swap(0, Ordering::AcqRel);
        assert_ne!(room, 0, "delivered to a posted receive");
        if let Inbound::Data(data) = &received {
            assert!(
                !data.is_empty() && data.len() <= room,
                "{} bytes for a receive of {room}",
                data.len()
            );
        }
        assert!(
            inbound.received.push(received).is_ok(),
            "one answer per receive"
        );
    }

    /// The next batch (see [`Self::poll_batch`]).
    pub async fn next_batch(&self) -> Option<Vec<Bytes>> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    /// Resolves once the shard closed the connection.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.closed.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Whether the shard closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn batches_then_close_then_end() {
        let sink = Arc::new(VirtualSink::default());
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(sink.poll_batch(&mut cx).is_pending());
        sink.push(vec![Bytes::from_static(b"a")]).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "a push wakes the task");
        sink.push(vec![Bytes::from_static(b"b")]).unwrap();
        assert!(sink.push(vec![]).is_err(), "bounded at SINK_BATCHES_MAX");
        sink.close();
        assert!(matches!(sink.poll_batch(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(sink.poll_batch(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(sink.poll_batch(&mut cx), Poll::Ready(None)));
        assert_eq!(sink.key(), None);
        let key = ConnKey { slot: 7, serial: 9 };
        sink.bind(key);
        assert_eq!(sink.key(), Some(key));
    }

    #[test]
    fn doorbell_wakes_once_per_ring_answers_first() {
        let doorbell = Arc::new(Doorbell::default());
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (mut urgent, mut streams) = (Vec::new(), Vec::new());
        assert!(doorbell
            .poll_ready(&mut cx, &mut urgent, &mut streams)
            .is_pending());
        let stream = Arc::new(VirtualSink::new(Some(doorbell.clone())));
        stream.set_streaming();
        let answer = Arc::new(VirtualSink::new(Some(doorbell.clone())));
        stream.push(vec![Bytes::from_static(b"a")]).unwrap();
        answer.push(vec![Bytes::from_static(b"b")]).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "a push does not wake");
        doorbell.ring();
        doorbell.ring();
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "one wake per ring with news"
        );
        assert!(doorbell
            .poll_ready(&mut cx, &mut urgent, &mut streams)
            .is_ready());
        assert_eq!(urgent.len(), 1);
        assert_eq!(streams.len(), 1);
        assert!(Arc::ptr_eq(&urgent[0], &answer));
        // Taken from the queue: the next push queues it again.
        stream.batches.pop();
        stream.push(vec![Bytes::from_static(b"c")]).unwrap();
        streams.clear();
        urgent.clear();
        assert!(doorbell
            .poll_ready(&mut cx, &mut urgent, &mut streams)
            .is_ready());
        assert_eq!(streams.len(), 1);
    }

    /// One receive at a time, its answer bounded by its room; nothing is asked of a sink
    /// that is no tunnel, and a closed tunnel asks nothing more.
    #[test]
    fn a_tunnel_receives_one_posted_receive_at_a_time() {
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);

        let plain = Arc::new(VirtualSink::default());
        plain.post_recv(64);
        assert!(!plain.receiving());
        assert!(matches!(plain.poll_recv_room(&mut cx), Poll::Ready(None)));

        let sink = Arc::new(VirtualSink::tunnel(None));
        assert!(sink.is_tunnel());
        assert!(sink.poll_recv_room(&mut cx).is_pending(), "nothing posted");
        sink.post_recv(4);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "a post wakes the task");
        assert!(sink.receiving());
        sink.post_recv(99); // one in flight: a no-op
        assert!(matches!(sink.poll_recv_room(&mut cx), Poll::Ready(Some(4))));
        assert_eq!(sink.take_received(), None, "not answered yet");
        sink.deliver(Inbound::Data(b"abcd".to_vec()));
        assert!(sink.poll_recv_room(&mut cx).is_pending(), "answered");
        assert!(sink.receiving(), "until the shard takes the answer");
        assert_eq!(sink.take_received(), Some(Inbound::Data(b"abcd".to_vec())));
        assert!(!sink.receiving());
        sink.post_recv(0);
        assert!(matches!(sink.poll_recv_room(&mut cx), Poll::Ready(Some(1))));
        sink.deliver(Inbound::End);
        assert_eq!(sink.take_received(), Some(Inbound::End));
        sink.post_recv(8);
        sink.close();
        assert!(matches!(sink.poll_recv_room(&mut cx), Poll::Ready(None)));
    }
}
