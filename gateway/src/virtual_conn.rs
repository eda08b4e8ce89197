//! Virtual connections: the hand-off between a shard and its companion thread for one
//! request that arrived over TLS, HTTP/2 or HTTP/3 (docs/TRANSPORTS.md).
//!
//! The companion turns the request into HTTP/1.1 bytes and mails them to its shard
//! ([`crate::mailbox::Mail::VirtualOpen`]) with a [`VirtualSink`]. The shard serves it as a
//! connection slot like any other (routing, refusals, publish, auth, the fan-out), except
//! that a write pushes its frames into the sink instead of a socket and is "in flight" until
//! the companion has handed every frame to hyper/h3 and mails
//! [`crate::mailbox::Mail::VirtualWriteDone`]. A stream whose peer stops reading keeps its
//! write in flight, so the fan-out laps and cuts it exactly as an HTTP/1.1 socket.

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Batches a sink holds. The shard has one write in flight per connection, so one batch
/// waits at most; the second place is slack, never used in steady state.
pub const SINK_BATCHES_MAX: usize = 2;

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

/// What a shard writes to one virtual connection, and how it learns the peer is gone.
pub struct VirtualSink {
    /// `slot << 32 | serial` on the shard once it opened the connection; 0 before.
    slot_serial: AtomicU64,
    batches: ArrayQueue<Vec<Bytes>>,
    /// Set by the shard: no more batches will come.
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl std::fmt::Debug for VirtualSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualSink")
            .field("slot", &self.slot())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for VirtualSink {
    fn default() -> Self {
        Self {
            slot_serial: AtomicU64::new(0),
            batches: ArrayQueue::new(SINK_BATCHES_MAX),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

impl VirtualSink {
    // --- shard side ---

    /// Records the slot and serial the shard gave the connection.
    pub fn bind(&self, slot: u32, serial: u32) {
        self.slot_serial
            .store(u64::from(slot) << 32 | u64::from(serial), Ordering::Release);
    }

    /// The slot and serial, once bound.
    pub fn slot(&self) -> Option<(u32, u32)> {
        let word = self.slot_serial.load(Ordering::Acquire);
        (word != 0).then_some(((word >> 32) as u32, word as u32))
    }

    /// Hands a batch of frames to the companion; gives it back if the sink is full (which
    /// one write in flight per connection rules out).
    pub fn push(&self, frames: Vec<Bytes>) -> Result<(), Vec<Bytes>> {
        self.batches.push(frames)?;
        self.waker.wake();
        Ok(())
    }

    /// No more batches: the companion ends the stream once it has sent what it holds.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    // --- companion side (one task polls a sink) ---

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
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn batches_then_close_then_end() {
        let sink = VirtualSink::default();
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
        assert_eq!(sink.slot(), None);
        sink.bind(7, 9);
        assert_eq!(sink.slot(), Some((7, 9)));
    }
}
