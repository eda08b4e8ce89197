//! One HTTP/2 or HTTP/3 connection's stream pace (CVE-2023-44487, "rapid reset"): the
//! burst and sustained rate of new streams a connection may open, the refusal past it, and
//! the action a stream gives back once its answer ended. The arithmetic is
//! `ringcast_core::pace`'s GCRA; h2.rs and h3.rs hold one per connection.
//!
//! Owns: a connection's buckets (its streams' and its refusals'). Must not touch: what a
//! refused stream is answered (`Companion::refuse_stream_rate`), the protocol's own limits.

use ringcast_core::pace::{Bucket, Pace};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stream pace of a connection that may hold `streams_max` streams at once (the
/// protocol's limit, `--max-streams-per-conn` + `bridge::SHORT_STREAMS_SLACK`): a burst of twice
/// that, so a client that fills its connection and then replaces every stream once is never
/// refused, and `per_sec` (`--new-streams-per-conn-per-sec`) sustained. Each paced stream
/// costs a subscribe (admission, a history replay, an `--auth-url` call, a Redis read in
/// cluster mode) or shard work nobody waits for.
pub fn stream_pace(streams_max: u32, per_sec: u32) -> Pace {
    Pace::per_sec(streams_max.saturating_mul(2), per_sec)
}

/// One HTTP/2 or HTTP/3 connection's stream pace, against "rapid reset" (CVE-2023-44487):
/// the protocol bounds the streams open at once, but a stream the client resets frees its
/// place at once while the work it started (a virtual connection on the shard) goes on, so
/// a reset loop on one connection would make work without bound. Every new stream takes
/// one action of the pace ([`stream_pace`]); past it the stream is refused with 429 before
/// any work. A request whose answer ended (the work it started is done) gives its action
/// back ([`PaceToken::give_back`]): such requests hold their stream until then, so the
/// protocol's concurrency bounds them (a load generator's request loop is never refused).
/// What counts is streams that hold a subscription or WebSocket (a session, which HTTP/1.1
/// pays a new connection for, bounded by `--max-new-connections-per-ip-per-sec`) and
/// streams abandoned (reset, stopped) before their answer ended.
///
/// A refused stream still costs a little (its head decoded, a task, the 429): a client that
/// goes on past its pace as fast as it is refused (its refusals, paced alike, run out: a
/// burst's worth faster than a tick each) is told to stop ([`StreamRefusal::close`]).
#[derive(Clone)]
pub struct StreamPace {
    pace: Pace,
    /// Shared by the connection's stream tasks; only this thread touches it, the lock is
    /// never contended.
    buckets: Arc<Mutex<Buckets>>,
    anchor: Instant,
    /// Woken once the refusals ran out (the HTTP/2 connection's task sends GOAWAY).
    excess: Arc<tokio::sync::Notify>,
}

/// A connection's buckets: its streams', and its refusals'.
struct Buckets {
    streams: Bucket,
    refusals: Bucket,
}

/// A new stream refused by its connection's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRefusal {
    /// Until one more stream is earned (at most a tick of the pace).
    pub wait: Duration,
    /// The connection's refusals ran out too: it gets no more streams (HTTP/2 GOAWAY, its
    /// open streams finish; HTTP/3 closed with H3_EXCESSIVE_LOAD).
    pub close: bool,
}

impl StreamPace {
    /// A new connection's pace, full at `now`: `anchor` is the process clock's.
    pub fn new(pace: Pace, anchor: Instant, now: Instant) -> Self {
        let full = Bucket::full_at(now.saturating_duration_since(anchor), pace);
        Self {
            pace,
            buckets: Arc::new(Mutex::new(Buckets {
                streams: full,
                refusals: full,
            })),
            anchor,
            excess: Arc::default(),
        }
    }

    /// Takes one action for a new stream at `now`, or refuses it (and takes one refusal).
    pub fn try_open(&self, now: Instant) -> Result<PaceToken, StreamRefusal> {
        let elapsed = now.saturating_duration_since(self.anchor);
        let mut buckets = self.buckets.lock().expect("stream pace");
        match buckets.streams.handle_take(elapsed, self.pace) {
            Ok(()) => Ok(PaceToken(self.clone())),
            Err(wait) => {
                let close = buckets.refusals.handle_take(elapsed, self.pace).is_err();
                if close {
                    self.excess.notify_one();
                }
                Err(StreamRefusal { wait, close })
            }
        }
    }

    /// Resolves once the connection's refusals ran out ([`StreamRefusal::close`]).
    pub async fn excess(&self) {
        self.excess.notified().await
    }
}

/// One stream's action of its connection's pace: kept when dropped (a session, or a stream
/// abandoned), given back by [`Self::give_back`] once the answer ended.
#[must_use = "dropped, the stream's action is kept"]
pub struct PaceToken(StreamPace);

impl PaceToken {
    /// The stream's answer ended: its action is given back.
    pub fn give_back(self) {
        let pace = self.0;
        let elapsed = Instant::now().saturating_duration_since(pace.anchor);
        pace.buckets
            .lock()
            .expect("stream pace")
            .streams
            .handle_give_back(elapsed, pace.pace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's pace: a full burst of twice its streams at once, then one a tick;
    /// a stream given back (answered) is one more, a kept one (a session, or abandoned)
    /// is not.
    #[test]
    fn a_connection_s_stream_pace_counts_kept_streams_only() {
        let streams_max = 20;
        let pace = stream_pace(streams_max, 10);
        assert_eq!(pace.burst(), 40);
        assert_eq!(pace.tick(), Duration::from_millis(100));
        let anchor = Instant::now();
        let now = anchor + Duration::from_secs(3);
        let connection = StreamPace::new(pace, anchor, now);
        // Requests answered one after another never run out.
        for _ in 0..1000 {
            connection
                .try_open(now)
                .expect("an answered request")
                .give_back();
        }
        // Sessions and abandoned streams do: the burst, then refused with the wait to
        // the next tick.
        for _ in 0..40 {
            drop(connection.try_open(now).expect("within the burst"));
        }
        let refused = |at| connection.try_open(at).err().expect("past the burst");
        assert_eq!(
            refused(now),
            StreamRefusal {
                wait: pace.tick(),
                close: false
            }
        );
        // Another connection has its own.
        assert!(StreamPace::new(pace, anchor, now).try_open(now).is_ok());
        // A tick later, one more.
        let later = now + pace.tick();
        drop(connection.try_open(later).expect("earned"));
        // Refusals are paced alike: a burst's worth at once (the one at `now` was earned
        // back by the tick), then the connection is to be closed, and its task is woken.
        for _ in 0..40 {
            assert!(!refused(later).close);
        }
        assert!(refused(later).close);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), connection.excess())
                .await
                .expect("woken");
        });
        // A client refused once a tick (it tries again when told) is never closed.
        let quiet = later + Duration::from_secs(3600);
        let other = StreamPace::new(pace, anchor, quiet);
        for _ in 0..40 {
            drop(other.try_open(quiet).expect("within the burst"));
        }
        for tick in 1..1000 {
            let at = quiet + pace.tick() * tick;
            drop(other.try_open(at).expect("earned"));
            let refusal = other.try_open(at).err().expect("one a tick");
            assert!(!refusal.close, "tick {tick}");
        }
    }
}
