//! How the main thread and the subscriber threads of `ringload fanout` coordinate: the
//! stop and running flags, the subscribed count, the first setup failure and per-thread
//! delivery counters for progress. Shared by both subscriber paths (`plain`,
//! `transport`); never on the per-event path except one relaxed store per turn.

use crate::check::checker::DeliveryCounts;
use crate::check::clock::Anchor;
use crate::check::latency::Latency;
use crate::check::tracker::SeqTracker;
use crate::plan::publish::PublishResult;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock};

/// Subscribe requests in flight (connected, waiting for the response head) per thread.
/// Bounded so a burst of thousands of SYNs does not overflow the server's accept backlog
/// (which costs a 1 s SYN retry). 64 per thread stays below the common backlog of 128
/// (Rust std listeners, many test servers) even with two threads.
pub const CONNECTS_IN_FLIGHT_MAX: usize = 64;

/// Cache-line padded counter, one per thread, so progress reads do not cause false sharing.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PaddedCounter(pub AtomicU64);

/// Coordination between the main thread and the subscriber threads (never on the
/// per-event path except one relaxed store per loop turn).
#[derive(Debug)]
pub struct Control {
    /// Set when subscribers should stop and report.
    pub stop: AtomicBool,
    /// Set once every subscriber is connected and publishing started (or holding began):
    /// from then on a closed connection is a disconnect, not a setup failure.
    pub running: AtomicBool,
    /// Subscribers that received their 200 response head.
    pub subscribed: AtomicUsize,
    /// First setup failure, if any.
    pub failure: Mutex<Option<String>>,
    /// Deliveries per thread, for progress.
    pub delivered: Vec<PaddedCounter>,
    /// With `--publish-over ws`: the common start of the publish schedule, set by the main
    /// thread once every subscriber is connected.
    pub publish_start: OnceLock<Anchor>,
    /// With `--publish-over ws`: publishes written so far, all threads (for progress).
    pub published: AtomicU64,
    /// With `--publish-over ws`: threads whose publishes are all answered or given up.
    pub publishers_done: AtomicUsize,
}

impl Control {
    /// Control block for `threads` threads.
    pub fn new(threads: usize) -> Self {
        Control {
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            subscribed: AtomicUsize::new(0),
            failure: Mutex::new(None),
            delivered: (0..threads).map(|_| PaddedCounter::default()).collect(),
            publish_start: OnceLock::new(),
            published: AtomicU64::new(0),
            publishers_done: AtomicUsize::new(0),
        }
    }

    pub(crate) fn fail(&self, message: String) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(message);
        }
    }

    /// The first setup failure reported by any thread.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|slot| slot.clone())
    }
}

/// What one thread hands back at the end.
#[derive(Debug)]
pub struct ThreadResult {
    /// Counts.
    pub counts: DeliveryCounts,
    /// (room, tracker) of each subscriber of this thread, for the loss count.
    pub trackers: Vec<(u32, SeqTracker)>,
    /// Receive wall time − payload's send stamp.
    pub latency_stamp: Latency,
    /// Receive wall time − payload's scheduled time.
    pub latency_schedule: Latency,
    /// What this thread published itself (`--publish-over ws`), else `None`.
    pub published: Option<PublishResult>,
}
