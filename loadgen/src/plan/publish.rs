//! What the fixed-rate publisher of `ringload fanout` is asked to do ([`PublishPlan`])
//! and what it hands back ([`PublishResult`]), whichever path publishes: the mio one
//! (`plain::publisher`) or the tokio one (`transport::publisher`).
//! Message `m` goes to room `m % rooms` with sequence number `m / rooms + 1` at `m / rate`
//! after the start.

use crate::check::latency::Latency;
use crate::plan::http::ErrorCounts;
use crate::plan::target::UrlTemplate;
use crate::proto::template::Template;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

/// A publish without a complete answer after this long counts as a timeout failure.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for the publisher connections to be established before the run.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most publisher connections.
pub const PUB_CONNS_MAX: usize = 4096;

/// Most requests in flight on one publisher connection (`--pub-pipeline`). 64 covers a
/// round trip of 64 ms at 1,000 msg/s per connection; beyond that the server is the limit.
pub const PUB_PIPELINE_MAX: usize = 64;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Room names.
    pub rooms: Vec<String>,
    /// Publish URL (path may use `{room}`, `{seq}`).
    pub url: UrlTemplate,
    /// Body template (`{payload}`, `{room}`, `{seq}`).
    pub body: Template,
    /// Extra header lines.
    pub headers: Vec<String>,
    /// Publisher connections.
    pub connections: usize,
    /// Requests in flight per connection, 1..=[`PUB_PIPELINE_MAX`] (1: no pipelining).
    pub pipeline: usize,
    /// Messages per second, all rooms together.
    pub rate: f64,
    /// Publishing window.
    pub duration: Duration,
    /// Extra time after the window in which late messages may still be sent.
    pub grace: Duration,
    /// Payload size in bytes.
    pub size: usize,
    /// Run id written into every payload.
    pub run_id: u32,
}

/// Why publishing could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A publisher connection could not be established.
    #[error("cannot connect publisher to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: std::net::SocketAddr,
        /// OS message.
        reason: String,
    },
}

/// Publish outcome counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublishCounts {
    /// Messages the schedule asked for.
    pub scheduled: u64,
    /// Requests written.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered with another status, by status code.
    pub failed_status: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection errors, timeouts).
    pub errors: ErrorCounts,
    /// Messages never sent because the publisher fell too far behind schedule.
    pub unsent: u64,
}

impl PublishCounts {
    /// Publishes that failed (non-2xx or no answer).
    pub fn failed(&self) -> u64 {
        self.failed_status.values().sum::<u64>() + self.errors.total()
    }
}

/// Everything the publisher learned.
#[derive(Debug)]
pub struct PublishResult {
    /// Counts.
    pub counts: PublishCounts,
    /// Highest sequence number sent, per room.
    pub last_seq: Vec<u64>,
    /// 2xx answers per room.
    pub ok_per_room: Vec<u64>,
    /// Sequence numbers that failed, per room, ascending.
    pub failed_seqs: Vec<Vec<u64>>,
    /// Actual send time − scheduled time.
    pub lateness: Latency,
    /// Time from sending a publish to its complete answer.
    pub response_time: Latency,
}

impl PublishResult {
    /// An empty result for `rooms` rooms.
    pub fn new(rooms: usize) -> Self {
        PublishResult {
            counts: PublishCounts::default(),
            last_seq: vec![0; rooms],
            ok_per_room: vec![0; rooms],
            failed_seqs: vec![Vec::new(); rooms],
            lateness: Latency::new(),
            response_time: Latency::new(),
        }
    }

    /// Adds the findings of another publisher over the same rooms (the subscriber threads
    /// that publish over WebSocket each own some rooms).
    pub fn merge(&mut self, other: &PublishResult) {
        let counts = &mut self.counts;
        counts.scheduled += other.counts.scheduled;
        counts.sent += other.counts.sent;
        counts.ok += other.counts.ok;
        for (status, count) in &other.counts.failed_status {
            *counts.failed_status.entry(*status).or_default() += count;
        }
        counts.errors.add(&other.counts.errors);
        counts.unsent += other.counts.unsent;
        for (mine, theirs) in self.last_seq.iter_mut().zip(&other.last_seq) {
            *mine = (*mine).max(*theirs);
        }
        for (mine, theirs) in self.ok_per_room.iter_mut().zip(&other.ok_per_room) {
            *mine += theirs;
        }
        for (mine, theirs) in self.failed_seqs.iter_mut().zip(&other.failed_seqs) {
            mine.extend_from_slice(theirs);
            mine.sort_unstable();
        }
        self.lateness.merge(&other.lateness);
        self.response_time.merge(&other.response_time);
    }
}

/// How `ringload fanout` publishes (`--publish-over`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishOver {
    /// HTTP POST to `--pub-url` from a publisher thread of its own.
    #[default]
    Http,
    /// `{"type":"publish",…}` on the subscribers' own WebSocket connections (`--proto ws`),
    /// each answered by an ack or an error carrying its `ref`.
    Ws,
}

/// Publishing over the subscribers' WebSocket connections: message `m` goes to room
/// `r = m % rooms` on the connection of subscriber `r % subscribers` (so a room's messages
/// share one connection and keep their order), at `m / rate` after the common start.
#[derive(Debug, Clone)]
pub struct WsPublishPlan {
    /// Body template (`{payload}`, `{room}`, `{seq}`): the publish's `data`.
    pub body: Template,
    /// Messages per second, all rooms together.
    pub rate: f64,
    /// Publishing window.
    pub duration: Duration,
    /// Extra time after the window in which answers may still arrive.
    pub grace: Duration,
    /// Payload size in bytes.
    pub size: usize,
}

/// Live counters the main thread shows on the progress line.
#[derive(Debug, Default)]
pub struct PublishProgress {
    /// Requests written so far.
    pub sent: AtomicU64,
    /// Set to abandon publishing early (e.g. on Ctrl-C of the whole run).
    pub stop: AtomicBool,
}
